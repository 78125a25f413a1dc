//! Two gateways' mirrors of one domain on a real 3-member etcd cluster (loopback): what one
//! writes the other hears; guarded writes never both win; a member lost stops nothing; quorum
//! lost refuses writes clearly while reads go on, and everything catches up when it returns.

use std::time::{Duration, Instant};

use agw_etcd::{
    CommitError, EtcdConfig, Guard, Op, Shared,
    cluster::{Cluster, wait_for},
};

fn config(cluster: &Cluster) -> EtcdConfig {
    let mut config = EtcdConfig::new(cluster.endpoints(), "travel.example");
    config.timeout = Duration::from_millis(1500);
    config
}

#[test]
fn two_mirrors_of_one_domain() {
    let cluster = Cluster::start(3).expect("etcd cluster");
    let a = Shared::connect(config(&cluster)).expect("gateway a");
    let b = Shared::connect(config(&cluster)).expect("gateway b");
    let (heard_tx, heard) = crossbeam_channel::unbounded();
    b.subscribe("profiles/", move |changes| {
        for c in changes {
            let _ = heard_tx.send(c.clone());
        }
    });

    // A write at one gateway reaches the other's mirror and its subscriber.
    let started = Instant::now();
    a.commit(
        vec![a.seen("profiles/p1")],
        vec![Op::Put("profiles/p1".into(), b"one".to_vec())],
    )
    .expect("write");
    let change = heard
        .recv_timeout(Duration::from_secs(1))
        .expect("b hears a's write");
    assert_eq!(change.key, "profiles/p1");
    assert_eq!(change.value.as_deref(), Some(&b"one"[..]));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(b.get("profiles/p1").map(|e| e.value), Some(b"one".to_vec()));
    // The writer's own mirror holds it on return, and etcdctl sees the key.
    assert!(a.get("profiles/p1").is_some());
    assert_eq!(
        cluster
            .etcdctl_keys("/agw/travel.example/")
            .expect("etcdctl"),
        vec!["/agw/travel.example/profiles/p1"]
    );

    // Both decide on the same absent key: exactly one commits.
    let guard_a = a.seen("identities/alice");
    let guard_b = b.seen("identities/alice");
    let first = a.commit(
        vec![guard_a],
        vec![Op::Put("identities/alice".into(), b"serial-a".to_vec())],
    );
    let second = b.commit(
        vec![guard_b],
        vec![Op::Put("identities/alice".into(), b"serial-b".to_vec())],
    );
    assert!(first.is_ok());
    assert_eq!(second, Err(CommitError::Conflict));
    wait_for("b sees a's identity", Duration::from_secs(1), || {
        b.get("identities/alice").map(|e| e.value) == Some(b"serial-a".to_vec())
    });
    // A guard on the value: replaced only if it still holds what the writer saw.
    assert_eq!(
        b.commit(
            vec![Guard::Value(
                "identities/alice".into(),
                b"serial-b".to_vec()
            )],
            vec![Op::Delete("identities/alice".into())],
        ),
        Err(CommitError::Conflict)
    );
    b.commit(
        vec![Guard::Value(
            "identities/alice".into(),
            b"serial-a".to_vec(),
        )],
        vec![Op::Delete("identities/alice".into())],
    )
    .expect("delete");
    wait_for("a sees the delete", Duration::from_secs(1), || {
        a.get("identities/alice").is_none()
    });
    assert!(b.get("identities/alice").is_none());
}

#[test]
fn a_member_lost_then_quorum_lost_and_back() {
    let mut cluster = Cluster::start(3).expect("etcd cluster");
    let a = Shared::connect(config(&cluster)).expect("gateway a");
    let b = Shared::connect(config(&cluster)).expect("gateway b");
    a.commit(vec![], vec![Op::Put("crl_number".into(), b"1".to_vec())])
        .expect("write");

    // One member of three killed: writes go on, and reach the other gateway.
    cluster.kill(0);
    let mut n = 2;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a.commit(
            vec![],
            vec![Op::Put("crl_number".into(), n.to_string().into_bytes())],
        ) {
            Ok(_) => break,
            // Requests in flight to the killed member fail once; the client moves on.
            Err(e) => assert!(Instant::now() < deadline, "no write without m0: {e}"),
        }
        n += 1;
    }
    let expect = n.to_string().into_bytes();
    wait_for(
        "b hears the write made without m0",
        Duration::from_secs(5),
        || b.get("crl_number").map(|e| e.value) == Some(expect.clone()),
    );

    // Two of three killed: no quorum. Writes fail within the timeout, saying so; reads go on.
    cluster.kill(1);
    let started = Instant::now();
    let refused = a.commit(vec![], vec![Op::Put("crl_number".into(), b"x".to_vec())]);
    assert!(
        matches!(refused, Err(CommitError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(b.get("crl_number").map(|e| e.value), Some(expect));

    // Quorum back: writes succeed again and both mirrors catch up.
    cluster.start_member(0).expect("m0 again");
    cluster.start_member(1).expect("m1 again");
    cluster
        .wait_writable(Duration::from_secs(20))
        .expect("quorum back");
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = a.commit(vec![], vec![Op::Put("crl_number".into(), b"99".to_vec())]) {
        assert!(
            Instant::now() < deadline,
            "no write after quorum returned: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("b catches up", Duration::from_secs(10), || {
        b.get("crl_number").map(|e| e.value) == Some(b"99".to_vec())
    });
}
