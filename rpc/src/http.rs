//! HTTP/1.1 endpoints (hyper), plain or over TLS: the CRL at its distribution point, Prometheus
//! metrics and health, and the authority's EST enrollment. One request per connection (no
//! keep-alive), headers and body bounded, the whole exchange (TLS handshake included) under a
//! deadline, connections capped in all and per source like the framed endpoints (a refused
//! plain one gets `503`). A route is a blocking function of the request: it runs on the
//! runtime's blocking pool.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{HeaderMap, Method, Request, Response, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    runtime::Handle,
    sync::watch,
    time::{Instant, timeout},
};

use crate::{Caller, Endpoint, EndpointStats, Gate, Identify, PARTING_WRITE, tokio_listener};

/// A request as a route sees it: its body read whole (within [`HttpLimits::max_body`]).
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// Who sent it: over TLS, the identity its client certificate names.
    pub caller: Caller,
    /// Over TLS, the client's certificate chain as presented (leaf first, DER); empty without
    /// one.
    pub client_chain: Vec<Vec<u8>>,
}

impl HttpRequest {
    /// A request with no headers, body or caller (for routes' tests).
    pub fn new(method: Method, path: &str) -> HttpRequest {
        HttpRequest {
            method,
            path: path.to_owned(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            caller: Caller::default(),
            client_chain: Vec::new(),
        }
    }

    /// The value of header `name`, when present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
    /// Other headers.
    pub headers: Vec<(&'static str, String)>,
}

impl HttpAnswer {
    /// An answer with this status, type and body, and no other header.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> HttpAnswer {
        HttpAnswer {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// A short text answer.
    pub fn text(status: u16, text: impl Into<String>) -> HttpAnswer {
        HttpAnswer::new(status, "text/plain; charset=utf-8", text.into())
    }

    /// The same with header `name: value` added.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> HttpAnswer {
        self.headers.push((name, value.into()));
        self
    }
}

/// Answers a request.
pub type Route = dyn Fn(&HttpRequest) -> HttpAnswer + Send + Sync;

/// The bounds of an HTTP endpoint.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections open at once. Default 256.
    pub max_connections: usize,
    /// Connections open at once from one source address. Default 16.
    pub max_per_source: usize,
    /// Time for the whole exchange: the TLS handshake, the request arriving and the answer
    /// written. Default 5 s.
    pub request_timeout: Duration,
    /// Largest request body taken; a longer one is answered `413`. Default 0 (GET only).
    pub max_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 256,
            max_per_source: 16,
            request_timeout: Duration::from_secs(5),
            max_body: 0,
        }
    }
}

/// The smallest read buffer hyper takes: it bounds the request head.
const MAX_HEAD: usize = 8 * 1024;

/// TLS for an HTTP endpoint: the server's configuration, and how a client certificate names
/// its holder.
type HttpTls = (Arc<ServerConfig>, Identify);

impl Endpoint {
    /// Serves plain HTTP on `listener` with `route`.
    pub fn http(
        runtime: &Handle,
        listener: std::net::TcpListener,
        route: Arc<Route>,
        limits: HttpLimits,
    ) -> io::Result<Endpoint> {
        Endpoint::start_http(runtime, listener, None, route, limits)
    }

    /// Serves HTTPS on `listener` with `route`: `tls` says whether client certificates are
    /// asked for; `identify` names the holder of one, for [`HttpRequest::caller`].
    pub fn https(
        runtime: &Handle,
        listener: std::net::TcpListener,
        tls: Arc<ServerConfig>,
        identify: Identify,
        route: Arc<Route>,
        limits: HttpLimits,
    ) -> io::Result<Endpoint> {
        Endpoint::start_http(runtime, listener, Some((tls, identify)), route, limits)
    }

    fn start_http(
        runtime: &Handle,
        listener: std::net::TcpListener,
        tls: Option<HttpTls>,
        route: Arc<Route>,
        limits: HttpLimits,
    ) -> io::Result<Endpoint> {
        let (listener, addr) = tokio_listener(runtime, listener)?;
        let stats = Arc::new(EndpointStats::default());
        stats
            .serving
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let gate = Gate::new(
            limits.max_connections,
            limits.max_per_source,
            Arc::clone(&stats),
        );
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(accept(listener, tls, route, limits, gate, stopped));
        Ok(Endpoint {
            addr: Some(addr),
            stats,
            stop,
        })
    }
}

async fn accept(
    listener: TcpListener,
    tls: Option<HttpTls>,
    route: Arc<Route>,
    limits: HttpLimits,
    gate: Gate,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, from): (tokio::net::TcpStream, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                gate.accept_failed(&e, &mut last_log).await;
                continue;
            }
        };
        gate.stats
            .serving
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (gate, route, tls) = (gate.clone(), Arc::clone(&route), tls.clone());
        tokio::spawn(async move {
            let Ok(admitted) = gate.admit(Some(from.ip())) else {
                // A TLS client could not read a plain refusal: it is closed unanswered.
                if tls.is_none() {
                    let refusal = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                                    Connection: close\r\n\r\n";
                    let _ = timeout(PARTING_WRITE, stream.write_all(refusal)).await;
                }
                return;
            };
            let caller = Caller {
                identity: None,
                address: Some(from.ip()),
            };
            let exchange = async {
                match tls {
                    None => serve(stream, caller, Vec::new(), route, limits).await,
                    Some((config, identify)) => {
                        match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                            Ok(tls) => {
                                let presented = tls.get_ref().1.peer_certificates();
                                let identity = presented.and_then(identify);
                                let chain = presented
                                    .unwrap_or_default()
                                    .iter()
                                    .map(|c| c.to_vec())
                                    .collect();
                                let caller = Caller { identity, ..caller };
                                serve(tls, caller, chain, route, limits).await;
                            }
                            Err(e) => {
                                tracing::debug!(%from, error = %e, "TLS handshake refused");
                            }
                        }
                    }
                }
            };
            if timeout(limits.request_timeout, exchange).await.is_err() {
                gate.stats
                    .timed_out
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            drop(admitted);
        });
    }
    gate.stats
        .serving
        .store(false, std::sync::atomic::Ordering::Relaxed);
}

/// One HTTP/1.1 exchange on `stream`.
async fn serve(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    caller: Caller,
    client_chain: Vec<Vec<u8>>,
    route: Arc<Route>,
    limits: HttpLimits,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let (route, caller, client_chain) =
            (Arc::clone(&route), caller.clone(), client_chain.clone());
        async move {
            Ok::<_, Infallible>(
                respond(route, request, caller, client_chain, limits.max_body).await,
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn respond(
    route: Arc<Route>,
    request: Request<Incoming>,
    caller: Caller,
    client_chain: Vec<Vec<u8>>,
    max_body: usize,
) -> Response<Full<Bytes>> {
    let (head, body) = request.into_parts();
    let answer = match Limited::new(body, max_body).collect().await {
        Err(e) if e.is::<LengthLimitError>() => {
            HttpAnswer::text(413, format!("the body exceeds {max_body} bytes\n"))
        }
        Err(_) => HttpAnswer::text(400, "the body could not be read\n"),
        Ok(body) => {
            let request = HttpRequest {
                method: head.method,
                path: head.uri.path().to_owned(),
                headers: head.headers,
                body: body.to_bytes(),
                caller,
                client_chain,
            };
            tokio::task::spawn_blocking(move || route(&request))
                .await
                .unwrap_or_else(|_| HttpAnswer::text(500, "the request failed\n"))
        }
    };
    let mut response = Response::builder()
        .status(answer.status)
        .header(header::CONTENT_TYPE, answer.content_type);
    for (name, value) in &answer.headers {
        response = response.header(*name, value);
    }
    response.body(Full::new(answer.body)).unwrap_or_else(|_| {
        let mut fallback = Response::new(Full::new(Bytes::from_static(b"bad answer\n")));
        *fallback.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}

/// Fetches `url` (`http://host:port/path`: CRLs are published over plain HTTP) with one GET;
/// the body when the answer is `200`, within `deadline` and at most `max_body` bytes.
pub async fn get(url: &str, deadline: Duration, max_body: usize) -> Result<Bytes, String> {
    let (status, body) = exchange(
        hyper::Method::GET,
        url,
        &[],
        Bytes::new(),
        deadline,
        max_body,
    )
    .await?;
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    Ok(body)
}

/// One HTTP/1.1 request to `url` (`http://host[:port]/path`) with `headers` and `body`, on a
/// connection of its own: the answer's status and body (at most `max_body` bytes), all
/// within `deadline`.
pub async fn exchange(
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    deadline: Duration,
    max_body: usize,
) -> Result<(u16, Bytes), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are fetched"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("{url}: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    };
    timeout(deadline, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {deadline:?}"))?
}
