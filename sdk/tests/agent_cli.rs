//! `agw-agent` against a real authority on loopback (the ACA protocol over TCP, as the gateway
//! serves it): enroll with the organisation's token, show, renew with the same key and with a
//! new one; the certificates it writes verify with openssl; a wrong token is refused and
//! writes nothing. And against a real registry (mutual TLS, as the gateway serves it):
//! register an A2A server agent's URL, refused a URL the gateway could not call, deregister.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{agent, json};

use std::{
    net::TcpListener,
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, SystemTime},
};

use agw_aca::{AuthorityConfig, CertificateAuthority, enrollment::operator_policy};
use agw_proto::identity::Domain;
use agw_rpc::{Endpoint, ServerLimits};

/// An authority for `travel.example` serving its protocol on loopback, over TLS (a gateway's
/// certificate) and plain TCP, as the gateway's ACA port does; its address and the token of
/// organisation `Acme`.
fn authority(dir: &Path) -> (Endpoint, String, String, tokio::runtime::Runtime) {
    let (policy, tokens) =
        operator_policy(&["Acme=payments".to_owned()], &[], &[], &dir.join("tokens")).unwrap();
    let token = tokens.token("Acme").unwrap().to_owned();
    let config = AuthorityConfig::new(
        Domain::new("travel.example").unwrap(),
        dir.join("aca"),
        "http://127.0.0.1:1/crl",
    );
    let authority = Arc::new(
        CertificateAuthority::bootstrap(
            config,
            Box::new(policy),
            SystemTime::now() - Duration::from_secs(60),
        )
        .unwrap(),
    );
    std::fs::write(
        dir.join("anchor.pem"),
        pem::encode(&pem::Pem::new(
            "CERTIFICATE",
            authority.trust_anchor().to_vec(),
        )),
    )
    .unwrap();
    let gateway =
        agw_proto::identity::GatewayId::parse("spiffe://travel.example/agw/agw-1").unwrap();
    let key = agw_sdk::certificates::AgentKey::generate().unwrap();
    let issued = authority
        .issue_gateway(
            &gateway,
            &key.csr(gateway.as_str()).unwrap(),
            SystemTime::now(),
        )
        .unwrap();
    let identity = agw_aca::tls::TlsIdentity {
        chain: issued.chain,
        key_pkcs8: key.to_pkcs8_der(),
        trust_anchor: authority.trust_anchor().to_vec(),
        crls: Default::default(),
        allow_unknown_revocation: true,
        renewable: None,
    };
    let tls = identity.est_server_config().unwrap();
    let runtime = agw_rpc::runtime("aca-test").unwrap();
    // The registry, over mutual TLS with the same gateway certificate.
    let checker = agw_aca::tls::CertificateChecker::new(authority.trust_anchor(), &[]).unwrap();
    let registry = agw_ars::Registry::open(
        agw_ars::RegistryConfig::new(Domain::new("travel.example").unwrap(), dir.join("ars")),
        checker,
    )
    .unwrap();
    let registry = agw_ars::owner::spawn(registry, |_| {}).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        dir.join("registry.addr"),
        listener.local_addr().unwrap().to_string(),
    )
    .unwrap();
    let served = Endpoint::tcp(
        runtime.handle(),
        listener,
        Some((
            Arc::new(identity.server_config().unwrap()),
            agw_aca::tls::peer_identity,
        )),
        Arc::new(
            move |request: &agw_proto::Message, caller: &agw_rpc::Caller, now| {
                let peer = caller.identity.as_deref()?;
                registry.serve(request, peer, now)
            },
        ),
        ServerLimits::default(),
    )
    .unwrap();
    // Serving as long as the runtime runs.
    std::mem::forget(served);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handler = Arc::new(
        move |request: &agw_proto::Message, caller: &agw_rpc::Caller, now| {
            authority.handle_from(request, caller.address, now)
        },
    );
    let endpoint = Endpoint::tcp_tls_or_plain(
        runtime.handle(),
        listener,
        (Arc::new(tls), agw_aca::tls::peer_identity),
        true,
        handler,
        ServerLimits::default(),
    )
    .unwrap();
    (endpoint, addr, token, runtime)
}

fn openssl_verifies(anchor: &Path, chain: &Path) -> bool {
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(anchor)
        .arg(chain)
        .output()
        .unwrap();
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK")
}

#[test]
fn an_agent_enrolls_renews_and_shows_its_certificate_from_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let (_endpoint, aca, token, _runtime) = authority(dir.path());
    let held = dir.path().join("alice");
    let token_file = dir.path().join("acme.token");
    let agent_id = "spiffe://travel.example/agent/alice";

    let anchor = dir.path().join("anchor.pem");
    // A wrong token (over plain TCP, which this authority still takes): refused, nothing
    // written.
    std::fs::write(&token_file, "f".repeat(64)).unwrap();
    let enroll = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "enroll",
            "--aca",
            &aca,
            "--agent",
            agent_id,
            "--organization",
            "Acme",
            "--token-file",
            token_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        agent(&held, &args)
    };
    let (ok, _, err) = enroll(&[]);
    assert!(!ok);
    assert!(err.contains("ENROLLMENT_UNAUTHENTICATED"), "{err}");
    // Over TLS, checking the gateway against another domain's name: refused before anything
    // is sent.
    let (ok, _, err) = agent(
        &held,
        &[
            "enroll",
            "--aca",
            &aca,
            "--ca",
            anchor.to_str().unwrap(),
            "--agent",
            "spiffe://elsewhere.example/agent/alice",
            "--organization",
            "Acme",
            "--token",
            "x",
        ],
    );
    assert!(!ok && err.contains("NotValidForName"), "{err}");
    assert!(!held.join("key.pem").exists());

    // The organisation's token: a certificate openssl verifies, the key private to its owner.
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let (ok, out, err) = enroll(&[
        "--ca",
        anchor.to_str().unwrap(),
        "--scope",
        "payments",
        "--skill",
        "book-hotel",
    ]);
    assert!(ok, "{err}");
    let first = json(&out);
    assert_eq!(first["identity"], agent_id);
    // The certificate, then its authority (here its own root).
    assert_eq!(first["chain_length"], 2);
    let chain = held.join("chain.pem");
    assert!(openssl_verifies(&anchor, &chain));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(held.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Enrolling again over a held key is refused: renew it instead.
    let (ok, _, err) = enroll(&[]);
    assert!(!ok && err.contains("renew"), "{err}");

    let (ok, out, _) = agent(&held, &["show"]);
    assert!(ok);
    assert!(out.contains(agent_id) && out.contains("days left"), "{out}");
    // The materials read back from the certificate itself, where the authority wrote them.
    assert!(
        out.contains("scopes     payments") && out.contains("skills     book-hotel"),
        "{out}"
    );

    // Renewal with the same key, then with a new one: new serials, same identity.
    let key_before = std::fs::read(held.join("key.pem")).unwrap();
    let (ok, out, err) = agent(&held, &["--json", "renew", "--aca", &aca]);
    assert!(ok, "{err}");
    let second = json(&out);
    assert_ne!(second["serial"], first["serial"]);
    assert_eq!(second["identity"], agent_id);
    assert_eq!(std::fs::read(held.join("key.pem")).unwrap(), key_before);
    let (ok, out, err) = agent(&held, &["--json", "renew", "--aca", &aca, "--new-key"]);
    assert!(ok, "{err}");
    let third = json(&out);
    assert_ne!(third["serial"], second["serial"]);
    assert_ne!(std::fs::read(held.join("key.pem")).unwrap(), key_before);
    assert!(openssl_verifies(&dir.path().join("anchor.pem"), &chain));
    let (_, out, _) = agent(&held, &["--json", "show"]);
    let shown = json(&out);
    assert_eq!(shown["serial"], third["serial"]);
    // Renewed certificates carry the same materials.
    assert_eq!(shown["materials"]["organization"], "Acme");
    assert_eq!(
        shown["materials"]["permission_scopes"],
        serde_json::json!(["payments"])
    );
}

#[test]
fn an_a2a_server_agent_registers_its_url_from_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let (_endpoint, aca, token, _runtime) = authority(dir.path());
    let registry = std::fs::read_to_string(dir.path().join("registry.addr")).unwrap();
    let held = dir.path().join("hotel");
    let anchor = dir.path().join("anchor.pem");
    let (ok, _, err) = agent(
        &held,
        &[
            "enroll",
            "--aca",
            &aca,
            "--ca",
            anchor.to_str().unwrap(),
            "--agent",
            "spiffe://travel.example/agent/hotel",
            "--organization",
            "Acme",
            "--token",
            &token,
        ],
    );
    assert!(ok, "{err}");
    let register = |url: &str, text_field: &str| {
        agent(
            &held,
            &[
                "--json",
                "register",
                "--registry",
                &registry,
                "--capability",
                "hotel booking",
                "--a2a-url",
                url,
                "--language",
                "es",
                "--text-field",
                text_field,
            ],
        )
    };
    // A URL the gateway could not call, a text field that is no JSON pointer: refused with
    // the reason.
    let (ok, _, err) = register("ftp://hotel.example/", "/note");
    assert!(
        !ok && err.contains("INVALID_FIELD") && err.contains("http://"),
        "{err}"
    );
    let (ok, _, err) = register("http://127.0.0.1:9/a2a", "note");
    assert!(
        !ok && err.contains("INVALID_FIELD") && err.contains("JSON pointer"),
        "{err}"
    );
    let (ok, out, err) = register("http://127.0.0.1:9/a2a", "/note");
    assert!(ok, "{err}");
    let stored = json(&out);
    assert_eq!(stored["agent"], "spiffe://travel.example/agent/hotel");
    assert_eq!(stored["a2a_url"], "http://127.0.0.1:9/a2a");
    assert_eq!(
        (
            stored["languages"][0].as_str(),
            stored["text_fields"][0].as_str()
        ),
        (Some("es"), Some("/note"))
    );
    // A protobuf schema from a file: one that is not a descriptor set is refused by the
    // registry, a file that is not there before anything is sent.
    let garbage = dir.path().join("garbage.pb");
    std::fs::write(&garbage, b"not a descriptor set").unwrap();
    for (file, why) in [
        (garbage.to_str().unwrap(), "descriptor_set"),
        ("/nonexistent/schema.pb", "/nonexistent/schema.pb"),
    ] {
        let (ok, _, err) = agent(
            &held,
            &[
                "register",
                "--registry",
                &registry,
                "--capability",
                "hotel booking",
                "--address",
                "127.0.0.1:7400",
                "--accept",
                "application/x-protobuf",
                "--descriptor-set",
                file,
                "--message-type",
                "travel.v1.Booking",
            ],
        );
        assert!(!ok && err.contains(why), "{err}");
    }
    let resource = stored["resource_id"].as_str().unwrap().to_owned();
    assert!(!resource.is_empty());
    let (ok, out, err) = agent(
        &held,
        &[
            "--json",
            "deregister",
            "--registry",
            &registry,
            "--resource-id",
            &resource,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(json(&out)["deregistered"], resource.as_str());
}
