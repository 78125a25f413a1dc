//! Serves the current CRL over HTTP as DER, at the path of the CRL distribution point that
//! every certificate names (RFC 5280 section 4.2.1.13). Relying parties that we did not write
//! (openssl, browsers, other gateways) fetch it there.

use std::{
    io,
    net::{SocketAddr, TcpListener, ToSocketAddrs},
    sync::Arc,
    thread::JoinHandle,
    time::SystemTime,
};

use tiny_http::{Header, Method, Response, Server};

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
pub struct CrlHttpServer {
    server: Arc<Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl CrlHttpServer {
    /// Listens on `addr` and answers `GET <path>` with the authority's current CRL
    /// (`application/pkix-crl`), 404 for other paths and 405 for other methods.
    pub fn start(
        addr: impl ToSocketAddrs,
        authority: Arc<CertificateAuthority>,
        path: &str,
    ) -> io::Result<CrlHttpServer> {
        CrlHttpServer::from_listener(TcpListener::bind(addr)?, authority, path)
    }

    /// The same on a listener already bound (so its address is known before the
    /// certificates that name it are issued).
    pub fn from_listener(
        listener: TcpListener,
        authority: Arc<CertificateAuthority>,
        path: &str,
    ) -> io::Result<CrlHttpServer> {
        let server = Arc::new(Server::from_listener(listener, None).map_err(io::Error::other)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("not an IP listener"))?;
        let path = path.to_owned();
        let worker = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("aca-crl-http".into())
            .spawn(move || {
                for request in worker.incoming_requests() {
                    let response = answer(&authority, &path, request.method(), request.url());
                    // A client that went away is its own problem; keep serving the others.
                    let _ = request.respond(response);
                }
            })?;
        Ok(CrlHttpServer {
            server,
            addr,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn answer(
    authority: &CertificateAuthority,
    path: &str,
    method: &Method,
    url: &str,
) -> Response<io::Cursor<Vec<u8>>> {
    let text =
        |status: u16, body: &str| Response::from_string(body.to_owned()).with_status_code(status);
    if url.split('?').next() != Some(path) {
        return text(404, "not found\n");
    }
    if *method != Method::Get && *method != Method::Head {
        return text(405, "only GET\n");
    }
    match authority.crl(SystemTime::now()) {
        Ok(crl) => {
            let mut response = Response::from_data(crl.der);
            if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], &b"application/pkix-crl"[..]) {
                response.add_header(h);
            }
            response
        }
        Err(e) => text(500, &format!("{e}\n")),
    }
}

impl std::fmt::Debug for CrlHttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlHttpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for CrlHttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
