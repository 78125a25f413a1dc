//! Translation engines, each reached over HTTP: Apertium's APy service (offline and free, the
//! default), an OpenAI-compatible chat-completions endpoint (an operator's LLM), and the
//! LibreTranslate API.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::text::Language;

/// The most an engine's answer may hold.
const MAX_ANSWER: usize = 1 << 20;

/// Which API an engine speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Apertium APy: `POST /translate` with `langpair=eng|spa`, pairs from `GET /listPairs`.
    Apertium,
    /// OpenAI-compatible `POST /chat/completions` under its URL (e.g. `http://host/v1`).
    OpenAi,
    /// LibreTranslate: `POST /translate` with JSON `{q, source, target}`.
    LibreTranslate,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Apertium => "apertium",
            EngineKind::OpenAi => "openai",
            EngineKind::LibreTranslate => "libretranslate",
        }
    }
}

/// An engine as configured (`[[translation.engine]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub kind: EngineKind,
    /// Its base URL, `http://host:port[/path]`.
    pub url: String,
    /// What messages say translated them; the kind's name by default.
    #[serde(default)]
    pub name: Option<String>,
    /// The pairs it is asked for, `from-to` tags ("en-es"); empty: Apertium's own list
    /// (`/listPairs`), every pair for the others.
    #[serde(default)]
    pub pairs: Vec<String>,
    /// For OpenAI-compatible endpoints: the model to ask.
    #[serde(default)]
    pub model: Option<String>,
    /// The environment variable holding its API key (a bearer token for OpenAI-compatible
    /// endpoints, `api_key` for LibreTranslate); never the key itself in the file.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Or a file holding it (a secret mounted by the service manager), its first line.
    #[serde(default)]
    pub api_key_file: Option<std::path::PathBuf>,
}

/// An HTTP/1.1 client that keeps its connections to an engine open between requests.
type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

impl EngineConfig {
    /// An engine of `kind` at `url`, every other setting its default.
    pub fn new(kind: EngineKind, url: &str) -> EngineConfig {
        EngineConfig {
            kind,
            url: url.to_owned(),
            name: None,
            pairs: Vec::new(),
            model: None,
            api_key_env: None,
            api_key_file: None,
        }
    }
}

/// A configured engine, ready to be asked.
#[derive(Debug)]
pub struct Engine {
    pub kind: EngineKind,
    pub name: String,
    base: String,
    client: Client,
    model: String,
    api_key: Option<String>,
    /// The pairs configured; empty: per the kind.
    pairs: Vec<(Language, Language)>,
    /// Apertium's own pairs, once listed.
    listed: std::sync::RwLock<Option<Vec<(Language, Language)>>>,
}

impl Engine {
    pub fn new(config: &EngineConfig) -> Result<Engine, String> {
        let base = config.url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(format!(
                "translation engine {}: only http:// URLs (an https endpoint is reached through a local proxy)",
                config.url
            ));
        }
        let pairs = config
            .pairs
            .iter()
            .map(|p| {
                let (from, to) = p.split_once(['-', '|', '>']).ok_or_else(|| {
                    format!("translation pair {p}: write it as from-to, e.g. en-es")
                })?;
                match (Language::from_tag(from), Language::from_tag(to)) {
                    (Some(f), Some(t)) => Ok((f, t)),
                    _ => Err(format!("translation pair {p}: an unknown language")),
                }
            })
            .collect::<Result<_, String>>()?;
        let api_key = match (&config.api_key_env, &config.api_key_file) {
            (Some(var), _) => Some(
                std::env::var(var)
                    .map_err(|_| format!("translation engine {}: ${var} is not set", config.url))?,
            ),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("translation engine {}: {}: {e}", config.url, path.display())
                })?;
                Some(text.lines().next().unwrap_or("").trim().to_owned())
            }
            (None, None) => None,
        };
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector);
        Ok(Engine {
            client,
            kind: config.kind,
            name: config
                .name
                .clone()
                .unwrap_or_else(|| config.kind.name().to_owned()),
            base,
            model: config.model.clone().unwrap_or_else(|| "default".into()),
            api_key,
            pairs,
            listed: std::sync::RwLock::new(None),
        })
    }

    /// Whether it is asked to translate `from` into `to`. Apertium before its pairs are
    /// listed: yes (its answer says).
    pub fn serves(&self, from: Language, to: Language) -> bool {
        if !self.pairs.is_empty() {
            return self.pairs.contains(&(from, to));
        }
        match self.kind {
            EngineKind::Apertium => self
                .listed
                .read()
                .ok()
                .and_then(|l| l.as_ref().map(|l| l.contains(&(from, to))))
                .unwrap_or(true),
            EngineKind::OpenAi | EngineKind::LibreTranslate => true,
        }
    }

    /// Asks Apertium which pairs it has (nothing to do for the others).
    pub async fn list_pairs(&self, deadline: Duration) -> Result<usize, String> {
        if self.kind != EngineKind::Apertium || !self.pairs.is_empty() {
            return Ok(0);
        }
        let url = format!("{}/listPairs", self.base);
        let (status, body) = self
            .exchange(Method::GET, &url, &[], Bytes::new(), deadline)
            .await?;
        if status != 200 {
            return Err(format!("{url}: HTTP {status}"));
        }
        let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
        let pairs: Vec<(Language, Language)> = answer["responseData"]
            .as_array()
            .ok_or_else(|| format!("{url}: no responseData"))?
            .iter()
            .filter_map(|p| {
                let from = Language::from_tag(p["sourceLanguage"].as_str()?)?;
                let to = Language::from_tag(p["targetLanguage"].as_str()?)?;
                Some((from, to))
            })
            .collect();
        let n = pairs.len();
        if let Ok(mut listed) = self.listed.write() {
            *listed = Some(pairs);
        }
        Ok(n)
    }

    /// One request on a kept connection (a new one when none is idle): the answer's status and
    /// body (at most [`MAX_ANSWER`] bytes), all within `deadline`.
    async fn exchange(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        deadline: Duration,
    ) -> Result<(u16, Bytes), String> {
        let mut request = hyper::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("{url}: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("{url}: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {deadline:?}"))?
    }

    /// `text` in `from`, translated into `to`, within `deadline`.
    pub async fn translate(
        &self,
        text: &str,
        from: Language,
        to: Language,
        deadline: Duration,
    ) -> Result<String, String> {
        let (url, content_type, body) = match self.kind {
            EngineKind::Apertium => {
                let pair = format!("{}|{}", from.code3(), to.code3());
                let form = form_urlencoded::Serializer::new(String::new())
                    .append_pair("langpair", &pair)
                    .append_pair("q", text)
                    .append_pair("markUnknown", "no")
                    .finish();
                (
                    format!("{}/translate", self.base),
                    "application/x-www-form-urlencoded",
                    form.into_bytes(),
                )
            }
            EngineKind::OpenAi => {
                let prompt = format!(
                    "Translate the user's message from {} into {}. Answer with the translation only, nothing else.",
                    from.name(),
                    to.name()
                );
                let request = json!({
                    "model": self.model,
                    "temperature": 0,
                    "messages": [
                        { "role": "system", "content": prompt },
                        { "role": "user", "content": text },
                    ],
                });
                (
                    format!("{}/chat/completions", self.base),
                    "application/json",
                    request.to_string().into_bytes(),
                )
            }
            EngineKind::LibreTranslate => {
                let mut request = json!({
                    "q": text, "source": from.tag(), "target": to.tag(), "format": "text",
                });
                if let Some(key) = &self.api_key {
                    request["api_key"] = json!(key);
                }
                (
                    format!("{}/translate", self.base),
                    "application/json",
                    request.to_string().into_bytes(),
                )
            }
        };
        let bearer = match (self.kind, &self.api_key) {
            (EngineKind::OpenAi, Some(key)) => Some(format!("Bearer {key}")),
            _ => None,
        };
        let mut headers = vec![("content-type", content_type)];
        if let Some(b) = &bearer {
            headers.push(("authorization", b));
        }
        let (status, answer) = self
            .exchange(Method::POST, &url, &headers, Bytes::from(body), deadline)
            .await
            .map_err(|e| format!("{}: {e}", self.name))?;
        let answer: Value = serde_json::from_slice(&answer)
            .map_err(|_| format!("{}: HTTP {status}, not JSON", self.name))?;
        let translated = match self.kind {
            EngineKind::Apertium => answer.pointer("/responseData/translatedText"),
            EngineKind::OpenAi => answer.pointer("/choices/0/message/content"),
            EngineKind::LibreTranslate => answer.get("translatedText"),
        };
        match translated.and_then(Value::as_str) {
            Some(t) if status == 200 => Ok(t.trim().to_owned()),
            _ => {
                let why = answer
                    .get("responseDetails")
                    .or_else(|| answer.pointer("/error/message"))
                    .or_else(|| answer.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("no translation in the answer");
                Err(format!("{}: HTTP {status}: {why}", self.name))
            }
        }
    }
}
