//! Plain HTTP/1.1 endpoints (hyper): the CRL at its distribution point, Prometheus metrics and
//! health. One request per connection (no keep-alive), headers bounded, the whole exchange
//! under a deadline, connections capped in all and per source like the framed endpoints (a
//! refused one gets `503`). A route is a blocking function of the method and path: it runs on
//! the runtime's blocking pool.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::AsyncWriteExt,
    net::TcpListener,
    runtime::Handle,
    sync::watch,
    time::{Instant, timeout},
};

use crate::{Endpoint, EndpointStats, Gate, PARTING_WRITE, tokio_listener};

/// What a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl HttpAnswer {
    /// A short text answer.
    pub fn text(status: u16, text: impl Into<String>) -> HttpAnswer {
        HttpAnswer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(text.into()),
        }
    }
}

/// Answers a request by its method and path.
pub type Route = dyn Fn(&Method, &str) -> HttpAnswer + Send + Sync;

/// The bounds of an HTTP endpoint.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections open at once. Default 256.
    pub max_connections: usize,
    /// Connections open at once from one source address. Default 16.
    pub max_per_source: usize,
    /// Time for the whole exchange: the request's head arriving and the answer written.
    /// Default 5 s.
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 256,
            max_per_source: 16,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The smallest read buffer hyper takes: it bounds the request head.
const MAX_HEAD: usize = 8 * 1024;

impl Endpoint {
    /// Serves HTTP on `listener` with `route`.
    pub fn http(
        runtime: &Handle,
        listener: std::net::TcpListener,
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
        runtime.spawn(accept(listener, route, limits, gate, stopped));
        Ok(Endpoint {
            addr: Some(addr),
            stats,
            stop,
        })
    }
}

async fn accept(
    listener: TcpListener,
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
        let (gate, route) = (gate.clone(), Arc::clone(&route));
        tokio::spawn(async move {
            let Ok(admitted) = gate.admit(Some(from.ip())) else {
                let refusal = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                                Connection: close\r\n\r\n";
                let _ = timeout(PARTING_WRITE, stream.write_all(refusal)).await;
                return;
            };
            let service = service_fn(move |request: Request<Incoming>| {
                let route = Arc::clone(&route);
                async move { Ok::<_, Infallible>(respond(route, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            if timeout(limits.request_timeout, connection).await.is_err() {
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

async fn respond(route: Arc<Route>, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let answer = tokio::task::spawn_blocking(move || route(&method, &path))
        .await
        .unwrap_or_else(|_| HttpAnswer::text(500, "the request failed\n"));
    Response::builder()
        .status(answer.status)
        .header(header::CONTENT_TYPE, answer.content_type)
        .body(Full::new(answer.body))
        .unwrap_or_else(|_| {
            let mut fallback = Response::new(Full::new(Bytes::from_static(b"bad answer\n")));
            *fallback.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
}
