//! Two gateways' authorities of one domain on a real 3-member etcd cluster (issue 19): one
//! set of identities and serials, revocations heard across gateways, one sequence of CRL
//! numbers, and a gateway without the domain's authority files refused at start.

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::Path,
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering},
    time::Duration,
};

use agw_aca::{CertificateAuthority, CertificateStatus};
use agw_etcd::{
    EtcdConfig, Shared,
    cluster::{Cluster, wait_for},
};
use agw_proto::pb::ErrorCode;
use common::*;

fn gateway(dir: &Path, cluster: &Cluster) -> Result<CertificateAuthority, agw_aca::AcaError> {
    let mut config = config(dir);
    let etcd = EtcdConfig::new(cluster.endpoints(), DOMAIN);
    config.shared = Some(Shared::connect(etcd).expect("etcd"));
    CertificateAuthority::bootstrap(config, Box::new(policy()), t0())
}

/// A second gateway's data directory holding the first's authority files.
fn copy_authority(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["ca.key.pem", "ca.chain.pem", "trust-anchor.pem"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn two_gateways_issue_and_revoke_as_one_authority() {
    let cluster = Cluster::start(3).expect("etcd cluster");
    let dirs = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dirs.path().join("a"), dirs.path().join("b"));
    let a = Arc::new(gateway(&dir_a, &cluster).expect("gateway a"));

    // A gateway without the domain's authority would make a second one: refused.
    let refused = gateway(&dirs.path().join("stray"), &cluster).expect_err("a second authority");
    assert!(refused.to_string().contains("copy ca.key.pem"), "{refused}");
    copy_authority(&dir_a, &dir_b);
    let b = Arc::new(gateway(&dir_b, &cluster).expect("gateway b"));
    let revocations_heard = Arc::new(AtomicUsize::new(0));
    let heard = Arc::clone(&revocations_heard);
    b.on_revoke(move || {
        heard.fetch_add(1, Ordering::SeqCst);
    });
    b.follow_domain().unwrap();

    // Alice certified at a: b knows her certificate, and refuses her name to another key.
    let mut alice = Agent::new("alice");
    let held = alice.certify(&a, t0());
    wait_for("b sees alice's certificate", Duration::from_secs(1), || {
        matches!(
            b.status(&held.serial, t0()),
            Ok(CertificateStatus::Valid { .. })
        )
    });
    let mut squatter = Agent::new("alice");
    assert_eq!(
        refusal(&squatter.apply(&b, materials(), t0())),
        ErrorCode::IdentityTaken
    );
    // Her own key at b gets her certificate back, not a second one.
    let again = alice.certify(&b, t0());
    assert_eq!(again.serial, held.serial);

    // One new name applied for at both gateways at once, with two keys: one certificate.
    let mut successes = 0;
    for round in 0..5 {
        let name = format!("race{round}");
        let (mut one, mut two) = (Agent::new(&name), Agent::new(&name));
        let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
        let at_a = std::thread::spawn(move || one.apply(&a2, materials(), t0()));
        let at_b = std::thread::spawn(move || two.apply(&b2, materials(), t0()));
        let replies = [at_a.join().unwrap(), at_b.join().unwrap()];
        let issued = replies.iter().filter(|r| r.error.is_none()).count();
        assert_eq!(issued, 1, "round {round}: {replies:?}");
        for r in replies.iter().filter(|r| r.error.is_some()) {
            assert!(
                matches!(
                    refusal(r),
                    ErrorCode::IdentityTaken | ErrorCode::StoreConflict
                ),
                "{r:?}"
            );
        }
        successes += issued;
    }
    assert_eq!(successes, 5);

    // Revoked at a: b answers Revoked, reissues its CRL with it, and its hook hears it,
    // within a second.
    a.revoke_by_operator(&held.serial, 1, t0()).unwrap();
    wait_for("b's status says revoked", Duration::from_secs(1), || {
        matches!(
            b.status(&held.serial, t0()),
            Ok(CertificateStatus::Revoked(_))
        )
    });
    wait_for("b's revocation hook", Duration::from_secs(1), || {
        revocations_heard.load(Ordering::SeqCst) > 0
    });
    let crl_b = b.crl(t0()).unwrap();
    let crl_a = a.crl(t0()).unwrap();
    let listed = |der: &[u8]| {
        let (_, crl) = x509_parser::parse_x509_crl(der).unwrap();
        crl.iter_revoked_certificates()
            .any(|r| r.raw_serial() == &held.serial[..])
    };
    assert!(listed(&crl_b.der), "b's CRL lists the revocation made at a");
    assert!(listed(&crl_a.der));
    // One sequence of CRL numbers for the domain: never the same number twice.
    assert_ne!(crl_a.number, crl_b.number);

    // What etcd holds is readable with etcdctl.
    let keys = cluster
        .etcdctl_keys(&format!("/agw/{DOMAIN}/aca/identities/"))
        .unwrap();
    assert!(
        keys.contains(&format!(
            "/agw/{DOMAIN}/aca/identities/spiffe://{DOMAIN}/agent/alice"
        )),
        "{keys:?}"
    );
}
