//! Natural-language translation through whole gateways (docs/translation.md): Apertium's APy
//! service (a real one, started on loopback) translating English into Spanish for an agent of
//! another domain; what is left alone; detection; order; an engine that is down or slow, by
//! both policies, with other traffic unaffected; and the OpenAI-compatible and LibreTranslate
//! clients against small real HTTP servers on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agw_controlplane::{
    node::{Node, NodeConfig},
    translation::{EngineConfig, EngineKind, OnFailure, TranslationConfig},
};
use agw_dataplane::routing::Route;
use agw_demo as demo;
use agw_proto::{
    identity::Domain,
    pb::{self, ErrorCode},
};
use agw_sdk::agent::{AccessOptions, AgentConnection, Credentials, Incoming};
use bytes::Bytes;
use common::{Apy, message, next};

const WAIT: Duration = Duration::from_secs(10);

fn text(to: &Credentials, language: &str, session: u64, words: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        destination: to.agent.to_string(),
        session_id: session,
        content_type: "text/plain; charset=utf-8".into(),
        language: language.into(),
        payload: Bytes::from(words.to_owned()),
        ..Default::default()
    }
}

fn speaking(languages: &[&str], originals: bool) -> AccessOptions {
    AccessOptions {
        languages: languages.iter().map(|l| (*l).to_owned()).collect(),
        translation_originals: originals,
    }
}

fn connect(node: &Node, who: &Arc<Credentials>, options: AccessOptions) -> AgentConnection {
    AgentConnection::connect_with(node.dataplane.local_addr(), who.clone(), WAIT, options).unwrap()
}

fn translating(
    engine: EngineKind,
    url: &str,
    on_failure: OnFailure,
    deadline_ms: u64,
) -> TranslationConfig {
    TranslationConfig {
        on_failure,
        deadline_ms,
        engines: vec![EngineConfig {
            model: Some("translator-1".into()),
            ..EngineConfig::new(engine, url)
        }],
        ..TranslationConfig::formats_only()
    }
}

/// One gateway of `a.example` translating with `config`, and its agents x (English, asks for
/// nothing) and y (understands Spanish only, wants originals).
fn one_gateway(
    dir: &std::path::Path,
    config: TranslationConfig,
) -> (Node, Arc<Credentials>, Arc<Credentials>) {
    let node = Node::start(NodeConfig {
        translation: Some(config),
        ..NodeConfig::on_loopback(Domain::new("a.example").unwrap(), "a1", dir.to_owned())
    })
    .unwrap();
    let x = demo::certify(&node, "x").unwrap();
    let y = demo::certify(&node, "y").unwrap();
    (node, x, y)
}

#[test]
fn english_becomes_spanish_on_its_way_to_an_agent_of_another_domain() {
    let apy = Apy::start();
    let dir = tempfile::tempdir().unwrap();
    let url = apy.url.clone();
    // Domain b's gateway translates for its agents; a's does not.
    let nodes = demo::chain_with(dir.path(), &["a", "b"], 1, &move |name, config| {
        if name == "b" {
            config.translation = Some(TranslationConfig::apertium(&url));
        }
    })
    .unwrap();
    let (ga, gb) = (&nodes[0], &nodes[1]);
    let x = demo::certify(ga, "x").unwrap();
    let y = demo::certify(gb, "y").unwrap();
    let mut cx = connect(ga, &x, speaking(&["en"], false));
    let mut cy = connect(gb, &y, speaking(&["es"], true));
    let start = Instant::now();
    while ga.dataplane.route_of(y.agent.as_str()) != Some(Route::Peer { peer: 0 }) {
        assert!(start.elapsed() < WAIT, "a never learnt y's route");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The relay link from a to b may still be coming up (a message is NACKed UNREACHABLE
    // meanwhile): a greeting in Spanish, needing no translation, until one arrives.
    loop {
        assert!(start.elapsed() < WAIT, "the relay link never came up");
        cx.send_message(text(&y, "es", 0, "Hola")).unwrap();
        if let Some(Incoming::Message(..)) = cy.recv(Duration::from_millis(300)).unwrap() {
            break;
        }
        while let Some(Incoming::Nack(n)) = cx.recv(Duration::from_millis(10)).unwrap() {
            assert_eq!(n.reason(), ErrorCode::Unreachable);
        }
    }
    // A greeting sent twice may arrive twice.
    while cy.recv(Duration::from_millis(200)).unwrap().is_some() {}

    // Tagged English: translated as APy itself translates it, and said so.
    let english = "Book a twin room for two nights.";
    let id = cx.send_message(text(&y, "en", 7, english)).unwrap();
    let got = message(&mut cy);
    let spanish = apy.translate("eng|spa", english);
    assert_ne!(spanish, english);
    assert_eq!(String::from_utf8_lossy(&got.payload), spanish);
    assert_eq!(
        (got.message_id, got.session_id, got.language.as_str()),
        (id, 7, "es")
    );
    let t = got.translation.clone().unwrap();
    assert_eq!(
        (t.from.as_str(), t.to.as_str(), t.engine.as_str(), t.failed),
        ("en", "es", "apertium", false)
    );
    assert_eq!(t.original, english.as_bytes(), "y asked for originals");
    cy.ack(&got).unwrap();
    assert!(matches!(next(&mut cx), Incoming::Ack(a) if a.message_id == id));

    // Already Spanish: delivered byte for byte.
    let already = text(&y, "es-ES", 7, "Reserva una habitación doble.");
    cx.send_message(already.clone()).unwrap();
    let got = message(&mut cy);
    assert_eq!(
        (got.payload, got.language, got.translation),
        (already.payload, already.language, None)
    );

    // No language field: detected as English, translated.
    let untagged = "Where is the nearest train station? I have to leave early tomorrow morning.";
    cx.send_message(text(&y, "", 0, untagged)).unwrap();
    let got = message(&mut cy);
    assert_eq!(got.translation.unwrap().from, "en");
    assert_eq!(
        String::from_utf8_lossy(&got.payload),
        apy.translate("eng|spa", untagged)
    );

    // Data and code are never touched, English or not.
    let data = pb::AgentMessage {
        content_type: "application/json".into(),
        payload: Bytes::from_static(br#"{"room":"twin","note":"two nights"}"#),
        ..text(&y, "en", 0, "")
    };
    cx.send_message(data.clone()).unwrap();
    let got = message(&mut cy);
    assert_eq!((got.payload, got.translation), (data.payload, None));

    // A conversation keeps its order through the pool: messages that need no translation
    // wait behind those that do.
    let lines = [
        ("en", "The first message of the day."),
        ("es", "El segundo mensaje."),
        ("en", "The third message is here."),
        ("es", "El cuarto mensaje."),
        ("en", "Good night."),
    ];
    let mut sent = Vec::new();
    for (language, words) in lines {
        sent.push(cx.send_message(text(&y, language, 9, words)).unwrap());
    }
    for ((id, (language, words)), got) in sent
        .iter()
        .zip(lines)
        .zip((0..lines.len()).map(|_| message(&mut cy)))
    {
        assert_eq!(got.message_id, *id);
        match language {
            "en" => assert_eq!(
                String::from_utf8_lossy(&got.payload),
                apy.translate("eng|spa", words)
            ),
            _ => assert_eq!(got.payload, words.as_bytes()),
        }
    }

    // Operators see it.
    let stats = gb.translation().stats.to_wire();
    let en_es = stats
        .translated
        .iter()
        .find(|c| (c.from.as_str(), c.to.as_str(), c.engine.as_str()) == ("en", "es", "apertium"))
        .unwrap();
    assert_eq!(en_es.count, 5, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert!(
        stats.added_p99_us > 0 && stats.engine_p50_us > 0,
        "{stats:?}"
    );
    drop((cx, cy));
    for n in nodes {
        n.stop();
    }
}

/// A loopback HTTP server answering each request with `answer(request body)` after `delay`;
/// records what it was asked (headers and body).
struct Engine {
    url: String,
    asked: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Engine {
    fn start(delay: Duration, answer: fn(&serde_json::Value) -> serde_json::Value) -> Engine {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut head = String::new();
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let request: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    std::thread::sleep(delay);
                    let reply = answer(&request).to_string();
                    log.lock().unwrap().push((head, request));
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                });
            }
        });
        Engine { url, asked }
    }
}

fn chat_completion(request: &serde_json::Value) -> serde_json::Value {
    let text = request["messages"][1]["content"]
        .as_str()
        .unwrap_or_default();
    serde_json::json!({ "choices": [{ "message": { "role": "assistant", "content": format!("<es>{text}</es>") } }] })
}

fn libretranslate(request: &serde_json::Value) -> serde_json::Value {
    let text = request["q"].as_str().unwrap_or_default();
    serde_json::json!({ "translatedText": format!("<{}>{text}</{}>", request["target"].as_str().unwrap_or("?"), request["source"].as_str().unwrap_or("?")) })
}

#[test]
fn the_openai_compatible_and_libretranslate_clients_ask_as_their_apis_say() {
    // An operator's LLM behind an OpenAI-compatible endpoint, its key in a file.
    let llm = Engine::start(Duration::ZERO, chat_completion);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("llm.key");
    std::fs::write(&key, "sk-test-123\n").unwrap();
    let mut config = translating(EngineKind::OpenAi, &llm.url, OnFailure::Nack, 2_000);
    config.engines[0].api_key_file = Some(key);
    let (node, x, y) = one_gateway(dir.path(), config);
    let mut cx = connect(&node, &x, AccessOptions::default());
    let mut cy = connect(&node, &y, speaking(&["zh"], false));
    cx.send_message(text(&y, "en", 1, "Book a twin room"))
        .unwrap();
    let got = message(&mut cy);
    assert_eq!(
        String::from_utf8_lossy(&got.payload),
        "<es>Book a twin room</es>"
    );
    let t = got.translation.unwrap();
    assert_eq!(
        (t.from.as_str(), t.to.as_str(), t.engine.as_str()),
        ("en", "zh", "openai")
    );
    assert!(t.original.is_empty(), "y did not ask for originals");
    let (head, request) = llm.asked.lock().unwrap()[0].clone();
    assert!(
        head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer sk-test-123\r\n"),
        "{head}"
    );
    assert_eq!(request["model"], "translator-1");
    assert_eq!(request["messages"][0]["role"], "system");
    assert!(
        request["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("from English into Chinese")
    );
    assert_eq!(
        request["messages"][1],
        serde_json::json!({ "role": "user", "content": "Book a twin room" })
    );
    // The same text again comes from the cache.
    cx.send_message(text(&y, "en", 1, "Book a twin room"))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&message(&mut cy).payload),
        "<es>Book a twin room</es>"
    );
    assert_eq!(llm.asked.lock().unwrap().len(), 1);
    assert_eq!(node.translation().stats.to_wire().cache_hits, 1);
    drop((cx, cy));
    node.stop();

    // LibreTranslate, asked for A2A text parts: only the text parts are translated.
    let libre = Engine::start(Duration::ZERO, libretranslate);
    let dir = tempfile::tempdir().unwrap();
    let config = translating(
        EngineKind::LibreTranslate,
        &libre.url,
        OnFailure::Nack,
        2_000,
    );
    let (node, x, y) = one_gateway(dir.path(), config);
    let mut cx = connect(&node, &x, AccessOptions::default());
    let mut cy = connect(&node, &y, speaking(&["es"], false));
    let parts = serde_json::json!([
        { "text": "Two nights, please." },
        { "data": { "nights": 2 } },
        { "text": "SELECT * FROM rooms", "mediaType": "application/sql" },
    ]);
    let message_parts = pb::AgentMessage {
        content_type: agw_dataplane::a2a::PARTS_TYPE.into(),
        payload: Bytes::from(parts.to_string()),
        ..text(&y, "en", 0, "")
    };
    cx.send_message(message_parts).unwrap();
    let got = message(&mut cy);
    let back: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(back[0]["text"], "<es>Two nights, please.</en>");
    assert_eq!(back[1], parts[1]);
    assert_eq!(back[2], parts[2]);
    let (head, request) = libre.asked.lock().unwrap()[0].clone();
    assert!(
        head.starts_with("POST /v1/translate HTTP/1.1\r\n"),
        "{head}"
    );
    assert_eq!(
        request,
        serde_json::json!({ "q": "Two nights, please.", "source": "en", "target": "es", "format": "text" })
    );
    drop((cx, cy));
    node.stop();
}

#[test]
fn an_engine_that_is_down_or_slow_costs_a_nack_or_a_mark_and_nothing_else() {
    // Down: nothing listens at the engine's address.
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    for policy in [OnFailure::Nack, OnFailure::Deliver] {
        let dir = tempfile::tempdir().unwrap();
        let config = translating(EngineKind::LibreTranslate, &closed, policy, 2_000);
        let (node, x, y) = one_gateway(dir.path(), config);
        let mut cx = connect(&node, &x, AccessOptions::default());
        let mut cy = connect(&node, &y, speaking(&["es"], false));
        let id = cx
            .send_message(text(&y, "en", 3, "Book a twin room"))
            .unwrap();
        match policy {
            OnFailure::Nack => match next(&mut cx) {
                Incoming::Nack(n) => {
                    assert_eq!(
                        (n.message_id, n.reason()),
                        (id, ErrorCode::TranslationFailed)
                    );
                    assert!(n.detail.contains("libretranslate"), "{}", n.detail);
                }
                other => panic!("{other:?}"),
            },
            OnFailure::Deliver => {
                let got = message(&mut cy);
                assert_eq!(got.payload, "Book a twin room".as_bytes());
                let t = got.translation.unwrap();
                assert!(
                    t.failed && t.to == "es" && t.engine == "libretranslate",
                    "{t:?}"
                );
            }
        }
        // What needs no translation still arrives.
        cx.send_message(text(&y, "es", 4, "Hola")).unwrap();
        assert_eq!(message(&mut cy).payload, "Hola".as_bytes());
        assert_eq!(node.translation().stats.to_wire().failed, 1);
        drop((cx, cy));
        node.stop();
    }

    // Slow: the engine answers after 3 s, the deadline is 300 ms. Meanwhile a third agent
    // (no languages) hears from x while the translation is still pending: the shard never
    // waits on the pool.
    let slow = Engine::start(Duration::from_secs(3), libretranslate);
    let dir = tempfile::tempdir().unwrap();
    let config = translating(EngineKind::LibreTranslate, &slow.url, OnFailure::Nack, 300);
    let (node, x, y) = one_gateway(dir.path(), config);
    let z = demo::certify(&node, "z").unwrap();
    let mut cx = connect(&node, &x, AccessOptions::default());
    let _cy = connect(&node, &y, speaking(&["es"], false));
    let mut cz = connect(&node, &z, AccessOptions::default());
    let id = cx
        .send_message(text(&y, "en", 5, "Book a twin room"))
        .unwrap();
    cx.send_message(text(&z, "en", 0, "Are you there?"))
        .unwrap();
    assert_eq!(message(&mut cz).payload, "Are you there?".as_bytes());
    let pending = node.translation().stats.to_wire();
    assert_eq!(pending.failed, 0, "{pending:?}");
    match next(&mut cx) {
        Incoming::Nack(n) => {
            assert_eq!(
                (n.message_id, n.reason()),
                (id, ErrorCode::TranslationFailed)
            );
            assert!(n.detail.contains("no answer within"), "{}", n.detail);
        }
        other => panic!("{other:?}"),
    }
    drop((cx, cz));
    node.stop();
}

/// Registers `who` with a profile naming `languages` and `text_fields`.
fn register(node: &Node, who: &Credentials, languages: &[&str], text_fields: &[&str]) {
    let request = pb::RegisterRequest {
        request_id: 1,
        profile: Some(pb::AgentProfile {
            agent: who.agent.to_string(),
            capabilities: vec!["reception".into()],
            protocols: vec![pb::Protocol::Native as i32],
            languages: languages.iter().map(|l| (*l).to_owned()).collect(),
            text_fields: text_fields.iter().map(|f| (*f).to_owned()).collect(),
            address: "unused".into(),
            ..Default::default()
        }),
        certificate_chain: who.certificate.chain.clone(),
    };
    let registrant = who.agent.to_string();
    node.registry
        .ask(move |r| r.register(&request, Some(&registrant), std::time::SystemTime::now()))
        .unwrap()
        .unwrap();
}

#[test]
fn a_profile_names_languages_and_json_text_fields_and_the_operator_switches_it_off() {
    let libre = Engine::start(Duration::ZERO, libretranslate);
    let dir = tempfile::tempdir().unwrap();
    let mut config = translating(
        EngineKind::LibreTranslate,
        &libre.url,
        OnFailure::Nack,
        2_000,
    );
    config.off = vec!["spiffe://a.example/agent/quiet".into()];
    let (node, x, y) = one_gateway(dir.path(), config);
    // y names no language at access: its profile says Spanish, and which JSON fields are
    // natural language.
    register(&node, &y, &["es"], &["/note", "/extras"]);
    let mut cx = connect(&node, &x, AccessOptions::default());
    let mut cy = connect(&node, &y, AccessOptions::default());
    let order = serde_json::json!({
        "room": "twin", "nights": 2, "note": "Near the lift, please.",
        "extras": ["breakfast", 3], "code": "B-17",
    });
    cx.send_message(pb::AgentMessage {
        content_type: "application/json".into(),
        payload: Bytes::from(order.to_string()),
        ..text(&y, "en", 0, "")
    })
    .unwrap();
    let got = message(&mut cy);
    let back: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(
        back,
        serde_json::json!({
            "room": "twin", "nights": 2, "note": "<es>Near the lift, please.</en>",
            "extras": ["<es>breakfast</en>", 3], "code": "B-17",
        })
    );
    assert_eq!(got.translation.unwrap().to, "es");

    // The operator switched translation off for agent quiet: what it sends arrives as sent.
    let quiet = demo::certify(&node, "quiet").unwrap();
    let mut cq = connect(&node, &quiet, AccessOptions::default());
    cq.send_message(text(&y, "en", 0, "Hello")).unwrap();
    let got = message(&mut cy);
    assert_eq!((got.payload, got.translation), (Bytes::from("Hello"), None));
    let stats = node.translation().stats.to_wire();
    assert_eq!(
        (stats.unchanged, libre.asked.lock().unwrap().len()),
        (1, 2),
        "{stats:?}"
    );
    drop((cx, cy, cq));
    node.stop();
}

#[test]
fn an_mqtt_agent_whose_profile_says_spanish_reads_translations_with_their_user_properties() {
    let libre = Engine::start(Duration::ZERO, libretranslate);
    let dir = tempfile::tempdir().unwrap();
    let config = translating(
        EngineKind::LibreTranslate,
        &libre.url,
        OnFailure::Nack,
        2_000,
    );
    let (node, x, y) = one_gateway(dir.path(), config);
    register(&node, &y, &["es"], &[]);
    let data = dir.path().to_owned();
    let files = common::pem_files(dir.path(), &data, &y, "y");
    // y is mosquitto_sub over MQTT 5, subscribed to its inbox.
    let port = node.addresses().agents.port();
    let subscribe = common::mosquitto("mosquitto_sub", port, &files, "mqttv5")
        .args([
            "-q",
            "1",
            "-t",
            "agw/inbox/#",
            "-C",
            "1",
            "-W",
            "20",
            "-F",
            "%p|%P",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut cx = connect(&node, &x, AccessOptions::default());
    // Until y's MQTT session is up, x's messages are NACKed: send until one is ACKed.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < WAIT,
            "mosquitto_sub never got x's message"
        );
        let id = cx
            .send_message(text(&y, "en", 0, "Book a twin room"))
            .unwrap();
        match cx.recv(Duration::from_millis(500)).unwrap() {
            Some(Incoming::Ack(a)) if a.message_id == id => break,
            Some(Incoming::Nack(_)) => std::thread::sleep(Duration::from_millis(100)),
            _ => {}
        }
    }
    let out = subscribe.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    let (payload, properties) = printed.trim().split_once('|').unwrap();
    assert_eq!(payload, "<es>Book a twin room</en>", "{printed}");
    for property in [
        "language:es",
        "translated-from:en",
        "translation-engine:libretranslate",
    ] {
        assert!(
            properties.contains(property),
            "{property} missing: {printed}"
        );
    }
    drop(cx);
    node.stop();
}

#[test]
fn a_full_translation_queue_refuses_with_overloaded_and_the_rest_flows() {
    // An engine that takes 30 s, one lane: the pool's queue (4,096) fills behind it.
    let stuck = Engine::start(Duration::from_secs(30), libretranslate);
    let dir = tempfile::tempdir().unwrap();
    let mut config = translating(
        EngineKind::LibreTranslate,
        &stuck.url,
        OnFailure::Nack,
        60_000,
    );
    config.lanes = 1;
    let (node, x, y) = one_gateway(dir.path(), config);
    let z = demo::certify(&node, "z").unwrap();
    let mut cx = connect(&node, &x, AccessOptions::default());
    let _cy = connect(&node, &y, speaking(&["es"], false));
    let mut cz = connect(&node, &z, AccessOptions::default());
    let total = agw_dataplane::translation::QUEUE + 200;
    let mut first = 0;
    for i in 0..total {
        let id = cx
            .send_message(text(&y, "en", 1, &format!("Message number {i}")))
            .unwrap();
        if i == 0 {
            first = id;
        }
    }
    let mut overloaded = 0;
    while let Some(event) = cx.recv(Duration::from_millis(500)).unwrap() {
        if let Incoming::Nack(n) = event {
            assert_eq!(n.reason(), ErrorCode::Overloaded, "{n:?}");
            assert!(n.retry_after_ms > 0 && n.message_id > first, "{n:?}");
            overloaded += 1;
        }
    }
    // What the queue and the lane hold waits; the rest is refused at once, never dropped.
    assert!((1..=200).contains(&overloaded), "{overloaded} refused");
    // Messages that need no translation, to another agent, still flow.
    cx.send_message(text(&z, "en", 0, "Still here?")).unwrap();
    assert_eq!(message(&mut cz).payload, "Still here?".as_bytes());
    drop((cx, cz));
    node.stop();
}

#[test]
fn a_drain_waits_for_the_messages_in_the_pool_and_delivers_them() {
    // Each translation takes the engine 300 ms; one destination, one lane: the three
    // messages are in the pool for about 0.9 s when the drain starts.
    let slow = Engine::start(Duration::from_millis(300), libretranslate);
    let dir = tempfile::tempdir().unwrap();
    let config = translating(
        EngineKind::LibreTranslate,
        &slow.url,
        OnFailure::Nack,
        5_000,
    );
    let (mut node, x, y) = one_gateway(dir.path(), config);
    let mut cx = connect(&node, &x, AccessOptions::default());
    let mut cy = connect(&node, &y, speaking(&["es"], false));
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            cx.send_message(text(&y, "en", 1, &format!("Message {i}")))
                .unwrap()
        })
        .collect();
    // Accepted (so in flight) before the drain starts.
    let start = Instant::now();
    while node.dataplane.totals().accepted < 3 {
        assert!(start.elapsed() < WAIT, "the messages were never read");
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = node.drain(Duration::from_secs(10), |_, _| {});
    assert!(!report.abandoned, "{report:?}");
    assert_eq!(report.totals.in_flight(), 0, "{report:?}");
    // y got all three, translated, in order, before the drain closed its connection.
    for id in ids {
        let m = message(&mut cy);
        assert_eq!(m.message_id, id);
        assert_eq!(m.translation.unwrap().to, "es");
    }
    drop((cx, cy));
    node.stop();
}
