//! A2A server agents: the shard an agent hashes to keeps an HTTP connection (over mutual TLS
//! for an `https://` URL, the server proving it is the agent) to its A2A server and is its
//! route (`Route::Local` on that connection), so whatever the relay routes to the
//! agent goes through [`crate::a2a_client`] as `SendMessage` requests.
//!
//! A server closes idle connections (uvicorn after 5 s): the connection is dialled again
//! under the same route, and only the requests it had not answered are NACKed. When the
//! server cannot be reached, the connection closes (the route turns `Offline`) and is dialled
//! again with back-off while the agent stays registered.

use std::{net::SocketAddr, rc::Rc, sync::Arc, time::Duration};

use agw_proto::{FrameDecoder, Message, a2a_url::A2aUrl, identity::AgentId};
use futures_rustls::TlsConnector;
use glommio::{net::TcpStream, timer::sleep};
use rustls::pki_types::ServerName;

use super::{
    Shard,
    conn::{Conn, ConnKind, Stream},
    serve,
};
use crate::{a2a_client::A2aClient, adapter::Adapter, events::ShardEvent};

/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps a connection to `agent`'s A2A server while it is wanted: dial, serve, back off.
pub(super) async fn keep_a2a_server(shard: Rc<Shard>, agent: AgentId) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some((endpoint, address)) = shard.a2a_wanted.borrow().get(&agent).cloned() else {
            return;
        };
        match shard.dial_a2a_server(&agent, endpoint, address).await {
            Some(conn) => {
                tracing::info!(shard = shard.id, %agent, %address, "A2A server connected");
                backoff = Duration::from_millis(100);
                shard
                    .a2a_conns
                    .borrow_mut()
                    .insert(agent.clone(), conn.clone());
                serve(shard.clone(), conn.clone()).await;
                let mut conns = shard.a2a_conns.borrow_mut();
                if conns.get(&agent).is_some_and(|c| c.id == conn.id) {
                    conns.remove(&agent);
                }
            }
            None => {
                tracing::debug!(shard = shard.id, %agent, %address, "A2A server unreachable");
            }
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl Shard {
    /// Dials `agent`'s A2A server at `address`: plain TCP for `http://`; for `https://`, TLS
    /// with this gateway's certificate, the server proving with its ACA certificate that it is
    /// `agent`.
    async fn connect_a2a(
        &self,
        agent: &AgentId,
        url: &A2aUrl,
        address: SocketAddr,
    ) -> Option<Stream> {
        let tcp = TcpStream::connect_timeout(address, DIAL_TIMEOUT)
            .await
            .ok()?;
        let _ = tcp.set_nodelay(true);
        if !url.tls {
            return Some(Stream::Plain(tcp));
        }
        let identity = &self.peer_tls.as_ref()?.identity;
        let mut config = match identity.client_config(agent.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%agent, error = %e, "no TLS client for the A2A server");
                return None;
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The verifier checks the certificate's URI (the agent ID); the name is for SNI.
        let host = url
            .host
            .rsplit_once(':')
            .map_or(url.host.as_str(), |(h, _)| h)
            .trim_matches(['[', ']']);
        let name = ServerName::try_from(host.to_owned())
            .or_else(|_| ServerName::try_from("a2a.invalid"))
            .ok()?;
        let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
        let tls = futures_lite::future::or(async { Some(handshake.await) }, async {
            sleep(DIAL_TIMEOUT).await;
            None
        })
        .await?;
        match tls {
            Ok(tls) => Some(Stream::Client(Box::new(tls))),
            Err(e) => {
                tracing::warn!(%agent, error = %e, "the A2A server's TLS handshake failed");
                None
            }
        }
    }

    /// Dials `agent`'s A2A server and makes the connection its route.
    async fn dial_a2a_server(
        &self,
        agent: &AgentId,
        endpoint: A2aUrl,
        address: SocketAddr,
    ) -> Option<Rc<Conn>> {
        let stream = self.connect_a2a(agent, &endpoint, address).await?;
        let conn = self.new_conn(stream, ConnKind::Agent)?;
        // No access: the registry vouched for the agent when it registered the URL.
        *conn.session.borrow_mut() = None;
        conn.decoder
            .borrow_mut()
            .set_admission(super::conn::ACCESSED);
        let max_body = self.config.limits.max_data_body as usize + 64 * 1024;
        let client = A2aClient::new(agent.to_string(), endpoint, max_body)
            .answer_within(self.config.a2a_answer_within);
        *conn.adapter.borrow_mut() = Some(Box::new(Adapter::A2aServer(client)));
        *conn.recipient.borrow_mut() = self.recipient(agent, &[], false);
        *conn.agent.borrow_mut() = Some(agent.clone());
        self.counter().a2a_server_connection();
        let _ = self.events.send(ShardEvent::AgentUp {
            agent: agent.clone(),
            shard: self.id,
            connection: conn.id,
            serial: Vec::new(),
            scopes: Vec::new(),
        });
        Some(conn)
    }

    /// The A2A server ended `conn`'s socket (or a write failed): the requests it had not
    /// answered are NACKed, and a new socket is dialled under the same connection and route.
    /// `false` when `conn` is no A2A server's, is closing, or the server cannot be reached:
    /// the connection closes then.
    pub(super) async fn redial(&self, conn: &Conn) -> bool {
        if !conn.redials() || !conn.is_open() {
            return false;
        }
        conn.hold.set(true);
        conn.shut();
        // A write under way ends with the old socket: wait for it, so no byte of a request
        // goes to the new one.
        while conn.writing.get() {
            sleep(Duration::from_millis(1)).await;
        }
        self.lose_calls(conn);
        self.flush_cross().await;
        let Some(agent) = conn.agent.borrow().clone() else {
            return false;
        };
        let Some((url, address)) = self.a2a_wanted.borrow().get(&agent).cloned() else {
            return false;
        };
        let Some(stream) = self.connect_a2a(&agent, &url, address).await else {
            return false;
        };
        if !conn.is_open() {
            return false;
        }
        conn.fd.set(stream.raw_fd());
        *conn.stream.borrow_mut() = stream;
        self.counter().a2a_server_connection();
        conn.hold.set(false);
        conn.writer.notify();
        true
    }

    /// NACKs (`DESTINATION_OFFLINE`) the requests an A2A server's connection had not answered,
    /// to their senders.
    pub(super) fn lose_calls(&self, conn: &Conn) {
        let made = {
            let mut adapter = conn.adapter.borrow_mut();
            let Some(Adapter::A2aServer(client)) = adapter.as_deref_mut() else {
                return;
            };
            let mut up = self.encoder.borrow_mut();
            client.lost(&mut up);
            up.take()
        };
        let mut decoder = FrameDecoder::new(self.config.limits);
        decoder.extend_from_slice(&made);
        while let Ok(Some(frame)) = decoder.decode() {
            // Made by the adapter for frames counted delivered to it: not counted again.
            if let Ok(nack @ Message::Nack(_)) = frame.message() {
                let Message::Nack(n) = &nack else { continue };
                let to = n.destination.clone();
                self.send_made(&to, &nack);
            }
        }
    }
}
