//! A real etcd cluster on loopback, for tests and local trials: `etcd` (Debian's
//! `etcd-server`, installed by the test command) started as child processes on free ports,
//! each member in its own directory under a temporary one, stopped and removed on drop.
//! Members can be killed and started again on their data, which is how the tests take
//! quorum away and give it back.

use std::{
    io,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One member: its ports and, while it runs, its process.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
}

/// A cluster of `etcd` processes on 127.0.0.1.
#[derive(Debug)]
pub struct Cluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    initial: String,
}

/// `n` distinct free ports: each bound (so the kernel cannot hand one out twice) until all
/// are chosen, then released for the members to bind.
fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Tries at starting a cluster: a port chosen free may be taken by another test before its
/// member binds it.
const START_TRIES: usize = 3;

impl Cluster {
    /// Starts `size` members and waits until the cluster takes writes (at most 20 s a try).
    pub fn start(size: usize) -> io::Result<Cluster> {
        let mut last = None;
        for _ in 0..START_TRIES {
            match Cluster::start_once(size) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no try")))
    }

    fn start_once(size: usize) -> io::Result<Cluster> {
        let ports = free_ports(2 * size)?;
        let mut members = Vec::new();
        for i in 0..size {
            members.push(Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                process: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            members,
            dir: tempfile::tempdir()?,
            initial,
        };
        for i in 0..size {
            cluster.start_member(i)?;
        }
        cluster.wait_writable(Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// Starts member `i` (again, on its data, after [`Cluster::kill`]).
    pub fn start_member(&mut self, i: usize) -> io::Result<()> {
        let data_dir = self.data_dir(i);
        let m = &self.members[i];
        if m.process.is_some() {
            return Ok(());
        }
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))?;
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "agw-test"])
            // Loopback: elections in a quarter of a second, not the default second.
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("etcd (Debian's etcd-server): {e}")))?;
        self.members[i].process = Some(child);
        Ok(())
    }

    /// Kills member `i` (SIGKILL) and waits for it to end.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a write through `etcdctl` succeeds; fails at once when a member that was
    /// started has exited (a port taken, say).
    pub fn wait_writable(&mut self, within: Duration) -> io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            for m in &mut self.members {
                if let Some(child) = &mut m.process
                    && let Some(status) = child.try_wait()?
                {
                    m.process = None;
                    return Err(io::Error::other(format!(
                        "etcd member {} exited ({status}): see {}",
                        m.name,
                        self.dir.path().join(format!("{}.log", m.name)).display()
                    )));
                }
            }
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.endpoints().join(",")))
                .args(["--command-timeout=1s", "put", "/agw-cluster-check", "ok"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("m0.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(10).collect::<Vec<_>>().join("\n");
                return Err(io::Error::other(format!(
                    "the etcd cluster took no write within {within:?}; m0's log ends:\n{tail}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The value of `key` as `etcdctl get` prints it, if the key exists.
    pub fn etcdctl_get(&self, key: &str) -> io::Result<Option<String>> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(["get", "--print-value-only", key])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let value = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
        Ok((!value.is_empty()).then_some(value))
    }

    /// `etcdctl get --prefix <prefix>` as text (keys and values), to see what gateways wrote.
    pub fn etcdctl_keys(&self, prefix: &str) -> io::Result<Vec<String>> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(["get", "--prefix", "--keys-only", prefix])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// Polls `done` every 5 ms until it holds, for tests of what gateways hear of each other
/// through the cluster; panics naming `what` if it does not hold `within`.
pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
