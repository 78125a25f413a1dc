//! The load tool end to end, briefly: every relay it drives (this project's gateway in and
//! across gateways, nats-server, nginx's stream proxy) carries every pattern it can, and the
//! JSON report says what arrived. Throughput is never asserted here (benchmarks measure it);
//! that messages arrive, are counted, and have latencies is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn load(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_agw-loadtest"))
        .args([
            "--seconds",
            "1",
            "--warmup",
            "0.3",
            "--pairs",
            "2",
            "--json",
        ])
        .arg(&json)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agw-loadtest {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[1/1] delivered"),
        "no progress line: {stderr}"
    );
    // Teardown included: a clean run prints no panic (async-nats' handles once panicked
    // when dropped outside their runtime, a backtrace per agent).
    assert!(
        !stderr.contains("panicked"),
        "agw-loadtest {args:?}: {stderr}"
    );
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

fn assert_delivered(report: &Value, what: &str) {
    let delivered = report["delivered"].as_u64().unwrap();
    assert!(delivered > 0, "{what}: nothing delivered: {report}");
    assert!(
        report["latency_us"]["samples"].as_u64().unwrap() > 0,
        "{what}: no latency: {report}"
    );
    assert!(
        report["relay_cpu_seconds"].as_f64().is_some(),
        "{what}: {report}"
    );
    // The load generator's own CPU beside the relay's, and which of the two held the figure.
    assert!(
        report["load_cpu_seconds"].as_f64().is_some_and(|c| c > 0.0),
        "{what}: {report}"
    );
    assert!(
        ["relay", "load", "neither"].contains(&report["bound"].as_str().unwrap_or("")),
        "{what}: {report}"
    );
}

#[test]
fn every_pattern_through_one_gateway() {
    for pattern in ["stream", "ping-pong", "fan-in", "fan-out"] {
        let r = load(&["--pattern", pattern]);
        assert_delivered(&r, pattern);
        assert_eq!(r["nacked"], serde_json::json!({}), "{pattern}: {r}");
        let expected = if pattern == "ping-pong" {
            "round-trip"
        } else {
            "one-way"
        };
        assert_eq!(r["latency"], expected);
    }
}

#[test]
fn open_loop_at_a_rate_sends_on_schedule() {
    let r = load(&["--rate", "2000"]);
    assert_delivered(&r, "open loop");
    // Two senders at 2,000/s: about 4,000 in the one-second window, at most what 1.3 s of
    // schedule holds if the warm-up's sends land late (a closed loop would be ~1M).
    let delivered = r["delivered"].as_u64().unwrap();
    assert!((2_000..=6_000).contains(&delivered), "{r}");
}

#[test]
fn a_light_rate_is_timed_from_when_each_message_was_due() {
    // 100 messages/s per sender: a message is sent when it is due, so its latency is the
    // relay's, well under the 10 ms between messages (the tool once sent each message one
    // interval after its intended time, and every latency at a light rate read 10 ms more).
    let r = load(&["--rate", "100"]);
    assert_delivered(&r, "light open loop");
    let p50 = r["latency_us"]["p50"].as_f64().unwrap();
    assert!(p50 < 5_000.0, "p50 {p50} us: {r}");
}

#[test]
fn shards_and_gateways_in_every_scenario() {
    for (scenario, shards) in [
        ("same-shard", "2"),
        ("cross-shard", "2"),
        ("spread", "2"),
        ("half-cross", "2"),
        ("two-gateways", "1"),
        ("chain", "1"),
    ] {
        let r = load(&["--scenario", scenario, "--shards", shards, "--size", "1024"]);
        assert_delivered(&r, scenario);
        assert_eq!(r["scenario"], scenario);
    }
}

#[test]
fn the_gateway_translating_carries_what_needs_no_translation() {
    for mode in ["idle", "tagged", "understood"] {
        let r = load(&["--translation", mode]);
        assert_delivered(&r, mode);
        assert_eq!(r["nacked"], serde_json::json!({}), "{mode}: {r}");
    }
}

#[test]
fn translation_latency_is_measured_through_a_translating_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("latency.json");
    let out = Command::new(env!("CARGO_BIN_EXE_agw-translation-latency"))
        .args(["--messages", "200", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // 180 measured, half translated (every one checked to be), half not.
    assert_eq!(r["translated_us"]["samples"], 90, "{r}");
    assert_eq!(r["untranslated_us"]["samples"], 90, "{r}");
    assert_eq!(r["engine_own_us"]["samples"], 100, "{r}");
}

#[test]
fn the_peers_carry_the_same_patterns() {
    for (target, pattern) in [
        ("nats", "stream"),
        ("nats", "fan-out"),
        ("nginx", "stream"),
        ("nginx", "ping-pong"),
        ("agw-mqtt", "stream"),
        ("agw-mqtt", "ping-pong"),
        ("mosquitto", "stream"),
        ("agw-a2a", "ping-pong"),
        ("agw-a2a-grpc", "ping-pong"),
    ] {
        let r = load(&["--target", target, "--pattern", pattern]);
        assert_delivered(&r, &format!("{target} {pattern}"));
    }
}

/// Runs the tool with `args`, which it must refuse, saying `why` on stderr.
fn refused(args: &[&str], why: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_agw-loadtest"))
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(why), "{args:?}: {stderr}");
}

#[test]
fn what_a_relay_cannot_do_is_refused_plainly() {
    refused(
        &["--target", "nginx", "--pattern", "fan-out"],
        "cannot fan out",
    );
    refused(
        &["--scenario", "cross-shard", "--shards", "1"],
        "needs --shards 2",
    );
    refused(
        &["--scenario", "half-cross", "--shards", "1"],
        "half-cross needs --shards 2",
    );
    refused(
        &["--target", "agw-a2a", "--pattern", "stream"],
        "runs ping-pong",
    );
    refused(
        &["--target", "nats", "--translation", "idle"],
        "applies to --target agw",
    );
}
