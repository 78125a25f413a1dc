//! Permission scopes in the authorization policy, end to end in one gateway: the scopes an
//! agent's certificate grants (checked by the authority against its organisation's allowance
//! and recorded with the certificate) decide what the relay lets it send, from its first
//! message; an agent certified or revoked while the gateway runs counts at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

mod common;

use agw_controlplane::node::{Node, NodeConfig};
use agw_dataplane::authorization::{Action, Authorization, Pattern, Rule};
use agw_proto::{
    identity::Domain,
    pb::{self, ErrorCode},
};
use agw_sdk::agent::{AgentConnection, Incoming};
use bytes::Bytes;
use common::certify;

const WAIT: Duration = Duration::from_secs(5);

/// What `to` hears of a message from `from`: its ID delivered, or the NACK `from` gets.
fn outcome(
    from: &mut AgentConnection,
    to: &mut AgentConnection,
    to_id: &str,
) -> Result<u64, ErrorCode> {
    let id = from.send(to_id, Bytes::from_static(b"pay")).unwrap();
    match from.recv(Duration::from_millis(300)).unwrap() {
        Some(Incoming::Nack(n)) if n.message_id == id => return Err(n.reason()),
        _ => {}
    }
    match to.recv(WAIT).unwrap() {
        Some(Incoming::Message(m, _)) => Ok(m.message_id),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rules_on_permission_scopes_follow_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let domain = Domain::new("bank.example").unwrap();
    let bank = "spiffe://bank.example/agent/bank";
    // Only agents granted `payments` may message the bank.
    let policy = Authorization::new(
        domain.as_str(),
        vec![
            Rule {
                from: Pattern::parse("scope:payments").unwrap(),
                to: Pattern::parse(bank).unwrap(),
                action: Action::Allow,
            },
            Rule {
                from: Pattern::Any,
                to: Pattern::parse(bank).unwrap(),
                action: Action::Deny,
            },
        ],
        Action::Allow,
        Action::Allow,
    );
    let node = Node::start(NodeConfig {
        allow: vec!["Example=payments,travel".into()],
        authorization: policy,
        ..NodeConfig::on_loopback(domain, "agw-1", dir.path().join("data"))
    })
    .unwrap();
    let addr = node.addresses().agents;
    let teller = certify(&node, "bank", &[]);
    let mut to = AgentConnection::connect(addr, teller, WAIT).unwrap();
    let payer = certify(&node, "payer", &["payments"]);
    let tourist = certify(&node, "tourist", &["travel"]);
    let mut from_payer = AgentConnection::connect(addr, payer.clone(), WAIT).unwrap();
    let mut from_tourist = AgentConnection::connect(addr, tourist, WAIT).unwrap();

    assert!(outcome(&mut from_payer, &mut to, bank).is_ok());
    assert_eq!(
        outcome(&mut from_tourist, &mut to, bank),
        Err(ErrorCode::Unauthorized)
    );

    // Certified while the gateway runs: counts as soon as it can connect.
    let late = certify(&node, "late", &["payments"]);
    let mut from_late = AgentConnection::connect(addr, late, WAIT).unwrap();
    let start = Instant::now();
    loop {
        match outcome(&mut from_late, &mut to, bank) {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e, ErrorCode::Unauthorized);
                assert!(start.elapsed() < WAIT, "the late payer never got through");
            }
        }
    }

    // The payer's certificate revoked: its session is closed, and its scope gone with it.
    node.authority
        .revoke_identity(
            payer.agent.as_str(),
            pb::RevocationReason::AffiliationChanged as i32,
            SystemTime::now(),
        )
        .unwrap();
    let start = Instant::now();
    while node
        .authority
        .agent_scopes(SystemTime::now())
        .unwrap()
        .iter()
        .any(|(a, _)| a == payer.agent.as_str())
    {
        assert!(start.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(10));
    }
    node.stop();
}
