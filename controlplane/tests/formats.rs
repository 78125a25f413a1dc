//! Format conversion through a whole gateway (docs/protocols.md, formats): an agent that takes
//! protobuf registers its schema (a descriptor set compiled from .proto text by protox) and the
//! media types it accepts; JSON sent to it arrives as protobuf bytes, its protobuf answers
//! arrive as JSON at an agent that accepts JSON, an MQTT 5 client's JSON (mosquitto_pub) too,
//! and what cannot be converted is NACKed FORMAT_UNSUPPORTED, never delivered garbled. No
//! translation engine is configured: conversion needs none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::Stdio,
    sync::Arc,
    time::{Duration, SystemTime},
};

use agw_controlplane::node::{Node, NodeConfig};
use agw_demo as demo;
use agw_proto::{
    identity::Domain,
    pb::{self, ErrorCode},
};
use agw_sdk::agent::{AgentConnection, Credentials, Incoming};
use bytes::Bytes;
use common::{message, next};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

const BOOKING: &str = r#"
syntax = "proto3";
package travel.v1;
message Booking {
  string room = 1;
  int32 nights = 2;
  repeated string extras = 3;
}
"#;

/// The descriptor set of [`BOOKING`], as `protoc --descriptor_set_out` would write it.
fn schema(dir: &std::path::Path) -> Vec<u8> {
    std::fs::write(dir.join("booking.proto"), BOOKING).unwrap();
    protox::Compiler::new([dir])
        .unwrap()
        .open_file("booking.proto")
        .unwrap()
        .encode_file_descriptor_set()
}

fn register(node: &Node, who: &Credentials, accepts: &[&str], schema: &[u8], message_type: &str) {
    let request = pb::RegisterRequest {
        request_id: 1,
        profile: Some(pb::AgentProfile {
            agent: who.agent.to_string(),
            capabilities: vec!["booking".into()],
            protocols: vec![pb::Protocol::Native as i32],
            accepts: accepts.iter().map(|a| (*a).to_owned()).collect(),
            descriptor_set: Bytes::copy_from_slice(schema),
            message_type: message_type.into(),
            address: "unused".into(),
            ..Default::default()
        }),
        certificate_chain: who.certificate.chain.clone(),
    };
    let registrant = who.agent.to_string();
    node.registry
        .ask(move |r| r.register(&request, Some(&registrant), SystemTime::now()))
        .unwrap()
        .unwrap();
}

fn structured(to: &Credentials, content_type: &str, payload: &[u8]) -> pb::AgentMessage {
    pb::AgentMessage {
        destination: to.agent.to_string(),
        content_type: content_type.into(),
        payload: Bytes::copy_from_slice(payload),
        ..Default::default()
    }
}

fn nack(conn: &mut AgentConnection, id: u64) -> pb::Nack {
    match next(conn) {
        Incoming::Nack(n) if n.message_id == id => n,
        other => panic!("{other:?} instead of a NACK of {id}"),
    }
}

#[test]
fn json_and_protobuf_agents_read_each_other_by_the_schema_registered() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::on_loopback(
        Domain::new("a.example").unwrap(),
        "a1",
        dir.path().join("data"),
    ))
    .unwrap();
    let descriptors = schema(dir.path());
    // hotel takes protobuf (travel.v1.Booking); web takes JSON.
    let hotel = demo::certify(&node, "hotel").unwrap();
    let web = demo::certify(&node, "web").unwrap();
    register(
        &node,
        &hotel,
        &["application/x-protobuf"],
        &descriptors,
        "travel.v1.Booking",
    );
    register(&node, &web, &["application/json"], &[], "");
    // A schema that does not parse, or lacks the message named, is refused at registration.
    for (set, name, why) in [
        (
            &b"not a descriptor set"[..],
            "travel.v1.Booking",
            "descriptor_set",
        ),
        (
            &descriptors[..],
            "travel.v1.Flight",
            "not in the descriptor set",
        ),
    ] {
        let request = pb::RegisterRequest {
            request_id: 2,
            profile: Some(pb::AgentProfile {
                agent: web.agent.to_string(),
                capabilities: vec!["booking".into()],
                accepts: vec!["application/x-protobuf".into()],
                descriptor_set: Bytes::copy_from_slice(set),
                message_type: name.into(),
                address: "unused".into(),
                ..Default::default()
            }),
            certificate_chain: web.certificate.chain.clone(),
        };
        let registrant = web.agent.to_string();
        let refused = node
            .registry
            .ask(move |r| r.register(&request, Some(&registrant), SystemTime::now()))
            .unwrap()
            .unwrap_err();
        assert!(refused.to_string().contains(why), "{refused}");
    }
    let connect = |who: &Arc<Credentials>| {
        AgentConnection::connect(node.dataplane.local_addr(), who.clone(), WAIT).unwrap()
    };
    let (mut ch, mut cw) = (connect(&hotel), connect(&web));

    // JSON in, protobuf bytes out, as protobuf encodes the fields (1: room, 2: nights,
    // 3: extras).
    let order = json!({ "room": "twin", "nights": 2, "extras": ["breakfast"] });
    cw.send_message(structured(
        &hotel,
        "application/json",
        order.to_string().as_bytes(),
    ))
    .unwrap();
    let got = message(&mut ch);
    assert_eq!(
        got.content_type,
        "application/x-protobuf; messageType=travel.v1.Booking"
    );
    let mut expected = vec![0x0a, 4];
    expected.extend_from_slice(b"twin");
    expected.extend_from_slice(&[0x10, 2, 0x1a, 9]);
    expected.extend_from_slice(b"breakfast");
    assert_eq!(&got.payload[..], &expected[..]);

    // Protobuf in (named by its media type), JSON out, found in the sender's schema.
    let mut answer = vec![0x0a, 6];
    answer.extend_from_slice(b"double");
    answer.extend_from_slice(&[0x10, 3]);
    ch.send_message(structured(
        &web,
        "application/x-protobuf; messageType=travel.v1.Booking",
        &answer,
    ))
    .unwrap();
    let got = message(&mut cw);
    assert_eq!(got.content_type, "application/json");
    let back: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    // proto3 JSON: fields at their default (the empty extras) are left out.
    assert_eq!(back, json!({ "room": "double", "nights": 3 }));

    // What cannot be converted is refused with the reason, never delivered garbled.
    let id = cw
        .send_message(structured(&hotel, "application/json", br#"{"room": 5}"#))
        .unwrap();
    let n = nack(&mut cw, id);
    assert_eq!(n.reason(), ErrorCode::FormatUnsupported);
    assert!(n.detail.contains("not a travel.v1.Booking"), "{}", n.detail);
    let id = ch
        .send_message(structured(&web, "application/x-protobuf", &answer))
        .unwrap();
    let n = nack(&mut ch, id);
    assert_eq!(n.reason(), ErrorCode::FormatUnsupported);
    assert!(n.detail.contains("messageType"), "{}", n.detail);
    let id = ch
        .send_message(structured(
            &web,
            "application/x-protobuf; messageType=travel.v1.Unknown",
            &answer,
        ))
        .unwrap();
    assert!(nack(&mut ch, id).detail.contains("no registered schema"));
    // Text and formats the destination accepts pass as they are.
    cw.send_message(structured(&hotel, "text/plain", b"hello"))
        .unwrap();
    assert_eq!(&message(&mut ch).payload[..], b"hello");

    // An MQTT 5 client's JSON (mosquitto_pub, its content type a PUBLISH property) reaches
    // the protobuf agent as protobuf; its PUBACK waits for hotel's ACK.
    let guest = common::certify(&node, "guest", &[]);
    let files = common::pem_files(dir.path(), &dir.path().join("data"), &guest, "guest");
    let port = node.addresses().agents.port();
    let publish = common::mosquitto("mosquitto_pub", port, &files, "mqttv5")
        .args(["-q", "1", "-t", &format!("agw/to/{}", hotel.agent)])
        .args(["-D", "publish", "content-type", "application/json"])
        .args(["-m", r#"{"room":"suite","nights":1}"#])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let got = message(&mut ch);
    let mut expected = vec![0x0a, 5];
    expected.extend_from_slice(b"suite");
    expected.extend_from_slice(&[0x10, 1]);
    assert_eq!(&got.payload[..], &expected[..]);
    assert_eq!(got.source, guest.agent.as_str());
    ch.ack(&got).unwrap();
    let out = publish.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");

    let stats = node.translation().stats.to_wire();
    assert_eq!(
        (stats.converted, stats.conversion_failed),
        (3, 3),
        "{stats:?}"
    );
    drop((ch, cw));
    node.stop();
}
