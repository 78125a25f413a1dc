//! Serves the current CRL over HTTP as DER, at the path of the CRL distribution point that
//! every certificate names (RFC 5280 section 4.2.1.13). Relying parties that we did not write
//! (openssl, browsers, other gateways) fetch it there.

use std::{
    io,
    net::{SocketAddr, TcpListener, ToSocketAddrs},
    sync::Arc,
    time::SystemTime,
};

use agw_rpc::{Endpoint, EndpointStats, HttpAnswer, HttpLimits, HttpRequest, Method};
use tokio::runtime::Handle;

use crate::CertificateAuthority;

/// The path part of an `http://host[:port]/path` URL; `/` when it has none.
pub fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
}

/// The URL written into certificates as their CRL distribution point: the operator's
/// `configured` one (an `http://` URL: relying parties such as openssl fetch CRLs over plain
/// HTTP), or, when none is set, one made from the address the CRL is served on. A wildcard
/// address (0.0.0.0, ::) names no host a relying party can reach, so it needs a configured URL.
pub fn crl_url(
    configured: Option<&str>,
    served_on: SocketAddr,
    domain: &str,
) -> Result<String, String> {
    match configured {
        Some(url) => {
            let host = url.strip_prefix("http://").unwrap_or_default();
            if host.is_empty() || host.starts_with('/') || url.chars().any(char::is_whitespace) {
                return Err(format!(
                    "CRL URL {url:?}: an http:// URL with a host is needed \
                     (e.g. http://crl.example.net/crl/{domain}.crl)"
                ));
            }
            Ok(url.to_owned())
        }
        None if served_on.ip().is_unspecified() => Err(format!(
            "the CRL is served on the wildcard address {served_on}, which no relying party can \
             fetch from: set the public CRL URL that certificates will carry (--crl-url, or \
             crl_url in the configuration file)"
        )),
        None => Ok(format!("http://{served_on}/crl/{domain}.crl")),
    }
}

/// A running CRL endpoint; stops when dropped.
#[derive(Debug)]
pub struct CrlHttpServer {
    endpoint: Endpoint,
}

impl CrlHttpServer {
    /// Listens on `addr` and answers `GET <path>` with the authority's current CRL
    /// (`application/pkix-crl`), 404 for other paths and 405 for other methods, on `runtime`.
    pub fn start(
        runtime: &Handle,
        addr: impl ToSocketAddrs,
        authority: Arc<CertificateAuthority>,
        path: &str,
    ) -> io::Result<CrlHttpServer> {
        CrlHttpServer::from_listener(runtime, TcpListener::bind(addr)?, authority, path)
    }

    /// The same on a listener already bound (so its address is known before the
    /// certificates that name it are issued).
    pub fn from_listener(
        runtime: &Handle,
        listener: TcpListener,
        authority: Arc<CertificateAuthority>,
        path: &str,
    ) -> io::Result<CrlHttpServer> {
        let path = path.to_owned();
        let route = Arc::new(move |request: &HttpRequest| {
            answer(&authority, &path, &request.method, &request.path)
        });
        let endpoint = Endpoint::http(runtime, listener, route, HttpLimits::default())?;
        Ok(CrlHttpServer { endpoint })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Its counters, and whether it serves.
    pub fn stats(&self) -> Arc<EndpointStats> {
        self.endpoint.stats()
    }
}

fn answer(
    authority: &CertificateAuthority,
    path: &str,
    method: &Method,
    url_path: &str,
) -> HttpAnswer {
    if url_path != path {
        return HttpAnswer::text(404, "not found\n");
    }
    if *method != Method::GET && *method != Method::HEAD {
        return HttpAnswer::text(405, "only GET\n");
    }
    match authority.crl(SystemTime::now()) {
        Ok(crl) => HttpAnswer::new(200, "application/pkix-crl", crl.der),
        Err(e) => HttpAnswer::text(500, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    #[test]
    fn the_crl_url_is_the_operators_or_a_reachable_address() {
        assert_eq!(
            crl_url(None, addr("127.0.0.1:7402"), "a.example").as_deref(),
            Ok("http://127.0.0.1:7402/crl/a.example.crl")
        );
        for wildcard in ["0.0.0.0:7402", "[::]:7402"] {
            let refused = crl_url(None, addr(wildcard), "a.example").unwrap_err();
            assert!(refused.contains("--crl-url"), "{refused}");
        }
        assert_eq!(
            crl_url(
                Some("http://crl.a.example/a.crl"),
                addr("0.0.0.0:7402"),
                "a.example"
            )
            .as_deref(),
            Ok("http://crl.a.example/a.crl")
        );
        for bad in [
            "crl.a.example/a.crl",
            "http:///a.crl",
            "https://x/a.crl",
            "http://x/a b",
        ] {
            assert!(crl_url(Some(bad), addr("0.0.0.0:1"), "a").is_err(), "{bad}");
        }
    }
}
