//! What of a message is natural text, in which language, and a cache of recent translations.

use std::collections::HashMap;

use agw_dataplane::{
    a2a::PARTS_TYPE,
    translation::{is_json, is_natural, media},
};
use serde_json::Value;

/// A language, known by its ISO 639 codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Language(isolang::Language);

impl Language {
    /// The language of a BCP 47 tag ("en", "es-MX", "zho"), by its primary subtag.
    pub fn from_tag(tag: &str) -> Option<Language> {
        let primary = agw_dataplane::translation::primary(tag).to_ascii_lowercase();
        let language = match primary.len() {
            2 => isolang::Language::from_639_1(&primary),
            3 => isolang::Language::from_639_3(&primary),
            _ => None,
        }?;
        Some(Language(language))
    }

    /// Its shortest tag: the two letters of ISO 639-1 where it has them ("en"), else ISO
    /// 639-3's three ("yue").
    pub fn tag(self) -> &'static str {
        self.0.to_639_1().unwrap_or_else(|| self.0.to_639_3())
    }

    /// ISO 639-3 ("eng"), as Apertium names languages.
    pub fn code3(self) -> &'static str {
        self.0.to_639_3()
    }

    /// Its English name ("Spanish"), for an LLM's prompt.
    pub fn name(self) -> &'static str {
        self.0.to_name()
    }
}

/// The language `text` is in, when a detector is confident enough to act on it.
pub fn detect(text: &str) -> Option<Language> {
    let info = whatlang::detect(text)?;
    // Short texts are rarely "reliable" by whatlang's measure; a confidence this high still
    // picks the right one of the languages it tells apart on a short sentence.
    if !info.is_reliable() && info.confidence() < 0.5 {
        return None;
    }
    Language::from_tag(info.lang().code())
}

/// The natural text of a payload, in segments translated one by one, and how to put the
/// translations back.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    /// A `text/*` payload: one segment, the whole of it.
    Plain(String),
    /// A2A parts: the text of each text part, in order; the parts kept to put them back.
    Parts {
        parts: Vec<Value>,
        texts: Vec<String>,
    },
    /// JSON: the strings at the destination's text fields, in order, and where each is.
    Json {
        value: Value,
        places: Vec<String>,
        texts: Vec<String>,
    },
}

impl Text {
    /// The text of a payload of `content_type`, for a destination whose profile names
    /// `text_fields` (JSON pointers); `None` when there is none to translate (structured data
    /// elsewhere, bytes, text that is not UTF-8).
    pub fn of(content_type: &str, payload: &[u8], text_fields: &[String]) -> Option<Text> {
        if is_natural(content_type) {
            let text = std::str::from_utf8(payload).ok()?;
            return (!text.trim().is_empty()).then(|| Text::Plain(text.to_owned()));
        }
        if is_json(content_type) && !text_fields.is_empty() {
            return Text::json(payload, text_fields);
        }
        if media(content_type) != PARTS_TYPE {
            return None;
        }
        let Ok(Value::Array(parts)) = serde_json::from_slice(payload) else {
            return None;
        };
        let texts: Vec<String> = parts
            .iter()
            .filter_map(part_text)
            .map(str::to_owned)
            .collect();
        (!texts.is_empty()).then_some(Text::Parts { parts, texts })
    }

    /// The strings at `fields` of a JSON payload (a field naming an array: each string in it).
    fn json(payload: &[u8], fields: &[String]) -> Option<Text> {
        let value: Value = serde_json::from_slice(payload).ok()?;
        let (mut places, mut texts) = (Vec::new(), Vec::new());
        for field in fields {
            match value.pointer(field) {
                Some(Value::String(text)) => {
                    places.push(field.clone());
                    texts.push(text.clone());
                }
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Value::String(text) = item {
                            places.push(format!("{field}/{i}"));
                            texts.push(text.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        (!texts.is_empty()).then_some(Text::Json {
            value,
            places,
            texts,
        })
    }

    /// The segments to translate.
    pub fn segments(&self) -> &[String] {
        match self {
            Text::Plain(text) => std::slice::from_ref(text),
            Text::Parts { texts, .. } | Text::Json { texts, .. } => texts,
        }
    }

    /// All of it, for detection.
    pub fn joined(&self) -> String {
        self.segments().join("\n")
    }

    /// The payload with `translated` (one per segment, in order) in place of the text.
    pub fn payload(&self, translated: &[String]) -> Vec<u8> {
        match self {
            Text::Plain(_) => translated.concat().into_bytes(),
            Text::Parts { parts, .. } => {
                let mut translated = translated.iter();
                let parts: Vec<Value> = parts
                    .iter()
                    .map(|part| {
                        let mut part = part.clone();
                        if part_text(&part).is_some()
                            && let Some(text) = translated.next()
                        {
                            part["text"] = Value::String(text.clone());
                        }
                        part
                    })
                    .collect();
                Value::Array(parts).to_string().into_bytes()
            }
            Text::Json { value, places, .. } => {
                let mut value = value.clone();
                for (place, text) in places.iter().zip(translated) {
                    if let Some(slot) = value.pointer_mut(place) {
                        *slot = Value::String(text.clone());
                    }
                }
                value.to_string().into_bytes()
            }
        }
    }
}

/// A part's text when it is a text part meant for people ([`is_natural`]).
fn part_text(part: &Value) -> Option<&str> {
    let text = part.get("text")?.as_str()?;
    let media = part.get("mediaType").and_then(Value::as_str).unwrap_or("");
    is_natural(media).then_some(text)
}

/// Recent translations by (text, from, to), bounded: when the newer half fills up, the older
/// half is dropped, so what is used often stays.
#[derive(Debug)]
pub struct Cache {
    newer: HashMap<(String, Language, Language), String>,
    older: HashMap<(String, Language, Language), String>,
    half: usize,
}

impl Cache {
    /// A cache of at most `entries` translations (0: none kept).
    pub fn new(entries: usize) -> Cache {
        Cache {
            newer: HashMap::new(),
            older: HashMap::new(),
            half: entries / 2,
        }
    }

    pub fn get(&mut self, text: &str, from: Language, to: Language) -> Option<String> {
        let key = (text.to_owned(), from, to);
        if let Some(hit) = self.newer.get(&key) {
            return Some(hit.clone());
        }
        let hit = self.older.remove(&key)?;
        self.put_key(key, hit.clone());
        Some(hit)
    }

    pub fn put(&mut self, text: &str, from: Language, to: Language, translated: String) {
        self.put_key((text.to_owned(), from, to), translated);
    }

    fn put_key(&mut self, key: (String, Language, Language), translated: String) {
        if self.half == 0 {
            return;
        }
        if self.newer.len() >= self.half {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(key, translated);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.newer.len() + self.older.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tags_and_codes_name_the_same_language() {
        let es = Language::from_tag("es-MX").unwrap();
        assert_eq!((es.tag(), es.code3(), es.name()), ("es", "spa", "Spanish"));
        assert_eq!(Language::from_tag("eng"), Language::from_tag("en"));
        assert_eq!(Language::from_tag("zh_CN").unwrap().code3(), "zho");
        assert_eq!(Language::from_tag("xx"), None);
        assert_eq!(Language::from_tag(""), None);
    }

    #[test]
    fn sentences_are_detected() {
        let en = Language::from_tag("en");
        let es = Language::from_tag("es");
        assert_eq!(detect("Book a twin room for two nights, please."), en);
        assert_eq!(
            detect("Reserva una habitación doble para dos noches, por favor."),
            es
        );
        assert_eq!(detect("42"), None);
    }

    #[test]
    fn only_text_is_translated() {
        assert_eq!(
            Text::of("text/plain; charset=utf-8", b"hello", &[]),
            Some(Text::Plain("hello".into()))
        );
        assert_eq!(Text::of("application/json", br#"{"a":"hello"}"#, &[]), None);
        assert_eq!(Text::of("text/plain", &[0xff, 0xfe], &[]), None);
        assert_eq!(Text::of("text/plain", b"  ", &[]), None);
        let parts = br#"[{"text":"hello"},{"data":{"n":1}},{"text":"print(1)","mediaType":"text/x-python"},{"text":"code","mediaType":"application/x-sh"}]"#;
        let text = Text::of(PARTS_TYPE, parts, &[]).unwrap();
        assert_eq!(text.segments(), ["hello"]);
        let back: Value = serde_json::from_slice(&text.payload(&["hola".into()])).unwrap();
        assert_eq!(back[0]["text"], "hola");
        assert_eq!(back[1]["data"]["n"], 1);
        assert_eq!(back[2]["text"], "print(1)");
        assert_eq!(back[3]["text"], "code");
        // JSON: only the fields the profile names, strings or arrays of strings.
        let fields = ["/note", "/tags", "/id", "/missing"].map(str::to_owned);
        let order = br#"{"id":17,"note":"two nights","tags":["quiet","sea view",3],"room":"twin"}"#;
        let text = Text::of("application/json", order, &fields).unwrap();
        assert_eq!(text.segments(), ["two nights", "quiet", "sea view"]);
        let translated = ["dos noches", "tranquila", "vista al mar"].map(str::to_owned);
        let back: Value = serde_json::from_slice(&text.payload(&translated)).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"id":17,"note":"dos noches","tags":["tranquila","vista al mar",3],"room":"twin"})
        );
        assert_eq!(Text::of("application/json", br#"{"id":1}"#, &fields), None);
        assert_eq!(Text::of("application/json", b"not json", &fields), None);
    }

    #[test]
    fn the_cache_keeps_what_is_used_and_stays_bounded() {
        let (en, es) = (
            Language::from_tag("en").unwrap(),
            Language::from_tag("es").unwrap(),
        );
        let mut cache = Cache::new(4);
        cache.put("a", en, es, "A".into());
        cache.put("b", en, es, "B".into());
        assert_eq!(cache.get("a", en, es).as_deref(), Some("A"));
        assert_eq!(cache.get("a", es, en), None);
        for t in ["c", "d", "e", "f", "g"] {
            cache.put(t, en, es, t.to_uppercase());
        }
        assert!(cache.len() <= 4);
        assert_eq!(cache.get("g", en, es).as_deref(), Some("G"));
        assert_eq!(cache.get("a", en, es), None);
    }
}
