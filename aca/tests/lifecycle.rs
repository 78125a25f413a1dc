//! The certificate life cycle on simulated time, through the protocol service: applications
//! refused check by check with nothing stored, renewal, revocation rules, status, and the
//! state surviving a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agw_aca::{CertificateStatus, store::Revocation};
use agw_proto::{Message, pb, pb::ErrorCode};
use agw_sdk::certificates::{AgentKey, HeldCertificate};
use common::*;

fn status(
    ca: &agw_aca::CertificateAuthority,
    serial: &[u8],
    now: std::time::SystemTime,
) -> pb::StatusReply {
    let q = pb::StatusQuery {
        request_id: 9,
        serial: serial.to_vec().into(),
    };
    match ca.handle(&q.into(), now) {
        Some(Message::StatusReply(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn refused_applications_say_which_check_failed_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    let mut alice = Agent::new("alice");

    let mut m = materials();
    m.organization = "Unknown Corp".into();
    assert_eq!(
        refusal(&alice.apply(&ca, m, t0())),
        ErrorCode::OrgNotAllowed
    );

    let mut m = materials();
    m.permission_scope.push("root".into());
    assert_eq!(
        refusal(&alice.apply(&ca, m, t0())),
        ErrorCode::ScopeNotPermitted
    );

    let mut m = materials();
    m.organization.clear();
    assert_eq!(refusal(&alice.apply(&ca, m, t0())), ErrorCode::MissingField);

    let mut m = materials();
    m.skills = vec!["s".into(); 65];
    assert_eq!(refusal(&alice.apply(&ca, m, t0())), ErrorCode::InvalidField);

    // An identity in another domain.
    let mut outsider = Agent::new("x");
    outsider.id = agw_proto::identity::AgentId::parse("spiffe://other.example/agent/x").unwrap();
    assert_eq!(
        refusal(&outsider.apply(&ca, materials(), t0())),
        ErrorCode::IdentityOutsideDomain
    );

    // Bad CSRs: garbage, a flipped signature bit, oversized, two identities.
    let key = AgentKey::generate().unwrap();
    let good = key.csr(alice.id.as_str()).unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x01;
    let two_ids = {
        let mut p = rcgen_params();
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://travel.example/agent/y".try_into().unwrap(),
        ));
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://travel.example/agent/z".try_into().unwrap(),
        ));
        p.serialize_request(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    };
    for (csr, code) in [
        (b"garbage".to_vec(), ErrorCode::BadCsr),
        (flipped, ErrorCode::BadCsr),
        (vec![0x30; 20_000], ErrorCode::TooLarge),
        (two_ids, ErrorCode::InvalidField),
    ] {
        let app = pb::CertificateApplication {
            request_id: 3,
            csr: csr.into(),
            materials: Some(materials()),
            enrollment_token: String::new(),
        };
        let Some(Message::CertificateReply(reply)) = ca.handle(&app.into(), t0()) else {
            panic!()
        };
        assert_eq!(refusal(&reply), code);
        assert!(reply.certificate_chain.is_empty());
    }

    // After all these refusals, the identity is still free and the CRL unchanged.
    let crl_before = ca.crl(t0()).unwrap().number;
    let held = alice.certify(&ca, t0());
    assert_eq!(ca.crl(t0()).unwrap().number, crl_before);
    assert_eq!(
        status(&ca, &held.serial, t0()).state,
        pb::CertificateState::Valid as i32
    );
    assert_eq!(
        status(&ca, &[1, 2, 3], t0()).state,
        pb::CertificateState::Unknown as i32
    );
}

fn rcgen_params() -> rcgen::CertificateParams {
    rcgen::CertificateParams::default()
}

#[test]
fn an_identity_is_held_by_one_key_until_its_certificate_ends() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    let mut alice = Agent::new("alice");
    let first = alice.certify(&ca, t0());

    let mut impostor = Agent::new("alice");
    assert_eq!(
        refusal(&impostor.apply(&ca, materials(), t0())),
        ErrorCode::IdentityTaken
    );

    // Revoked: the identity is free again (for a new key).
    ca.revoke_by_operator(
        &first.serial,
        pb::RevocationReason::CessationOfOperation as i32,
        t0(),
    )
    .unwrap();
    let second = impostor.certify(&ca, t0());
    assert_ne!(second.serial, first.serial);

    // Expired: free again too.
    let mut third = Agent::new("alice");
    assert_eq!(
        refusal(&third.apply(&ca, materials(), t0())),
        ErrorCode::IdentityTaken
    );
    third.certify(&ca, t0() + days(31));
}

#[test]
fn the_same_key_applying_again_gets_its_certificate_and_a_new_one_near_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    let mut alice = Agent::new("alice");
    let first = alice.certify(&ca, t0());

    // The reply was lost, or the agent restarted: the same key gets the same certificate.
    let again = alice.certify(&ca, t0() + days(1));
    assert_eq!(again.serial, first.serial);
    assert_eq!(again.chain, first.chain);

    // Other materials with the same key: a new certificate that carries them.
    let mut m = materials();
    m.skills.push("car hire".into());
    let changed = HeldCertificate::from_reply(alice.apply(&ca, m, t0() + days(2))).unwrap();
    assert_ne!(changed.serial, first.serial);

    // Past 70% of its lifetime the same key gets a new certificate: a renewal.
    let late = t0() + days(2) + days(22);
    let renewed = alice.certify(&ca, late);
    assert_ne!(renewed.serial, changed.serial);
    assert!(renewed.not_after > changed.not_after);

    // Another key is told the truth: the identity is someone else's.
    let reply = Agent::new("alice").apply(&ca, materials(), late);
    assert_eq!(refusal(&reply), ErrorCode::IdentityTaken);
    assert!(
        reply.error.unwrap().detail.contains("another key"),
        "the detail names the cause"
    );
}

#[test]
fn a_gateway_certificate_names_what_its_csr_names() {
    use agw_proto::identity::GatewayId;
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    let edge1 = GatewayId::parse("spiffe://travel.example/agw/edge-1").unwrap();
    let key = AgentKey::generate().unwrap();

    // A CSR for another gateway, for no identity, or for two: refused, nothing issued.
    let other = key.csr("spiffe://travel.example/agw/edge-2").unwrap();
    let err = ca.issue_gateway(&edge1, &other, t0()).unwrap_err();
    assert_eq!(err.code, ErrorCode::IdentityMismatch, "{err}");
    assert!(err.detail.contains("edge-2"), "{err}");
    let none = rcgen_params()
        .serialize_request(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .der()
        .to_vec();
    assert_eq!(
        ca.issue_gateway(&edge1, &none, t0()).unwrap_err().code,
        ErrorCode::IdentityMismatch
    );
    let mut two = rcgen_params();
    for uri in [edge1.as_str(), "spiffe://travel.example/agw/edge-3"] {
        two.subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
    }
    let two = two
        .serialize_request(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .der()
        .to_vec();
    assert_eq!(
        ca.issue_gateway(&edge1, &two, t0()).unwrap_err().code,
        ErrorCode::IdentityMismatch
    );

    // The right CSR is certified; asked again with the same key (a restart), the same
    // certificate comes back; after 70% of 90 days, a new one for the same key.
    let csr = key.csr(edge1.as_str()).unwrap();
    let issued = ca.issue_gateway(&edge1, &csr, t0()).unwrap();
    let restarted = ca.issue_gateway(&edge1, &csr, t0() + days(10)).unwrap();
    assert_eq!(restarted, issued);
    let renewed = ca.issue_gateway(&edge1, &csr, t0() + days(64)).unwrap();
    assert_ne!(renewed.serial, issued.serial);
    let stranger = AgentKey::generate().unwrap().csr(edge1.as_str()).unwrap();
    assert_eq!(
        ca.issue_gateway(&edge1, &stranger, t0() + days(64))
            .unwrap_err()
            .code,
        ErrorCode::IdentityTaken
    );
}

#[test]
fn a_key_compromise_revokes_every_live_certificate_of_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    let mut alice = Agent::new("alice");
    let first = alice.certify(&ca, t0());
    let mut m = materials();
    m.skills.push("car hire".into());
    let second = HeldCertificate::from_reply(alice.apply(&ca, m, t0())).unwrap();
    // The same key under another identity.
    let mut twin = Agent::new("alice-twin");
    twin.key = AgentKey::from_pem(&alice.key.to_pem()).unwrap();
    let third = twin.certify(&ca, t0());
    let bystander = Agent::new("bob").certify(&ca, t0());

    // A plain revocation touches one certificate.
    let also = ca
        .revoke_by_operator(
            &second.serial,
            pb::RevocationReason::Superseded as i32,
            t0(),
        )
        .unwrap();
    assert!(also.is_empty());
    // Key compromise takes the key's other live certificates with it, and says which.
    let request = alice
        .requests
        .revocation(
            &first,
            &alice.key,
            pb::RevocationReason::KeyCompromise,
            t0(),
        )
        .unwrap();
    let reply = match ca.handle(&request.into(), t0()) {
        Some(Message::RevocationReply(r)) => r,
        other => panic!("{other:?}"),
    };
    assert!(reply.error.is_none(), "{reply:?}");
    assert_eq!(reply.also_revoked, vec![third.serial.clone()]);
    for held in [&first, &third] {
        assert!(matches!(
            ca.status(&held.serial, t0()).unwrap(),
            CertificateStatus::Revoked(Revocation { reason: 1, .. })
        ));
    }
    // The superseded one keeps its reason; bob is untouched; the CRL lists all three.
    assert!(matches!(
        ca.status(&second.serial, t0()).unwrap(),
        CertificateStatus::Revoked(Revocation { reason: 4, .. })
    ));
    assert!(matches!(
        ca.status(&bystander.serial, t0()).unwrap(),
        CertificateStatus::Valid { .. }
    ));
    let listed = agw_aca::revoked_serials(&ca.crl(t0()).unwrap().der).unwrap();
    for held in [&first, &second, &third] {
        assert!(listed.contains(&held.serial.to_vec()));
    }
    assert_eq!(listed.len(), 3);
}

#[test]
fn renewal_keeps_the_identity_and_needs_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    let mut alice = Agent::new("alice");
    let held = alice.certify(&ca, t0());
    // The SDK renews at 70% of the lifetime: 30 days and the 5 minutes it is backdated.
    assert_eq!(
        held.renew_at(),
        t0() + days(21) - std::time::Duration::from_secs(90)
    );
    assert_eq!(held.not_after, t0() + days(30));

    let now = held.renew_at();
    let new_key = AgentKey::generate().unwrap();
    let renew = |key: &AgentKey,
                 signer: &AgentKey,
                 held: &HeldCertificate,
                 requests: &mut agw_sdk::certificates::CertificateRequests,
                 now| {
        let req = requests
            .renewal(held, signer, key, &alice.id, None)
            .unwrap();
        match ca.handle(&req.into(), now) {
            Some(Message::CertificateReply(r)) => r,
            other => panic!("{other:?}"),
        }
    };
    let mut requests = agw_sdk::certificates::CertificateRequests::default();

    // A proof made with another key is refused.
    let stranger = AgentKey::generate().unwrap();
    assert_eq!(
        refusal(&renew(&new_key, &stranger, &held, &mut requests, now)),
        ErrorCode::BadProof
    );

    let renewed =
        HeldCertificate::from_reply(renew(&new_key, &alice.key, &held, &mut requests, now))
            .unwrap();
    assert_eq!(
        renewed.not_before,
        now - std::time::Duration::from_secs(300)
    );
    assert_eq!(renewed.not_after, now + days(30));
    let text = x509_text(renewed.der());
    assert!(
        text.contains("spiffe://travel.example/agent/alice"),
        "{text}"
    );
    assert!(
        text.contains("O = Acme Travel"),
        "materials kept when none are sent: {text}"
    );

    // The renewed certificate now holds the identity: the old one cannot fork it with a second
    // renewal, and once revoked or expired nothing renews.
    assert_eq!(
        refusal(&renew(&new_key, &alice.key, &held, &mut requests, now)),
        ErrorCode::IdentityTaken
    );
    ca.revoke_by_operator(&held.serial, pb::RevocationReason::Superseded as i32, now)
        .unwrap();
    assert_eq!(
        refusal(&renew(&new_key, &alice.key, &held, &mut requests, now)),
        ErrorCode::CertRevoked
    );
    assert_eq!(
        refusal(&renew(
            &new_key,
            &new_key,
            &renewed,
            &mut requests,
            now + days(31)
        )),
        ErrorCode::CertExpired
    );
}

fn x509_text(der: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "c.pem", pem("CERTIFICATE", der));
    openssl(&["x509", "-noout", "-text", "-in", f.to_str().unwrap()]).1
}

#[test]
fn revocations_are_final_except_a_change_to_key_compromise() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    let mut alice = Agent::new("alice");
    let held = alice.certify(&ca, t0());
    let revoke =
        |reason: pb::RevocationReason, key: &AgentKey, signed: std::time::SystemTime, now| {
            let mut requests = agw_sdk::certificates::CertificateRequests::default();
            let req = requests.revocation(&held, key, reason, signed).unwrap();
            match ca.handle(&req.into(), now) {
                Some(Message::RevocationReply(r)) => r.error.map(|e| e.error_code()),
                other => panic!("{other:?}"),
            }
        };
    let t = t0() + days(2);
    let stranger = AgentKey::generate().unwrap();
    assert_eq!(
        revoke(pb::RevocationReason::KeyCompromise, &stranger, t, t),
        Some(ErrorCode::BadProof)
    );
    assert_eq!(
        revoke(
            pb::RevocationReason::KeyCompromise,
            &alice.key,
            t - days(1),
            t
        ),
        Some(ErrorCode::BadProof),
        "a stale proof"
    );
    assert_eq!(
        revoke(pb::RevocationReason::CertificateHold, &alice.key, t, t),
        Some(ErrorCode::RevocationNotAllowed)
    );
    assert_eq!(
        revoke(pb::RevocationReason::Superseded, &alice.key, t, t),
        None
    );
    assert_eq!(
        ca.status(&held.serial, t).unwrap(),
        CertificateStatus::Revoked(Revocation {
            at: unix(t),
            reason: 4
        })
    );
    assert_eq!(
        revoke(pb::RevocationReason::AffiliationChanged, &alice.key, t, t),
        Some(ErrorCode::RevocationNotAllowed)
    );
    assert_eq!(
        revoke(pb::RevocationReason::RemoveFromCrl, &alice.key, t, t),
        Some(ErrorCode::RevocationNotAllowed)
    );
    // To keyCompromise: allowed, keeping the original revocation time.
    let later = t + days(1);
    assert_eq!(
        revoke(
            pb::RevocationReason::KeyCompromise,
            &alice.key,
            later,
            later
        ),
        None
    );
    let r = status(&ca, &held.serial, later);
    assert_eq!(r.state, pb::CertificateState::Revoked as i32);
    assert_eq!(
        r.revocation_reason,
        pb::RevocationReason::KeyCompromise as i32
    );
    assert_eq!(r.revoked_at_unix_s, unix(t) as u64);

    // The compromised key is never certified again, whatever the identity.
    let mut again = Agent::new("alice-2");
    again.key = AgentKey::from_pem(&alice.key.to_pem()).unwrap();
    assert_eq!(
        refusal(&again.apply(&ca, materials(), later)),
        ErrorCode::KeyCompromised
    );

    let unknown = pb::RevocationRequest {
        request_id: 1,
        serial: vec![9; 16].into(),
        ..Default::default()
    };
    let Some(Message::RevocationReply(r)) = ca.handle(&unknown.into(), later) else {
        panic!()
    };
    assert_eq!(r.error.unwrap().error_code(), ErrorCode::CertUnknown);
}

fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn status_reports_valid_expired_revoked_and_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    let held = Agent::new("alice").certify(&ca, t0());
    let not_after = unix(t0() + days(30));
    assert_eq!(
        ca.status(&held.serial, t0()).unwrap(),
        CertificateStatus::Valid { not_after }
    );
    assert_eq!(
        ca.status(&held.serial, t0() + days(31)).unwrap(),
        CertificateStatus::Expired { not_after }
    );
    assert_eq!(
        ca.status(&[0x42], t0()).unwrap(),
        CertificateStatus::Unknown
    );
    let r = status(&ca, &held.serial, t0() + days(31));
    assert_eq!(
        (r.state, r.not_after_unix_s),
        (pb::CertificateState::Expired as i32, not_after as u64)
    );
}

#[test]
fn state_survives_a_restart_and_the_ca_key_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let (held, revoked, anchor) = {
        let ca = authority(dir.path(), t0());
        let held = Agent::new("alice").certify(&ca, t0());
        let revoked = Agent::new("bob").certify(&ca, t0());
        ca.revoke_by_operator(&revoked.serial, 1, t0()).unwrap();
        (held, revoked, ca.trust_anchor().to_vec())
    };
    let ca = authority(dir.path(), t0() + days(1));
    assert_eq!(
        ca.trust_anchor(),
        anchor,
        "the CA key and certificate are loaded, not remade"
    );
    assert!(matches!(
        ca.status(&held.serial, t0() + days(1)).unwrap(),
        CertificateStatus::Valid { .. }
    ));
    assert!(matches!(
        ca.status(&revoked.serial, t0() + days(1)).unwrap(),
        CertificateStatus::Revoked(_)
    ));
    assert_eq!(
        refusal(&Agent::new("alice").apply(&ca, materials(), t0() + days(1))),
        ErrorCode::IdentityTaken
    );

    // The data directory belongs to one domain: starting it for another is refused.
    let mut other = config(dir.path());
    other.domain = agw_proto::identity::Domain::new("other.example").unwrap();
    let err =
        agw_aca::CertificateAuthority::bootstrap(other, Box::new(policy()), t0()).unwrap_err();
    assert!(
        err.detail
            .contains("holds the authority of spiffe://travel.example"),
        "{err}"
    );

    // Its state is the owner's alone: the key and the database 0600 (the daemon's test checks
    // the directories).
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca.key.pem"), 0o600);
    assert_eq!(mode("aca.redb"), 0o600);
}

#[test]
fn other_kinds_are_not_the_authoritys_to_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    assert_eq!(ca.handle(&pb::Heartbeat::default().into(), t0()), None);
    let Some(Message::CrlReply(r)) = ca.handle(&pb::CrlRequest { request_id: 5 }.into(), t0())
    else {
        panic!()
    };
    assert_eq!((r.request_id, r.error), (5, None));
    assert_eq!(r.crl_number, ca.crl(t0()).unwrap().number);
}

#[test]
fn key_material_never_shows_in_debug_output() {
    let key = AgentKey::generate().unwrap();
    let debug = format!("{key:?}");
    assert!(debug.contains("private: ..."), "{debug}");
    let pem = key.to_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!debug.contains(&body[..16]), "{debug}");

    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    let ca_key = std::fs::read_to_string(dir.path().join("ca.key.pem")).unwrap();
    let ca_body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    let debug = format!("{ca:?}");
    assert!(
        !debug.contains(&ca_body[..16]),
        "the CA's Debug shows its key"
    );
}
