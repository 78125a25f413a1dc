//! `agw-agent` as a person at a shell uses it, against a whole gateway on loopback: two agents
//! enroll, one registers and listens, the other discovers it and sends it a message, and a
//! message to nobody is refused with its reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{agent, json};

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use agw_controlplane::node::{Node, NodeConfig};
use agw_proto::identity::Domain;

#[test]
fn two_agents_discover_and_talk_from_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::on_loopback(
        Domain::new("travel.example").unwrap(),
        "agw-1",
        dir.path().join("data"),
    ))
    .unwrap();
    let a = node.addresses();
    let (aca, registry, gateway) = (
        a.aca.to_string(),
        a.registry.to_string(),
        a.agents.to_string(),
    );
    let anchor = node.trust_anchor_path().to_str().unwrap().to_owned();
    let token = node.enrollment_token("Example").unwrap().to_owned();
    let (hotel, traveller) = (dir.path().join("hotel"), dir.path().join("traveller"));
    for (held, name) in [(&hotel, "hotel"), (&traveller, "traveller")] {
        let id = format!("spiffe://travel.example/agent/{name}");
        let (ok, _, err) = agent(
            held,
            &[
                "enroll",
                "--aca",
                &aca,
                "--ca",
                &anchor,
                "--agent",
                &id,
                "--organization",
                "Example",
                "--token",
                &token,
            ],
        );
        assert!(ok, "{err}");
    }
    // Without an address (or an A2A URL): refused before anything is sent.
    let register = [
        "register",
        "--registry",
        &registry,
        "--capability",
        "hotel booking",
    ];
    let (ok, _, err) = agent(&hotel, &register);
    assert!(!ok && err.contains("--address"), "{err}");
    let (ok, _, err) = agent(&hotel, &[&register[..], &["--address", &gateway]].concat());
    assert!(ok, "{err}");

    // The traveller finds the hotel.
    let (ok, out, err) = agent(
        &traveller,
        &[
            "--json",
            "discover",
            "--registry",
            &registry,
            "--capability",
            "hotel booking",
        ],
    );
    assert!(ok, "{err}");
    let found = json(&out);
    assert_eq!(found["found"], 1, "{found}");
    assert_eq!(
        found["agents"][0]["agent"],
        "spiffe://travel.example/agent/hotel"
    );

    // The hotel listens; the traveller's message arrives and is acknowledged.
    let mut listen = Command::new(env!("CARGO_BIN_EXE_agw-agent"))
        .arg("--dir")
        .arg(&hotel)
        .args(["--json", "listen", "--gateway", &gateway, "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(listen.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("listening at"), "{first}");
    let (ok, out, err) = agent(
        &traveller,
        &[
            "--json",
            "send",
            "--gateway",
            &gateway,
            "--to",
            "spiffe://travel.example/agent/hotel",
            "--text",
            "a room for two, please",
            "--session",
            "7",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        json(&out)["acknowledged"],
        "spiffe://travel.example/agent/hotel"
    );
    let heard = json(&lines.next().unwrap().unwrap());
    assert_eq!(heard["from"], "spiffe://travel.example/agent/traveller");
    assert_eq!(heard["text"], "a room for two, please");
    assert_eq!(heard["session"], 7);
    assert!(listen.wait().unwrap().success());

    // Nobody there: the gateway's refusal, with its reason.
    let (ok, _, err) = agent(
        &traveller,
        &[
            "send",
            "--gateway",
            &gateway,
            "--to",
            "spiffe://travel.example/agent/nobody",
            "--text",
            "hello?",
        ],
    );
    assert!(!ok);
    assert!(err.contains("NO_ROUTE"), "{err}");
}
