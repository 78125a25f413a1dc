//! Registration, information management and discovery against a real certificate authority,
//! on simulated time: every refusal typed and changing nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agw_ars::{Change, Registry, RegistryConfig};
use agw_proto::{
    Message,
    identity::{Domain, ResourceId},
    pb,
    pb::ErrorCode,
};
use common::*;

fn code<T: std::fmt::Debug>(r: Result<T, agw_ars::RegistryError>) -> ErrorCode {
    r.expect_err("a refusal").code
}

#[test]
fn registration_checks_the_certificate_and_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let mut reg = registry(&dir.path().join("ars"), &ca);
    let (alice, alice_cert) = certified(&ca, "alice");
    let (bob, bob_cert) = certified(&ca, "bob");

    let stored = reg
        .register(
            &register_request(&alice_cert, profile(&alice, &["hotel booking"])),
            Some(alice.as_str()),
            t0(),
        )
        .unwrap();
    let rid = ResourceId::parse(&stored.resource_id).unwrap();
    assert_eq!(rid.domain().as_str(), DOMAIN);
    assert_eq!(
        (stored.version, stored.status),
        (1, pb::Status::Running as i32)
    );
    assert_eq!(stored.domain, DOMAIN);

    let before = reg.view().len();
    let bob_profile = profile(&bob, &["visa processing"]);
    let mut cases: Vec<(pb::RegisterRequest, Option<&str>, ErrorCode)> = vec![
        // Alice's certificate cannot register Bob.
        (
            register_request(&alice_cert, bob_profile.clone()),
            None,
            ErrorCode::IdentityMismatch,
        ),
        // Bob's request arriving on Alice's connection.
        (
            register_request(&bob_cert, bob_profile.clone()),
            Some(alice.as_str()),
            ErrorCode::IdentityMismatch,
        ),
        (
            pb::RegisterRequest {
                certificate_chain: vec![],
                ..register_request(&bob_cert, bob_profile.clone())
            },
            None,
            ErrorCode::Malformed,
        ),
        (
            register_request(&bob_cert, profile(&bob, &[])),
            None,
            ErrorCode::RegistrationIncomplete,
        ),
        (
            register_request(
                &bob_cert,
                pb::AgentProfile {
                    address: String::new(),
                    ..bob_profile.clone()
                },
            ),
            None,
            ErrorCode::RegistrationIncomplete,
        ),
        (
            register_request(&bob_cert, profile(&bob, &["c"; 33])),
            None,
            ErrorCode::TooManyCapabilities,
        ),
        (
            register_request(
                &bob_cert,
                pb::AgentProfile {
                    description: "d".repeat(9000),
                    ..bob_profile.clone()
                },
            ),
            None,
            ErrorCode::ProfileTooLarge,
        ),
        (
            register_request(&alice_cert, profile(&alice, &["x"])),
            None,
            ErrorCode::DuplicateName,
        ),
    ];
    // A certificate of another authority.
    let other_dir = tempfile::tempdir().unwrap();
    let other = authority(other_dir.path());
    let (_, foreign_cert) = certified(&other, "bob");
    cases.push((
        register_request(&foreign_cert, bob_profile.clone()),
        None,
        ErrorCode::CertUntrusted,
    ));
    for (req, requester, expected) in cases {
        assert_eq!(code(reg.register(&req, requester, t0())), expected);
        assert_eq!(
            reg.view().len(),
            before,
            "a refused registration changed the registry"
        );
    }

    // Expired certificate.
    assert_eq!(
        code(reg.register(
            &register_request(&bob_cert, bob_profile.clone()),
            None,
            t0() + Duration::from_secs(31 * 86_400)
        )),
        ErrorCode::CertExpired
    );
    // Revoked certificate, once the registry has the new CRL.
    ca.revoke_by_operator(&bob_cert.serial, 1, t0()).unwrap();
    reg.set_certificate_checker(checker(&ca, t0()));
    assert_eq!(
        code(reg.register(&register_request(&bob_cert, bob_profile), None, t0())),
        ErrorCode::CertRevoked
    );
    assert_eq!(reg.view().len(), before);
}

#[test]
fn only_the_owner_updates_or_deregisters_and_every_change_is_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let mut reg = registry(&dir.path().join("ars"), &ca);
    let (alice, cert) = certified(&ca, "alice");
    let stored = reg
        .register(
            &register_request(&cert, profile(&alice, &["hotel booking"])),
            None,
            t0(),
        )
        .unwrap();
    let rid = stored.resource_id.clone();

    let mut changed = profile(&alice, &["hotel booking", "car rental"]);
    changed.resource_id = rid.clone();
    changed.address = "10.0.0.2:7000".into();
    let update = pb::UpdateRequest {
        request_id: 2,
        profile: Some(changed.clone()),
    };
    let mallory = "spiffe://travel.example/agent/mallory";
    assert_eq!(code(reg.update(&update, mallory)), ErrorCode::NotOwner);
    let unknown = pb::UpdateRequest {
        request_id: 2,
        profile: Some(pb::AgentProfile {
            resource_id: "ars:travel.example:00000000000000000000000000000001".into(),
            ..changed.clone()
        }),
    };
    assert_eq!(
        code(reg.update(&unknown, alice.as_str())),
        ErrorCode::UnknownResource
    );
    let too_many = pb::UpdateRequest {
        request_id: 2,
        profile: Some(pb::AgentProfile {
            capabilities: vec!["c".into(); 40],
            ..changed.clone()
        }),
    };
    assert_eq!(
        code(reg.update(&too_many, alice.as_str())),
        ErrorCode::TooManyCapabilities
    );

    let updated = reg.update(&update, alice.as_str()).unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.address, "10.0.0.2:7000");
    let found = reg
        .discover(&discover(&["car rental"]), mallory, t0())
        .unwrap();
    assert_eq!(found.len(), 1);

    assert_eq!(code(reg.deregister(&rid, mallory)), ErrorCode::NotOwner);
    reg.deregister(&rid, alice.as_str()).unwrap();
    assert!(
        reg.discover(&discover(&["car rental"]), mallory, t0())
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        code(reg.deregister(&rid, alice.as_str())),
        ErrorCode::UnknownResource
    );

    let changes = reg.take_changes();
    let versions: Vec<_> = changes
        .iter()
        .map(|c| match c {
            Change::Advertise(s) => format!("advertise v{}", s.version),
            Change::Withdraw(a) => format!("withdraw {a}"),
        })
        .collect();
    assert_eq!(
        versions,
        [
            "advertise v1",
            "advertise v2",
            "withdraw spiffe://travel.example/agent/alice"
        ]
    );
    assert!(reg.take_changes().is_empty());
}

#[test]
fn discovery_filters_and_ranks_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let mut reg = registry(&dir.path().join("ars"), &ca);
    let agents: &[(&str, &[&str], &str, i32)] = &[
        ("exact-b", &["Booking"], "en", pb::Protocol::Native as i32),
        ("exact-a", &["booking"], "zh", pb::Protocol::Mqtt as i32),
        (
            "word",
            &["hotel booking"],
            "en",
            pb::Protocol::Native as i32,
        ),
        (
            "prefix",
            &["bookkeeping"],
            "en",
            pb::Protocol::Native as i32,
        ),
        (
            "other",
            &["visa processing"],
            "en",
            pb::Protocol::Native as i32,
        ),
    ];
    for (name, caps, lang, proto) in agents {
        let (id, cert) = certified(&ca, name);
        let mut p = profile(&id, caps);
        p.languages = vec![lang.to_string()];
        p.protocols = vec![*proto];
        reg.register(&register_request(&cert, p), None, t0())
            .unwrap();
    }
    let names = |r: Vec<pb::AgentProfile>| -> Vec<String> {
        r.into_iter()
            .map(|p| p.agent.rsplit('/').next().unwrap().to_owned())
            .collect()
    };
    let me = "spiffe://travel.example/agent/me";
    // Exact matches (normalised, ties by agent ID) before a word match; no prefix match.
    assert_eq!(
        names(reg.discover(&discover(&["BOOKING"]), me, t0()).unwrap()),
        ["exact-a", "exact-b", "word"]
    );
    assert_eq!(
        names(reg.discover(&discover(&["book*"]), me, t0()).unwrap()),
        ["exact-a", "exact-b", "prefix"]
    );
    let mut q = discover(&["booking"]);
    q.languages = vec!["EN".into()];
    assert_eq!(
        names(reg.discover(&q, me, t0()).unwrap()),
        ["exact-b", "word"]
    );
    let mut q = discover(&["booking"]);
    q.protocols = vec![pb::Protocol::Mqtt as i32];
    assert_eq!(names(reg.discover(&q, me, t0()).unwrap()), ["exact-a"]);
    let mut q = discover(&["booking"]);
    q.limit = 1;
    assert_eq!(names(reg.discover(&q, me, t0()).unwrap()), ["exact-a"]);
    let mut q = discover(&["booking"]);
    q.domain = "elsewhere.example".into();
    assert!(reg.discover(&q, me, t0()).unwrap().is_empty());

    // Offline agents rank after online ones, and online_only drops them.
    reg.set_status("spiffe://travel.example/agent/exact-a", pb::Status::Offline);
    assert_eq!(
        names(reg.discover(&discover(&["booking"]), me, t0()).unwrap()),
        ["exact-b", "exact-a", "word"]
    );
    let mut q = discover(&["booking"]);
    q.online_only = true;
    assert_eq!(
        names(reg.discover(&q, me, t0()).unwrap()),
        ["exact-b", "word"]
    );

    // All capabilities must match; a prefix applies to the start of a whole capability.
    assert_eq!(
        names(
            reg.discover(&discover(&["booking", "book*"]), me, t0())
                .unwrap()
        ),
        ["exact-b", "exact-a"]
    );
    assert_eq!(
        names(
            reg.discover(&discover(&["hotel", "booking"]), me, t0())
                .unwrap()
        ),
        ["word"]
    );
    assert_eq!(
        code(reg.discover(&discover(&[]), me, t0())),
        ErrorCode::MissingField
    );
}

#[test]
fn discovery_is_rate_limited_per_agent_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let mut config = RegistryConfig::new(Domain::new(DOMAIN).unwrap(), dir.path().join("ars"));
    config.discovery_per_minute = 60;
    let mut reg = Registry::open(config, checker(&ca, t0())).unwrap();
    let a = "spiffe://travel.example/agent/a";
    for _ in 0..60 {
        reg.discover(&discover(&["x"]), a, t0()).unwrap();
    }
    let refused = reg.discover(&discover(&["x"]), a, t0()).unwrap_err();
    assert_eq!(refused.code, ErrorCode::RateLimited);
    assert_eq!(refused.retry_after_ms, 1000);
    // Another agent is not affected; the first one gets a token back a second later.
    reg.discover(&discover(&["x"]), "spiffe://travel.example/agent/b", t0())
        .unwrap();
    reg.discover(&discover(&["x"]), a, t0() + Duration::from_secs(1))
        .unwrap();
    let wire = reg.handle(&discover(&["x"]).into(), a, t0() + Duration::from_secs(1));
    let Some(Message::DiscoverReply(r)) = wire else {
        panic!()
    };
    let e = r.error.unwrap();
    assert_eq!(
        (e.error_code(), e.retry_after_ms),
        (ErrorCode::RateLimited, 1000)
    );
}

#[test]
fn registrations_per_certificate_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let mut config = RegistryConfig::new(Domain::new(DOMAIN).unwrap(), dir.path().join("ars"));
    config.max_registrations_per_certificate = 2;
    let mut reg = Registry::open(config, checker(&ca, t0())).unwrap();
    let (alice, cert) = certified(&ca, "alice");
    for _ in 0..2 {
        let p = reg
            .register(
                &register_request(&cert, profile(&alice, &["x"])),
                None,
                t0(),
            )
            .unwrap();
        reg.deregister(&p.resource_id, alice.as_str()).unwrap();
    }
    assert_eq!(
        code(reg.register(
            &register_request(&cert, profile(&alice, &["x"])),
            None,
            t0()
        )),
        ErrorCode::RegistrationLimit
    );
}

#[test]
fn profiles_survive_a_restart_and_the_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let rid = {
        let mut reg = registry(&dir.path().join("ars"), &ca);
        let (alice, cert) = certified(&ca, "alice");
        // What its gateway translates and converts for it is kept with the rest.
        let mut p = profile(&alice, &["hotel booking"]);
        p.text_fields = vec!["/note".into()];
        p.accepts = vec!["application/json".into()];
        reg.register(&register_request(&cert, p), None, t0())
            .unwrap()
            .resource_id
    };
    let mut reg = registry(&dir.path().join("ars"), &ca);
    let found = reg
        .discover(
            &discover(&["booking"]),
            "spiffe://travel.example/agent/x",
            t0(),
        )
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].resource_id, rid);
    assert_eq!(
        (found[0].text_fields.as_slice(), found[0].accepts.as_slice()),
        (
            &["/note".to_owned()][..],
            &["application/json".to_owned()][..]
        )
    );
    // Ownership survives too.
    assert_eq!(
        code(reg.deregister(&rid, "spiffe://travel.example/agent/x")),
        ErrorCode::NotOwner
    );
    reg.deregister(&rid, "spiffe://travel.example/agent/alice")
        .unwrap();
}

#[test]
fn an_agent_that_leaves_its_gateway_is_withdrawn_until_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let mut reg = registry(&dir.path().join("ars"), &ca);
    let (alice, cert) = certified(&ca, "alice");
    reg.register(
        &register_request(&cert, profile(&alice, &["hotel booking"])),
        None,
        t0(),
    )
    .unwrap();
    reg.take_changes();
    // It deregistered from the relay: peers forget it (a withdrawal, not an OFFLINE summary
    // they would keep), its profile stays here, offline, and a new peer's full sync skips it.
    reg.set_departed(alice.as_str());
    assert_eq!(reg.take_changes(), [Change::Withdraw(alice.to_string())]);
    assert_eq!(
        reg.view().status_of(alice.as_str()),
        Some(pb::Status::Offline)
    );
    assert!(reg.view().local_summaries().is_empty());
    reg.set_departed(alice.as_str());
    assert!(reg.take_changes().is_empty(), "said once");
    // It comes back: advertised again.
    reg.set_status(alice.as_str(), pb::Status::Running);
    let changes = reg.take_changes();
    assert!(
        matches!(&changes[..], [Change::Advertise(s)] if s.agent == alice.as_str() && s.status() == pb::Status::Running),
        "{changes:?}"
    );
    assert_eq!(reg.view().local_summaries().len(), 1);
}
