//! The demo's third act, natural-language translation (draft 2.5): an English-speaking agent of
//! domain a books a room with a Spanish-speaking agent of domain c; c's gateway translates the
//! request into Spanish, a's translates the answer into English, both with Apertium's APy
//! service (started by the demo when `apertium-apy` is installed; the act is skipped, saying
//! how to install it, when it is not).

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use agw_controlplane::{node::Node, translation::TranslationConfig};
use agw_dataplane::routing::Route;
use agw_proto::pb;
use agw_sdk::agent::{AccessOptions, AgentConnection, Credentials, Incoming};
use bytes::Bytes;

use crate::{WAIT, certify, say};

/// APy on a free loopback port, killed when dropped.
#[derive(Debug)]
pub(crate) struct Apy {
    child: Child,
    url: String,
}

/// How long APy may take to take connections.
const APY_START: Duration = Duration::from_secs(60);

impl Apy {
    /// Starts `apertium-apy` with the pairs Debian's packages installed; `None` (said why)
    /// when it is not installed or has no English-Spanish pair.
    pub(crate) fn start() -> Option<Apy> {
        let modes = "/usr/share/apertium/modes";
        if !std::path::Path::new(modes).join("eng-spa.mode").exists() {
            say(
                "   (Apertium's English-Spanish pair is not installed: the translation act is \
                 skipped; apt-get install apertium-apy apertium-eng-spa)",
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = Command::new("apertium-apy")
            .args(["-p", &port.to_string(), modes])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            say(
                "   (apertium-apy is not installed: the translation act is skipped; \
                 apt-get install apertium-apy apertium-eng-spa)",
            );
            return None;
        };
        let apy = Apy {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Ready once it takes connections: its first start on a fresh machine compiles its
        // Python modules, which took more than 10 s once in CI.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > APY_START {
                say("   (APy did not start: the translation act is skipped)");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(apy)
    }

    /// The translation every gateway of the demo runs with.
    pub(crate) fn config(&self) -> TranslationConfig {
        TranslationConfig::apertium(&self.url)
    }
}

impl Drop for Apy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(to: &Credentials, words: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        destination: to.agent.to_string(),
        session_id: 42,
        content_type: "text/plain; charset=utf-8".into(),
        language: "en".into(),
        payload: Bytes::from(words.to_owned()),
        ..Default::default()
    }
}

fn speaking(language: &str) -> AccessOptions {
    AccessOptions {
        languages: vec![language.into()],
        translation_originals: true,
    }
}

/// The next message `conn` receives.
fn message(conn: &mut AgentConnection) -> Result<pb::AgentMessage, String> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(Incoming::Message(m, _)) = conn.recv(WAIT).map_err(|e| e.to_string())? {
            return Ok(m);
        }
    }
    Err("no message arrived".into())
}

fn show(who: &str, m: &pb::AgentMessage) {
    say(format!(
        "   {who} received ({}) {:?}",
        m.language,
        String::from_utf8_lossy(&m.payload)
    ));
    if let Some(t) = &m.translation {
        say(format!(
            "      translated from {} into {} by {}; the original: {:?}",
            t.from,
            t.to,
            t.engine,
            String::from_utf8_lossy(&t.original)
        ));
    }
}

/// Runs the act on gateways a and c (both translating for their agents).
pub(crate) fn run(a: &Node, c: &Node, apy: Option<&Apy>) -> Result<(), String> {
    say(
        "== natural-language translation: an English agent of a.example books with a Spanish \
         agent of c.example",
    );
    if apy.is_none() {
        return Ok(());
    }
    let guest = certify(a, "tourist")?;
    let reception = certify(c, "recepcion")?;
    let connect = |node: &Node, who: &Arc<Credentials>, language: &str| {
        AgentConnection::connect_with(
            node.addresses().agents,
            who.clone(),
            WAIT,
            speaking(language),
        )
        .map_err(|e| e.to_string())
    };
    let mut guest_conn = connect(a, &guest, "en")?;
    let mut reception_conn = connect(c, &reception, "es")?;
    let deadline = Instant::now() + WAIT;
    while a
        .dataplane
        .route_of(reception.agent.as_str())
        .is_none_or(|r| !matches!(r, Route::Peer { .. }))
        || c.dataplane
            .route_of(guest.agent.as_str())
            .is_none_or(|r| !matches!(r, Route::Peer { .. }))
    {
        if Instant::now() > deadline {
            return Err("the routes between a and c did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ask = "I would like to book a double room for three nights.";
    say(format!("   tourist (en) sends {ask:?}"));
    guest_conn
        .send_message(text(&reception, ask))
        .map_err(|e| e.to_string())?;
    let got = message(&mut reception_conn)?;
    show("recepcion (es)", &got);
    reception_conn.ack(&got).map_err(|e| e.to_string())?;
    let answer = "La habitación está reservada. Bienvenido a Lisboa.";
    say(format!("   recepcion (es) answers {answer:?}"));
    let mut reply = text(&guest, answer);
    reply.language = "es".into();
    reception_conn
        .send_message(reply)
        .map_err(|e| e.to_string())?;
    let got = message(&mut guest_conn)?;
    show("tourist (en)", &got);
    for (name, node) in [("a", a), ("c", c)] {
        let s = node.translation().stats.to_wire();
        say(format!(
            "   {name}'s translation pool: {} translated, engine p50 {} us, added by the pool p50 {} us",
            s.translated.iter().map(|c| c.count).sum::<u64>(),
            s.engine_p50_us,
            s.added_p50_us
        ));
    }
    Ok(())
}
