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
