//! A node out of file descriptors (this process's soft limit lowered with `prlimit`, so this
//! file holds one test): its servers back off instead of spinning or dying, health says which
//! do not serve, and once descriptors are free again every server answers and health is ok.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use agw_controlplane::{
    metrics::health,
    node::{Node, NodeConfig},
};
use agw_sdk::{certificates::CertificateRequests, connection::Connection};

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn set_soft_limit(n: u64) {
    let pid = std::process::id().to_string();
    let status = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={n}:")])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn out_of_descriptors_the_servers_back_off_report_it_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::on_loopback(
        agw_proto::identity::Domain::new("a.example").unwrap(),
        "a1",
        dir.path().join("a"),
    ))
    .unwrap();
    let aca = node.addresses().aca;
    let stats = |name: &str| {
        node.endpoint_stats()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    };
    assert_eq!(
        health(&node.endpoint_stats(), &node.parts_running()).status,
        200
    );

    let original = {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        line.split_whitespace()
            .nth(3)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    set_soft_limit(open_descriptors() as u64 + 16);
    // Connect until this process (clients and servers alike) is out of descriptors; the
    // authority's accepts then fail.
    let mut hogs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats("aca")
        .accept_errors
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        if let Ok(s) = TcpStream::connect(aca) {
            hogs.push(s);
        }
        assert!(Instant::now() < deadline, "accepts never failed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!stats("aca").serving());
    let answer = health(&node.endpoint_stats(), &node.parts_running());
    assert_eq!(answer.status, 503);
    assert!(
        String::from_utf8_lossy(&answer.body).contains("aca"),
        "{answer:?}"
    );

    // Descriptors come back: the authority answers again and health is ok.
    drop(hogs);
    set_soft_limit(original);
    let start = Instant::now();
    loop {
        if let Ok(mut conn) = Connection::connect(aca, Duration::from_secs(1))
            && conn
                .request(CertificateRequests::default().status(bytes::Bytes::from_static(&[1])))
                .is_ok()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the authority never answered again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stats("aca").serving());
    assert_eq!(
        health(&node.endpoint_stats(), &node.parts_running()).status,
        200
    );
    node.stop();
}
