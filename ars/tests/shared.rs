//! Two gateways' registries of one domain on a real 3-member etcd cluster (issue 19): an
//! agent registered at one is discoverable at the other, and advertised by it; one
//! registration per agent across the domain; updates and deregistrations reach both; without
//! quorum, registrations are refused clearly while discovery goes on.

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agw_ars::{Change, Registry, RegistryConfig, RegistryHandle, owner, store::shared};
use agw_etcd::{
    EtcdConfig, Shared,
    cluster::{Cluster, wait_for},
};
use agw_proto::{Message, identity::Domain, pb, pb::ErrorCode};
use common::*;

fn gateway(
    dir: &std::path::Path,
    ca: &agw_aca::CertificateAuthority,
    cluster: &Cluster,
) -> (RegistryHandle, crossbeam_channel::Receiver<Vec<Change>>) {
    let mut etcd = EtcdConfig::new(cluster.endpoints(), DOMAIN);
    etcd.timeout = Duration::from_millis(1500);
    let mirror = Shared::connect(etcd).expect("etcd");
    let mut config = RegistryConfig::new(Domain::new(DOMAIN).unwrap(), dir);
    config.shared = Some(mirror.clone());
    let registry = Registry::open(config, checker(ca, t0())).unwrap();
    let (changes_tx, changes) = crossbeam_channel::unbounded();
    let handle = owner::spawn(registry, move |c| {
        let _ = changes_tx.send(c);
    })
    .unwrap();
    shared::follow(&mirror, &handle);
    (handle, changes)
}

fn found(handle: &RegistryHandle, requester: &str, capability: &str) -> Vec<String> {
    match handle.serve(&discover(&[capability]).into(), requester, t0()) {
        Some(Message::DiscoverReply(r)) => r.agents.into_iter().map(|a| a.agent).collect(),
        other => panic!("{other:?}"),
    }
}

fn register(
    handle: &RegistryHandle,
    request: pb::RegisterRequest,
    requester: &str,
) -> pb::RegisterReply {
    match handle.serve(&request.into(), requester, t0()) {
        Some(Message::RegisterReply(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_registries_of_one_domain_share_their_agents() {
    let mut cluster = Cluster::start(3).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let (a, _) = gateway(&dir.path().join("a"), &ca, &cluster);
    let (b, b_changes) = gateway(&dir.path().join("b"), &ca, &cluster);
    let (alice, alice_cert) = certified(&ca, "alice");
    let (bob, bob_cert) = certified(&ca, "bob");

    // Registered at a: discoverable at b within a second, and b tells its peers.
    let reply = register(
        &a,
        register_request(&alice_cert, profile(&alice, &["hotel booking"])),
        alice.as_str(),
    );
    assert_eq!(reply.error, None);
    wait_for("alice discoverable at b", Duration::from_secs(1), || {
        found(&b, bob.as_str(), "hotel booking") == vec![alice.to_string()]
    });
    let batch = b_changes.recv_timeout(Duration::from_secs(1)).unwrap();
    assert!(
        matches!(batch.as_slice(), [Change::Advertise(s)] if s.agent == alice.as_str()),
        "{batch:?}"
    );

    // One registration per agent in the domain: alice again at b is a duplicate.
    let again = register(
        &b,
        register_request(&alice_cert, profile(&alice, &["flights"])),
        alice.as_str(),
    );
    assert_eq!(again.error.unwrap().code(), ErrorCode::DuplicateName);

    // Her owner updates at b (her profile is the domain's): a hears the change.
    let resource_id = reply.profile.unwrap().resource_id;
    let mut changed = profile(&alice, &["flights"]);
    changed.resource_id = resource_id.clone();
    let update = pb::UpdateRequest {
        request_id: 2,
        profile: Some(changed),
    };
    match b.serve(&update.into(), alice.as_str(), t0()) {
        Some(Message::UpdateReply(r)) => assert_eq!(r.error, None),
        other => panic!("{other:?}"),
    }
    wait_for(
        "a finds alice by her new capability",
        Duration::from_secs(1),
        || found(&a, bob.as_str(), "flights") == vec![alice.to_string()],
    );

    // Without quorum: a registration is refused STORE_UNAVAILABLE, discovery still answers.
    cluster.kill(0);
    cluster.kill(1);
    let started = Instant::now();
    let refused = register(
        &b,
        register_request(&bob_cert, profile(&bob, &["visas"])),
        bob.as_str(),
    );
    assert_eq!(refused.error.unwrap().code(), ErrorCode::StoreUnavailable);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(found(&a, bob.as_str(), "flights"), vec![alice.to_string()]);

    // Quorum back: bob registers at b, and a finds him.
    cluster.start_member(0).unwrap();
    cluster.start_member(1).unwrap();
    cluster.wait_writable(Duration::from_secs(20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = register(
            &b,
            register_request(&bob_cert, profile(&bob, &["visas"])),
            bob.as_str(),
        );
        match reply.error {
            None => break,
            // The registration refused without quorum was proposed to etcd before the client
            // gave up, and applied when quorum returned: bob is registered.
            Some(e) if e.code() == ErrorCode::DuplicateName => break,
            // STORE_CONFLICT: that registration was applied, and this gateway's mirror had
            // not heard of it yet when it tried again.
            Some(e) => {
                assert!(
                    matches!(
                        e.code(),
                        ErrorCode::StoreUnavailable | ErrorCode::StoreConflict
                    ),
                    "{e:?}"
                );
                assert!(Instant::now() < deadline, "{e:?}");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while found(&a, alice.as_str(), "visas") != vec![bob.to_string()] {
        assert!(Instant::now() < deadline, "a never heard of bob");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Deregistered at a: gone from b. (A's client may still be reconnecting to the members
    // that came back: a refusal then is STORE_UNAVAILABLE, and a retry succeeds.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone = pb::DeregisterAgentRequest {
            request_id: 3,
            resource_id: resource_id.clone(),
        };
        match a.serve(&gone.into(), alice.as_str(), t0()) {
            Some(Message::DeregisterAgentReply(r)) => match r.error {
                None => break,
                Some(e) => {
                    assert_eq!(e.code(), ErrorCode::StoreUnavailable, "{e:?}");
                    assert!(Instant::now() < deadline, "{e:?}");
                }
            },
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("alice gone at b", Duration::from_secs(1), || {
        found(&b, bob.as_str(), "flights").is_empty()
    });
}
