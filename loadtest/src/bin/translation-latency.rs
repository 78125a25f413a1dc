//! `agw-translation-latency`: what natural-language translation adds to a message's latency
//! beyond its engine's own time (docs/translation.md, docs/benchmarks.md).
//!
//! ```text
//! agw-translation-latency [--messages 4000] [--json FILE]
//! ```
//!
//! It starts a gateway in this process (one shard, agents over mutual TLS) translating with an
//! engine on loopback that speaks LibreTranslate's API and answers at once (it echoes the
//! text, and measures its own time per request: from the request read whole to the answer
//! written), and two agents: x names no language, y understands Spanish. x sends y one message
//! at a time, alternately English (translated on the way) and Spanish (delivered as sent), each
//! text unique (no cache hit), and times each from the send to y's receipt. The translated
//! messages' latency minus the untranslated ones', at each percentile, is what translation
//! adds, the engine's own time included (reported beside it); everything but the engine's own
//! time is the gateway's: the handoff to the pool, the HTTP client and its connection, the
//! re-encoding, the way back to the shard. Loopback only; bounded by `--messages`.

use std::{
    io::{BufRead, BufReader, Read, Write as _},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agw_controlplane::translation::{EngineConfig, EngineKind, TranslationConfig};
use agw_loadtest::agw::InProcessGateway;
use agw_proto::pb;
use agw_sdk::agent::{AccessOptions, AgentConnection, Incoming};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use agw_loadtest::transport::Error;

#[derive(Debug, Parser)]
#[command(name = "agw-translation-latency", version)]
struct Args {
    /// Messages to send, half of them translated (the first tenth is warm-up).
    #[arg(long, default_value_t = 4000)]
    messages: usize,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// The engine: LibreTranslate's `POST /translate`, HTTP/1.1 with keep-alive (as APy and
/// LibreTranslate serve), one connection at a time (the pool asks one lane's requests in
/// turn); its own time per request, in nanoseconds.
fn engine(listener: TcpListener, own: Arc<Mutex<Histogram<u64>>>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let Ok(read_half) = stream.try_clone() else {
            continue;
        };
        let mut reader = BufReader::new(read_half);
        // Requests on this connection until the client closes it.
        'requests: loop {
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break 'requests;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                break;
            }
            let started = Instant::now();
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let answer = json!({ "translatedText": request["q"] }).to_string();
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if stream.write_all(reply.as_bytes()).is_err() {
                break;
            }
            if let Ok(mut h) = own.lock() {
                let _ = h.record(started.elapsed().as_nanos().max(1) as u64);
            }
        }
    }
}

fn quantiles(h: &Histogram<u64>) -> Value {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({ "samples": h.len(), "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p999": us(0.999), "max": h.max() as f64 / 1000.0 })
}

fn main() -> Result<(), Error> {
    agw_dataplane::hugepages::ensure();
    let args = Args::parse();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let own = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let engine_own = own.clone();
    std::thread::spawn(move || engine(listener, engine_own));
    let config = TranslationConfig {
        engines: vec![EngineConfig::new(EngineKind::LibreTranslate, &url)],
        cache_entries: 0,
        ..TranslationConfig::formats_only()
    };
    let gateway =
        InProcessGateway::start_translating("load.example", 1, false, false, Some(config))?;
    let (x, y) = (gateway.certify("x")?, gateway.certify("y")?);
    let addr = gateway.node.dataplane.local_addr();
    let wait = Duration::from_secs(5);
    let mut cx = AgentConnection::connect(addr, x, wait)?;
    let spanish = AccessOptions {
        languages: vec!["es".into()],
        translation_originals: false,
    };
    let mut cy = AgentConnection::connect_with(addr, y.clone(), wait, spanish)?;
    let mut translated = Histogram::<u64>::new(3)?;
    let mut untranslated = Histogram::<u64>::new(3)?;
    let warmup = args.messages / 10;
    for i in 0..args.messages {
        let english = i % 2 == 0;
        let (language, text) = if english {
            (
                "en",
                format!("Message {i}: please book a twin room for two nights."),
            )
        } else {
            ("es", format!("Mensaje {i}: reserve una habitación doble."))
        };
        let sent = Instant::now();
        cx.send_message(pb::AgentMessage {
            destination: y.agent.to_string(),
            content_type: "text/plain".into(),
            language: language.into(),
            payload: Bytes::from(text),
            ..Default::default()
        })?;
        let got = loop {
            match cy.recv(wait)? {
                Some(Incoming::Message(m, _)) => break m,
                Some(Incoming::Nack(n)) => return Err(format!("NACK {:?}", n.reason()).into()),
                Some(_) => continue,
                None => return Err("a message did not arrive".into()),
            }
        };
        let took = sent.elapsed().as_nanos().max(1) as u64;
        if english != got.translation.is_some() {
            return Err(format!("message {i}: translated {}", got.translation.is_some()).into());
        }
        if i >= warmup {
            let h = if english {
                &mut translated
            } else {
                &mut untranslated
            };
            h.record(took)?;
        }
    }
    let own = own.lock().map_err(|_| "engine")?.clone();
    let added = |q: f64| {
        (translated.value_at_quantile(q) as f64 - untranslated.value_at_quantile(q) as f64) / 1000.0
    };
    let pool = gateway.node.translation().stats.to_wire();
    let report = json!({
        "messages": args.messages,
        "translated_us": quantiles(&translated),
        "untranslated_us": quantiles(&untranslated),
        "engine_own_us": quantiles(&own),
        "added_us": { "p50": added(0.5), "p90": added(0.9), "p99": added(0.99), "p999": added(0.999) },
        "pool": {
            "engine_p50_us": pool.engine_p50_us, "engine_p99_us": pool.engine_p99_us,
            "added_p50_us": pool.added_p50_us, "added_p99_us": pool.added_p99_us,
            "added_p999_us": pool.added_p999_us,
        },
    });
    let mut out = std::io::stdout().lock();
    let line = |name: &str, v: &Value| {
        format!(
            "{name:<22} p50 {:>8.1} us  p90 {:>8.1}  p99 {:>8.1}  p99.9 {:>8.1}",
            v["p50"].as_f64().unwrap_or(0.0),
            v["p90"].as_f64().unwrap_or(0.0),
            v["p99"].as_f64().unwrap_or(0.0),
            v["p999"].as_f64().unwrap_or(0.0)
        )
    };
    writeln!(out, "{}", line("translated", &report["translated_us"]))?;
    writeln!(out, "{}", line("untranslated", &report["untranslated_us"]))?;
    writeln!(out, "{}", line("added (difference)", &report["added_us"]))?;
    writeln!(
        out,
        "{}",
        line("engine's own time", &report["engine_own_us"])
    )?;
    writeln!(
        out,
        "pool: engine call as the gateway saw it p50 {} us p99 {} us; pool's part p50 {} us p99 {} us p99.9 {} us",
        pool.engine_p50_us,
        pool.engine_p99_us,
        pool.added_p50_us,
        pool.added_p99_us,
        pool.added_p999_us
    )?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    drop((cx, cy));
    gateway.node.stop();
    Ok(())
}
