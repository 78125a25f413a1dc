//! The standalone `agw-aca` server, driven by the SDK's connection over TCP: answers, refuses
//! bad frames on one connection without harming others, and loses nothing it acknowledged when
//! killed with SIGKILL and restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use agw_proto::{Message, pb, pb::ErrorCode};
use agw_sdk::{
    certificates::{AgentKey, CertificateRequests, HeldCertificate},
    connection::Connection,
};
use common::{agent, materials};

/// The server process; killed (SIGKILL) when dropped, also when a test fails.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agw-aca"))
        .args([
            "--domain",
            common::DOMAIN,
            "--listen",
            "127.0.0.1:0",
            "--crl-listen",
            "127.0.0.1:0",
        ])
        .args(["--allow", "Acme Travel=booking,payments", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.rsplit(' ').next().unwrap().to_owned();
    assert!(first.contains("listening on"), "{first}");
    std::thread::spawn(move || lines.for_each(drop));
    Server { child, addr }
}

/// The token the authority made for "Acme Travel", from the file it keeps for its operator.
fn acme_token(dir: &Path) -> String {
    let tokens = std::fs::read_to_string(dir.join("enrollment-tokens")).unwrap();
    tokens
        .lines()
        .find_map(|l| l.strip_suffix(" Acme Travel"))
        .unwrap()
        .to_owned()
}

fn connect(server: &Server) -> Connection {
    Connection::connect(&server.addr, Duration::from_secs(10)).unwrap()
}

impl Server {
    /// Stops it with SIGTERM and waits for it to exit.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let _ = self.child.wait();
    }
}

#[test]
fn sigkill_and_sigterm_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let token = acme_token(dir.path());
    let mut acknowledged = Vec::new();
    let mut keys = Vec::new();
    {
        let mut conn = connect(&server);
        let mut requests = CertificateRequests::default();
        // Without the organisation's token: refused.
        let squat = requests
            .application(&AgentKey::generate().unwrap(), &agent("a0"), materials())
            .unwrap();
        let Message::CertificateReply(refused) = conn.request(squat).unwrap() else {
            panic!()
        };
        assert_eq!(
            refused.error.unwrap().error_code(),
            ErrorCode::EnrollmentUnauthenticated
        );
        for i in 0..20 {
            let key = AgentKey::generate().unwrap();
            let mut app = requests
                .application(&key, &agent(&format!("a{i}")), materials())
                .unwrap();
            app.enrollment_token.clone_from(&token);
            let Message::CertificateReply(reply) = conn.request(app).unwrap() else {
                panic!()
            };
            acknowledged.push(HeldCertificate::from_reply(reply).unwrap());
            keys.push(AgentKey::from_pem(&key.to_pem()).unwrap());
            if i == 9 {
                let held = &acknowledged[0];
                let rev = requests.revocation(
                    held,
                    &key,
                    pb::RevocationReason::Superseded,
                    std::time::SystemTime::now(),
                );
                // Signed by another key than a0's: refused, and nothing recorded.
                let Message::RevocationReply(r) = conn.request(rev.unwrap()).unwrap() else {
                    panic!()
                };
                assert_eq!(r.error.unwrap().error_code(), ErrorCode::BadProof);
            }
        }
    }
    // Kill it hard, right after the last acknowledgement.
    drop(server);

    let server = start(dir.path());
    let mut conn = connect(&server);
    let mut requests = CertificateRequests::default();
    for held in &acknowledged {
        let Message::StatusReply(s) = conn.request(requests.status(held.serial.clone())).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            s.state,
            pb::CertificateState::Valid as i32,
            "lost {:?}",
            held.serial
        );
    }
    // And the identities are still taken; the token is the same after the restart.
    let mut app = requests
        .application(&AgentKey::generate().unwrap(), &agent("a3"), materials())
        .unwrap();
    app.enrollment_token = acme_token(dir.path());
    assert_eq!(app.enrollment_token, token);
    let Message::CertificateReply(r) = conn.request(app).unwrap() else {
        panic!()
    };
    assert_eq!(r.error.unwrap().error_code(), ErrorCode::IdentityTaken);

    // a0 revokes its certificate; stopped with SIGTERM and started again, the authority
    // still lists it in its CRL, and a1 applying again with its key gets its certificate back.
    let held = &acknowledged[0];
    let rev = requests
        .revocation(
            held,
            &keys[0],
            pb::RevocationReason::Superseded,
            std::time::SystemTime::now(),
        )
        .unwrap();
    let Message::RevocationReply(r) = conn.request(rev).unwrap() else {
        panic!()
    };
    assert_eq!(r.error, None);
    drop(conn);
    server.terminate();
    let server = start(dir.path());
    let mut conn = connect(&server);
    let Message::CrlReply(crl) = conn.request(pb::CrlRequest { request_id: 5 }).unwrap() else {
        panic!()
    };
    assert_eq!(
        agw_aca::revoked_serials(&crl.crl).unwrap(),
        vec![held.serial.to_vec()]
    );
    let mut app = requests
        .application(&keys[1], &agent("a1"), materials())
        .unwrap();
    app.enrollment_token.clone_from(&token);
    let Message::CertificateReply(r) = conn.request(app).unwrap() else {
        panic!()
    };
    assert_eq!(
        HeldCertificate::from_reply(r).unwrap().serial,
        acknowledged[1].serial
    );
    drop(server);
}

#[test]
fn bad_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut good = connect(&server);
    let mut requests = CertificateRequests::default();

    // A peer sending a frame of an unknown kind gets a NOTIFICATION, then EOF.
    let mut raw = TcpStream::connect(&server.addr).unwrap();
    raw.write_all(&[1, 0x7e, 0, 0, 0, 0, 0, 0]).unwrap();
    let mut conn_bytes = Vec::new();
    std::io::Read::read_to_end(&mut raw, &mut conn_bytes).unwrap();
    let mut decoder = agw_proto::FrameDecoder::new(agw_proto::FrameLimits::default());
    decoder.extend_from_slice(&conn_bytes);
    let Message::Notification(n) = decoder.decode().unwrap().unwrap().message().unwrap() else {
        panic!()
    };
    assert_eq!(n.code, ErrorCode::UnknownKind as i32);

    // A kind the authority does not serve.
    let Message::Notification(n) = connect(&server).request(pb::Heartbeat::default()).unwrap()
    else {
        panic!()
    };
    assert_eq!(n.code, ErrorCode::UnexpectedMessage as i32);

    // The well-behaved connection carries on.
    let Message::CrlReply(crl) = good.request(requests.crl()).unwrap() else {
        panic!()
    };
    assert!(crl.error.is_none() && !crl.crl.is_empty());
}

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[test]
fn out_of_file_descriptors_it_backs_off_and_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    // 48 descriptors in all for the server process.
    let command = format!(
        "ulimit -n 48 && exec {} --domain {} --listen 127.0.0.1:0 --crl-listen 127.0.0.1:0 \
         --allow 'Acme Travel=booking' --data-dir {}",
        env!("CARGO_BIN_EXE_agw-aca"),
        common::DOMAIN,
        dir.path().display()
    );
    let mut child = Command::new("bash")
        .args(["-c", &command])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logged = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.rsplit(' ').next().unwrap().to_owned();
    std::thread::spawn(move || lines.for_each(drop));
    let server = Server { child, addr };

    // 60 idle connections (under the per-source cap of 64): the server runs out of
    // descriptors first; the kernel queues the rest.
    let mut hogs = Vec::new();
    for _ in 0..60 {
        hogs.push(std::net::TcpStream::connect(&server.addr).unwrap());
    }
    std::thread::sleep(Duration::from_millis(500));
    // It is alive, and not spinning on the listener that stays readable.
    let pid = server.child.id();
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_seconds(pid) - before;
    assert!(used < 0.5, "{used} CPU seconds in one second: spinning");
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "the server died"
    );

    // The hogs leave: a client is served again.
    drop(hogs);
    let start = std::time::Instant::now();
    let served = loop {
        if let Ok(mut conn) = Connection::connect(&server.addr, Duration::from_secs(1))
            && let Ok(Message::StatusReply(_)) =
                conn.request(CertificateRequests::default().status(bytes::Bytes::from_static(&[1])))
        {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never served again"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        served < Duration::from_secs(5),
        "served again after {served:?}"
    );
    // The operator was told, once a second at most.
    drop(server);
    let logged = logged.join().unwrap();
    assert!(
        logged.contains("cannot accept connections; backing off"),
        "{logged}"
    );
}
