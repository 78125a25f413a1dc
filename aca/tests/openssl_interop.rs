//! What the authority issues, checked by a client we did not write: openssl verifies the
//! certificates, honours the CRL, and shows the reasons and CRL number; and CSRs that openssl
//! makes are certified or refused as the policy says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use agw_aca::{
    AuthorityConfig, CertificateAuthority, RootMode,
    http::{CrlHttpServer, url_path},
};
use agw_proto::{Message, pb};
use common::*;

fn verify(
    dir: &std::path::Path,
    ca: &CertificateAuthority,
    leaf: &[u8],
    crl: Option<&[u8]>,
) -> (bool, String) {
    let anchor = file(dir, "anchor.pem", pem("CERTIFICATE", ca.trust_anchor()));
    let chain: String = ca
        .ca_chain()
        .iter()
        .map(|c| pem("CERTIFICATE", c))
        .collect();
    let untrusted = file(dir, "chain.pem", chain);
    let leaf = file(dir, "leaf.pem", pem("CERTIFICATE", leaf));
    let mut args = vec![
        "verify".to_owned(),
        "-attime".to_owned(),
        // openssl checks validity at this time: the simulated clock's, plus a day.
        (t0() + days(1))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string(),
        "-CAfile".to_owned(),
        anchor.display().to_string(),
        "-untrusted".to_owned(),
        untrusted.display().to_string(),
    ];
    if let Some(crl) = crl {
        let crl = file(dir, "crl.pem", pem("X509 CRL", crl));
        args.extend([
            "-crl_check".to_owned(),
            "-CRLfile".to_owned(),
            crl.display().to_string(),
        ]);
    }
    args.push(leaf.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl(&args)
}

#[test]
fn openssl_verifies_issued_certificates_and_honours_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(authority(dir.path(), t0()));
    let mut alice = Agent::new("alice");
    let mut bob = Agent::new("bob");
    let alice_cert = alice.certify(&ca, t0());
    let bob_cert = bob.certify(&ca, t0());

    let work = tempfile::tempdir().unwrap();
    let (ok, out) = verify(work.path(), &ca, alice_cert.der(), None);
    assert!(ok, "{out}");

    // What the certificate holds, as openssl reads it.
    let leaf = file(
        work.path(),
        "alice.pem",
        pem("CERTIFICATE", alice_cert.der()),
    );
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", leaf.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(
        text.contains("URI:spiffe://travel.example/agent/alice"),
        "{text}"
    );
    assert!(
        text.contains("http://127.0.0.1:7810/crl/travel.example.crl"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("O = Acme Travel"), "{text}");
    // The materials checked before issue, in the Subject Directory Attributes extension
    // (2.5.29.9, non-critical): openssl finds it and parses its value down to the strings the
    // authority checked, under the materials' attribute type.
    // pyca/cryptography (Python's X.509 library, strict DER) reads every extension; the
    // materials' one opaque to it, as to any library that does not know the attribute.
    let python = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; from cryptography import x509\n\
             c = x509.load_pem_x509_certificate(open(sys.argv[1], 'rb').read())\n\
             print(' '.join(e.oid.dotted_string for e in c.extensions))",
            leaf.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&python.stdout);
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
    assert!(
        listed.split_whitespace().any(|oid| oid == "2.5.29.9"),
        "{listed}"
    );
    let (ok, parsed) = openssl(&["asn1parse", "-in", leaf.to_str().unwrap()]);
    assert!(ok, "{parsed}");
    let lines: Vec<&str> = parsed.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.ends_with(":X509v3 Subject Directory Attributes"))
        .unwrap_or_else(|| panic!("{parsed}"));
    let value = lines[at + 1];
    assert!(value.contains("OCTET STRING"), "{value}");
    let offset = value.split(':').next().unwrap().trim();
    let (ok, inner) = openssl(&[
        "asn1parse",
        "-in",
        leaf.to_str().unwrap(),
        "-strparse",
        offset,
    ]);
    assert!(ok, "{inner}");
    assert!(
        inner.contains(&format!(":{}", agw_tls::materials::MATERIALS_OID)),
        "{inner}"
    );
    let strings: Vec<&str> = inner
        .lines()
        .filter_map(|l| l.split("UTF8STRING        :").nth(1))
        .collect();
    assert_eq!(
        strings,
        [
            "Acme Travel",
            "dev@acme.example",
            "booking",
            "REG-2026-001",
            "hotel booking",
            "booking"
        ],
        "{inner}"
    );

    // Alice revokes her certificate: her key leaked.
    let request = alice
        .requests
        .revocation(
            &alice_cert,
            &alice.key,
            pb::RevocationReason::KeyCompromise,
            t0() + days(1),
        )
        .unwrap();
    let Some(Message::RevocationReply(reply)) = ca.handle(&request.into(), t0() + days(1)) else {
        panic!("no revocation reply");
    };
    assert_eq!(reply.error, None);

    // The CRL, fetched over HTTP by curl at the distribution point's path.
    let runtime = agw_rpc::runtime("crl-test").unwrap();
    let server = CrlHttpServer::start(
        runtime.handle(),
        "127.0.0.1:0",
        Arc::clone(&ca),
        url_path("http://127.0.0.1:7810/crl/travel.example.crl"),
    )
    .unwrap();
    let url = format!("http://{}/crl/travel.example.crl", server.local_addr());
    let crl_path = work.path().join("fetched.crl");
    let curl = std::process::Command::new("curl")
        .args([
            "-sf",
            "-o",
            crl_path.to_str().unwrap(),
            "-w",
            "%{content_type}",
            &url,
        ])
        .output()
        .unwrap();
    assert!(curl.status.success(), "curl {url}");
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "application/pkix-crl"
    );
    let crl = std::fs::read(&crl_path).unwrap();

    let (ok, out) = verify(work.path(), &ca, alice_cert.der(), Some(&crl));
    assert!(!ok, "a revoked certificate passed: {out}");
    assert!(out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify(work.path(), &ca, bob_cert.der(), Some(&crl));
    assert!(ok, "{out}");

    let (ok, text) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-noout",
        "-text",
        "-in",
        crl_path.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    let serial_hex: String = alice_cert
        .serial
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert!(text.contains(&serial_hex), "{serial_hex} not in {text}");

    // Other paths and methods are refused.
    let code = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let base = format!("http://{}", server.local_addr());
    assert_eq!(
        code(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/other")
        ]),
        "404"
    );
    assert_eq!(
        code(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            &url
        ]),
        "405"
    );
}

#[test]
fn crl_numbers_only_increase_across_revocations_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut numbers = Vec::new();
    let mut serials = Vec::new();
    {
        let ca = authority(dir.path(), t0());
        numbers.push(ca.crl(t0()).unwrap().number);
        for name in ["a", "b"] {
            let held = Agent::new(name).certify(&ca, t0());
            ca.revoke_by_operator(&held.serial, pb::RevocationReason::Superseded as i32, t0())
                .unwrap();
            numbers.push(ca.crl(t0()).unwrap().number);
            serials.push(held.serial);
        }
    }
    let ca = authority(dir.path(), t0() + days(1));
    numbers.push(ca.crl(t0() + days(1)).unwrap().number);
    // Half the CRL's validity later, a fresh CRL with a new number.
    numbers.push(ca.crl(t0() + days(2)).unwrap().number);
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");

    let work = tempfile::tempdir().unwrap();
    let crl = file(work.path(), "crl.der", ca.crl(t0() + days(2)).unwrap().der);
    let (ok, text) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-noout",
        "-text",
        "-in",
        crl.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert_eq!(text.matches("Superseded").count(), 2, "{text}");
}

#[test]
fn csrs_made_by_openssl_are_certified_or_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), t0());
    let work = tempfile::tempdir().unwrap();
    let csr = |name: &str, newkey: &[&str]| -> Vec<u8> {
        let key = work.path().join(format!("{name}.key"));
        let out = work.path().join(format!("{name}.csr"));
        let san = format!("subjectAltName=URI:spiffe://{DOMAIN}/agent/{name}");
        let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=x", "-addext", &san];
        args.extend_from_slice(newkey);
        let key_s = key.to_str().unwrap().to_owned();
        let out_s = out.to_str().unwrap().to_owned();
        args.extend_from_slice(&["-keyout", &key_s, "-outform", "DER", "-out", &out_s]);
        let (ok, text) = openssl(&args);
        assert!(ok, "{text}");
        std::fs::read(out).unwrap()
    };
    let apply = |csr: Vec<u8>| {
        ca.handle(
            &pb::CertificateApplication {
                request_id: 1,
                csr: csr.into(),
                materials: Some(materials()),
                enrollment_token: String::new(),
            }
            .into(),
            t0(),
        )
    };
    let cases: &[(&str, &[&str], Option<pb::ErrorCode>)] = &[
        (
            "p384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            None,
        ),
        ("ed", &["-newkey", "ed25519"], None),
        ("rsa2048", &["-newkey", "rsa:2048"], None),
        (
            "rsa1024",
            &["-newkey", "rsa:1024"],
            Some(pb::ErrorCode::WeakKey),
        ),
        (
            "k256",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
            Some(pb::ErrorCode::WeakKey),
        ),
    ];
    for (name, newkey, expected) in cases {
        let Some(Message::CertificateReply(reply)) = apply(csr(name, newkey)) else {
            panic!("no reply");
        };
        assert_eq!(
            reply.error.as_ref().map(|e| e.error_code()),
            *expected,
            "{name}: {:?}",
            reply.error
        );
        if expected.is_none() {
            let (ok, out) = verify(work.path(), &ca, &reply.certificate_chain[0], None);
            assert!(ok, "{name}: {out}");
        }
    }
}

/// An operator's root made by openssl, valid for `days`: (certificate, key) paths.
#[test]
fn an_intermediate_under_an_operators_root_issues_verifiable_chains() {
    let work = tempfile::tempdir().unwrap();
    let (root_cert, root_key) = operator_root(work.path(), "root", 36500);

    let dir = tempfile::tempdir().unwrap();
    let config = AuthorityConfig {
        root: RootMode::Intermediate {
            root_cert: root_cert.clone(),
            root_key,
        },
        ..config(dir.path())
    };
    let ca = CertificateAuthority::bootstrap(config, Box::new(policy()), t0()).unwrap();
    assert_eq!(
        ca.trust_anchor(),
        pem::parse(std::fs::read(&root_cert).unwrap())
            .unwrap()
            .contents()
    );
    let held = Agent::new("carol").certify(&ca, t0());
    assert_eq!(held.chain.len(), 2, "leaf and intermediate");
    let crl = ca.crl(t0() + days(1)).unwrap().der;
    let (ok, out) = verify(work.path(), &ca, held.der(), Some(&crl));
    assert!(ok, "{out}");
}

#[test]
fn an_operators_root_is_checked_before_anything_is_written() {
    let work = tempfile::tempdir().unwrap();
    let (root_cert, _) = operator_root(work.path(), "root", 36500);
    let (_, other_key) = operator_root(work.path(), "other", 36500);

    // The root certificate with another root's key: refused, and the data directory is not
    // even created.
    let dir = work.path().join("aca");
    let config = AuthorityConfig {
        root: RootMode::Intermediate {
            root_cert: root_cert.clone(),
            root_key: other_key.clone(),
        },
        ..config(&dir)
    };
    let err = CertificateAuthority::bootstrap(config, Box::new(policy()), t0()).unwrap_err();
    assert!(err.detail.contains("is not the key of the root"), "{err}");
    assert!(!dir.exists(), "nothing written");

    // The standalone server says so and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agw-aca"))
        .args(["--domain", DOMAIN, "--listen", "127.0.0.1:0"])
        .args(["--crl-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .arg("--root-cert")
        .arg(&root_cert)
        .arg("--root-key")
        .arg(&other_key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not the key of the root"), "{stderr}");
    assert!(!dir.exists(), "nothing written");
}

#[test]
fn an_intermediate_ends_with_its_root_and_certificates_allow_for_clock_skew() {
    let work = tempfile::tempdir().unwrap();
    let (root_cert, root_key) = operator_root(work.path(), "root", 400);
    let dir = work.path().join("aca");
    let config = AuthorityConfig {
        root: RootMode::Intermediate {
            root_cert: root_cert.clone(),
            root_key,
        },
        ..config(&dir)
    };
    let now = std::time::SystemTime::now();
    CertificateAuthority::bootstrap(config, Box::new(policy()), now).unwrap();
    let end = |pem_path: &std::path::Path| {
        let (ok, out) = openssl(&[
            "x509",
            "-noout",
            "-enddate",
            "-in",
            pem_path.to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
        out.trim().to_owned()
    };
    assert_eq!(end(&dir.join("ca.chain.pem")), end(&root_cert));

    // A certificate (and a self-signed authority) is valid from a few minutes before it was
    // issued: a relying party whose clock is a minute behind accepts it at once.
    let own = work.path().join("own");
    let ca =
        CertificateAuthority::bootstrap(common::config(&own), Box::new(policy()), now).unwrap();
    let held = Agent::new("dave").certify(&ca, now);
    let issued_at = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let not_before = held
        .not_before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(issued_at - not_before, 300);
    let leaf = file(work.path(), "dave.pem", pem("CERTIFICATE", held.der()));
    let minute_ago = (issued_at - 60).to_string();
    let (ok, out) = openssl(&[
        "verify",
        "-attime",
        &minute_ago,
        "-CAfile",
        own.join("trust-anchor.pem").to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(ok && out.contains(": OK"), "{out}");
}

#[test]
fn proofs_signed_by_openssl_verify_for_every_accepted_key() {
    let work = tempfile::tempdir().unwrap();
    let message = file(work.path(), "message", b"agw-renewal-v1\0proof bytes");
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "p256",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            &["dgst", "-sha256"],
        ),
        (
            "p384",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
            ],
            &["dgst", "-sha384"],
        ),
        (
            "rsa",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            &["dgst", "-sha256"],
        ),
        (
            "ed25519",
            &["genpkey", "-algorithm", "ED25519"],
            &["pkeyutl", "-rawin"],
        ),
    ];
    for (name, genkey, sign) in cases {
        let key = work.path().join(format!("{name}.key"));
        let spki = work.path().join(format!("{name}.spki"));
        let sig = work.path().join(format!("{name}.sig"));
        let (k, p, s, m) = (
            key.to_str().unwrap(),
            spki.to_str().unwrap(),
            sig.to_str().unwrap(),
            message.to_str().unwrap(),
        );
        let mut args = genkey.to_vec();
        args.extend(["-out", k]);
        assert!(openssl(&args).0);
        assert!(openssl(&["pkey", "-in", k, "-pubout", "-outform", "DER", "-out", p]).0);
        let mut args = sign.to_vec();
        if sign[0] == "dgst" {
            args.extend(["-sign", k, "-out", s, m]);
        } else {
            args.extend(["-sign", "-inkey", k, "-in", m, "-out", s]);
        }
        let (ok, out) = openssl(&args);
        assert!(ok, "{name}: {out}");

        let spki = std::fs::read(&spki).unwrap();
        let mut signature = std::fs::read(&sig).unwrap();
        let message = std::fs::read(&message).unwrap();
        assert!(agw_aca::keys::verify(&spki, &message, &signature), "{name}");
        assert!(
            !agw_aca::keys::verify(&spki, b"another message", &signature),
            "{name}"
        );
        let last = signature.len() - 1;
        signature[last] ^= 1;
        assert!(
            !agw_aca::keys::verify(&spki, &message, &signature),
            "{name}: tampered"
        );
    }
}
