//! Enrollment tokens: an application in an organisation's name carries that organisation's
//! token, or nothing is issued; the tokens file the operator hands out from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;

use agw_aca::{
    CertificateAuthority,
    enrollment::{TokenFile, digest_of},
};
use agw_proto::{Message, pb, pb::ErrorCode};
use agw_sdk::certificates::HeldCertificate;
use common::*;

/// An authority whose organisations enroll with tokens from `tokens` ("Acme Travel" and
/// "Other Org" on the allow-list).
fn closed_authority(dir: &std::path::Path, tokens: &TokenFile) -> CertificateAuthority {
    let mut policy = policy().allow("Other Org", ["booking"]);
    for (org, digest) in tokens.digests() {
        policy = policy.require_token(org, digest);
    }
    assert!(policy.open_organizations().is_empty());
    CertificateAuthority::bootstrap(config(&dir.join("aca")), Box::new(policy), t0()).unwrap()
}

fn apply(
    ca: &CertificateAuthority,
    who: &mut Agent,
    materials: pb::IdentityMaterials,
    token: &str,
) -> pb::CertificateReply {
    let mut request = who
        .requests
        .application(&who.key, &who.id, materials)
        .unwrap();
    request.enrollment_token = token.to_owned();
    match ca.handle(&request.into(), t0()) {
        Some(Message::CertificateReply(reply)) => reply,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_squatter_without_the_token_gets_nothing_and_the_holder_of_it_enrolls() {
    let dir = tempfile::tempdir().unwrap();
    let tokens =
        TokenFile::load_or_create(&dir.path().join("tokens"), ["Acme Travel", "Other Org"])
            .unwrap();
    assert!(
        !dir.path().join("tokens").exists(),
        "written only when saved"
    );
    let ca = closed_authority(dir.path(), &tokens);
    let acme = tokens.token("Acme Travel").unwrap().to_owned();
    let other = tokens.token("Other Org").unwrap().to_owned();
    assert_ne!(acme, other);

    // No token, a wrong one, another organisation's: refused, and nothing is held.
    let mut squatter = Agent::new("alice");
    let none = apply(&ca, &mut squatter, materials(), "");
    assert_eq!(refusal(&none), ErrorCode::EnrollmentUnauthenticated);
    assert!(none.error.unwrap().detail.contains("none was sent"));
    let wrong = apply(&ca, &mut squatter, materials(), &"0".repeat(64));
    assert_eq!(refusal(&wrong), ErrorCode::EnrollmentUnauthenticated);
    let borrowed = apply(&ca, &mut squatter, materials(), &other);
    assert_eq!(refusal(&borrowed), ErrorCode::EnrollmentUnauthenticated);

    // The real alice, with her organisation's token, gets the name the squatter tried for.
    let mut alice = Agent::new("alice");
    let reply = apply(&ca, &mut alice, materials(), &acme);
    assert_eq!(reply.error, None);
    let held = HeldCertificate::from_reply(reply).unwrap();

    // Renewal is proved by the certificate: no token, same organisation.
    let new_key = agw_sdk::certificates::AgentKey::generate().unwrap();
    let renewal = alice
        .requests
        .renewal(&held, &alice.key, &new_key, &alice.id, Some(materials()))
        .unwrap();
    let Some(Message::CertificateReply(renewed)) = ca.handle(&renewal.into(), t0()) else {
        panic!("no renewal reply")
    };
    assert_eq!(renewed.error, None);

    // A renewal cannot move to another organisation: that takes its token, in an application.
    let held = HeldCertificate::from_reply(renewed).unwrap();
    let mut moved = materials();
    moved.organization = "Other Org".into();
    moved.permission_scope = vec!["booking".into()];
    let renewal = alice
        .requests
        .renewal(&held, &new_key, &new_key, &alice.id, Some(moved))
        .unwrap();
    let Some(Message::CertificateReply(refused)) = ca.handle(&renewal.into(), t0()) else {
        panic!("no renewal reply")
    };
    assert_eq!(refusal(&refused), ErrorCode::EnrollmentUnauthenticated);
}

#[test]
fn the_tokens_file_is_private_stable_and_rotatable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enrollment-tokens");
    let mut first = TokenFile::load_or_create(&path, ["Acme Travel"]).unwrap();
    first.save().unwrap();
    let token = first.token("Acme Travel").unwrap().to_owned();
    assert_eq!(token.len(), 64);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("{token} Acme Travel\n")), "{text}");

    // Loaded again (a restart), the same token; a new organisation gets its own.
    let mut again = TokenFile::load_or_create(&path, ["Acme Travel", "Beta"]).unwrap();
    again.save().unwrap();
    assert_eq!(again.token("Acme Travel"), Some(token.as_str()));
    assert_ne!(again.token("Beta"), Some(token.as_str()));

    // The operator rotates a token by replacing its line.
    let rotated = "f".repeat(64);
    std::fs::write(&path, format!("{rotated} Acme Travel\n")).unwrap();
    let after = TokenFile::load_or_create(&path, ["Acme Travel"]).unwrap();
    assert_eq!(after.token("Acme Travel"), Some(rotated.as_str()));
    let digests: Vec<_> = after.digests().collect();
    assert_eq!(digests, [("Acme Travel", digest_of(&rotated))]);

    // A line that is not TOKEN ORGANISATION is refused, naming the line.
    std::fs::write(&path, "# tokens\nshort Acme Travel\n").unwrap();
    let e = TokenFile::load_or_create(&path, ["Acme Travel"]).unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[test]
fn an_organisation_applying_too_fast_is_told_to_wait() {
    let dir = tempfile::tempdir().unwrap();
    let config = agw_aca::AuthorityConfig {
        applications_per_minute: 3,
        ..config(dir.path())
    };
    let ca = CertificateAuthority::bootstrap(config, Box::new(policy()), t0()).unwrap();
    let apply_at = |name: &str, now| {
        let mut who = Agent::new(name);
        who.apply(&ca, materials(), now)
    };
    for name in ["a1", "a2", "a3"] {
        assert_eq!(apply_at(name, t0()).error, None);
    }
    let refused = apply_at("a4", t0());
    assert_eq!(refusal(&refused), ErrorCode::RateLimited);
    assert!(refused.error.unwrap().detail.contains("retry in"));
    // An organisation not admitted by the policy is refused by it, not counted.
    let mut m = materials();
    m.organization = "Unknown Corp".into();
    assert_eq!(
        refusal(&Agent::new("x").apply(&ca, m, t0())),
        ErrorCode::OrgNotAllowed
    );
    // Twenty seconds bring one application back.
    assert_eq!(
        apply_at("a4", t0() + std::time::Duration::from_secs(20)).error,
        None
    );
}

#[test]
fn one_address_applying_too_fast_is_told_to_wait_before_anything_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = agw_aca::AuthorityConfig {
        applications_per_minute_per_source: 2,
        ..config(dir.path())
    };
    let ca = CertificateAuthority::bootstrap(config, Box::new(policy()), t0()).unwrap();
    let (one, other): (std::net::IpAddr, std::net::IpAddr) =
        ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
    let apply_from = |source, name: &str| {
        let mut who = Agent::new(name);
        let request = who
            .requests
            .application(&who.key, &who.id, materials())
            .unwrap();
        match ca.handle_from(&request.into(), Some(source), t0()) {
            Some(Message::CertificateReply(reply)) => reply,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(apply_from(one, "b1").error, None);
    // A refused application counts too: the limit is on asking, not on succeeding.
    let mut junk = Agent::new("b2");
    let mut bad = junk
        .requests
        .application(&junk.key, &junk.id, materials())
        .unwrap();
    bad.csr = vec![0x30, 0].into();
    assert!(matches!(
        ca.handle_from(&bad.into(), Some(one), t0()),
        Some(Message::CertificateReply(r)) if refusal(&r) == ErrorCode::BadCsr
    ));
    assert_eq!(refusal(&apply_from(one, "b3")), ErrorCode::RateLimited);
    // Another address is not held up.
    assert_eq!(apply_from(other, "b4").error, None);
}

#[test]
fn a_live_certificate_of_the_organisation_vouches_for_a_new_agent_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let tokens =
        TokenFile::load_or_create(&dir.path().join("tokens"), ["Acme Travel", "Other Org"])
            .unwrap();
    let ca = closed_authority(dir.path(), &tokens);
    let acme = tokens.token("Acme Travel").unwrap().to_owned();
    let mut alice = Agent::new("alice");
    let voucher = HeldCertificate::from_reply(apply(&ca, &mut alice, materials(), &acme)).unwrap();
    let csr_of = |who: &Agent| who.key.csr(who.id.as_str()).unwrap();

    // Bob of the same organisation, vouched for by alice's certificate: certified.
    let bob = Agent::new("bob");
    let issued = ca
        .apply_vouched(&csr_of(&bob), &materials(), voucher.der(), t0())
        .unwrap();
    assert!(!issued.chain.is_empty());
    assert_eq!(
        ca.organization_of(voucher.der(), t0()).unwrap(),
        materials().organization
    );

    // Not for another organisation.
    let carol = Agent::new("carol");
    let mut other = materials();
    other.organization = "Other Org".into();
    let err = ca
        .apply_vouched(&csr_of(&carol), &other, voucher.der(), t0())
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EnrollmentUnauthenticated);

    // Not once the voucher is revoked.
    ca.revoke_by_operator(
        &voucher.serial,
        pb::RevocationReason::AffiliationChanged as i32,
        t0(),
    )
    .unwrap();
    let err = ca
        .apply_vouched(&csr_of(&carol), &materials(), voucher.der(), t0())
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CertRevoked);
}
