//! The URL of an agent that is an A2A server (`AgentProfile.a2a_url`): where its gateway
//! calls it. Checked by the registry when the profile is stored, split by the gateway into
//! what its requests need.

/// An `http[s]://host[:port][/path]` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct A2aUrl {
    /// `https`: the gateway calls over mutual TLS, and the server must prove, with an ACA
    /// certificate, that it is the agent registered.
    pub tls: bool,
    /// The `Host` header: the URL's authority (`host` or `host:port`).
    pub host: String,
    /// The JSON-RPC endpoint's path (`/` when the URL has none).
    pub path: String,
    /// `host:port` to dial (port 80, or 443 for https, when the URL names none).
    pub dial: String,
}

impl A2aUrl {
    /// Splits `url`; refuses anything but a plain `http://` or `https://` URL whose authority
    /// and path are visible ASCII without user information, query or fragment.
    pub fn parse(url: &str) -> Result<A2aUrl, String> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => {
                return Err(format!("{url}: only http:// and https:// URLs are called"));
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let visible = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if authority.is_empty()
            || !visible(authority)
            || !visible(path)
            || authority.contains(['@', '?', '#'])
            || path.contains(['?', '#'])
        {
            return Err(format!(
                "{url}: not a plain http[s]://host[:port][/path] URL"
            ));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let dial = match (has_port, tls) {
            (true, _) => authority.to_owned(),
            (false, false) => format!("{authority}:80"),
            (false, true) => format!("{authority}:443"),
        };
        Ok(A2aUrl {
            tls,
            host: authority.to_owned(),
            path: path.to_owned(),
            dial,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_the_host_path_and_dial_address() {
        let u = A2aUrl::parse("http://127.0.0.1:9000/a2a").unwrap();
        assert_eq!(
            (u.host.as_str(), u.path.as_str(), u.dial.as_str()),
            ("127.0.0.1:9000", "/a2a", "127.0.0.1:9000")
        );
        let u = A2aUrl::parse("http://hotel.example").unwrap();
        assert_eq!(
            (u.path.as_str(), u.dial.as_str()),
            ("/", "hotel.example:80")
        );
        let u = A2aUrl::parse("http://[::1]:81/").unwrap();
        assert_eq!(u.dial, "[::1]:81");
        assert!(!u.tls);
        let u = A2aUrl::parse("https://hotel.example/a2a").unwrap();
        assert!(u.tls);
        assert_eq!(u.dial, "hotel.example:443");
        for bad in [
            "ftp://x/",
            "http://user@x/",
            "http:///",
            "http://x/a b",
            "http://x/a\r\nhost: y",
            "http://x/?q=1",
            "http://x\u{e9}/",
        ] {
            assert!(A2aUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
