//! The demo end to end, as a new user runs it: three domains, a registration, a discovery
//! from the third domain, and a conversation through three relays; then the draft's travel
//! scenario (a task across three domains, one subtask moved); then an MQTT agent asking
//! an A2A agent two domains away, whose task a native agent completes; last an English and a
//! Spanish agent of two domains reading each other through Apertium (the test command
//! installs apertium-apy and apertium-eng-spa).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_demo_books_a_room_across_three_domains() {
    let out = Command::new(env!("CARGO_BIN_EXE_agw-demo"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "registered as ars:a.example:",
        "found spiffe://a.example/agent/hotel",
        "3 gateways crossed",
        "traveller received",
        "took flight and went offline",
        "spiffe://b.example/agent/hotel asks \"Double or twin beds?\"",
        "recorded hotel: {\"beds\":\"twin, please\"",
        "recorded visa: {\"visa\":\"VISA-PT-0001\"}",
        "recorded flight: {\"airline\":",
        "the reply on its response topic: \"which night?\"",
        "host received \"booked: room 42 for friday\"",
        "recepcion (es) received (es) \"Me gustaría reservar",
        "translated from en into es by apertium",
        "tourist (en) received (en) \"The room is reserved.",
        "== done",
    ] {
        assert!(text.contains(step), "{step:?} missing from:\n{text}");
    }
}
