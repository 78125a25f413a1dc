//! Links to peer gateways' relays: accepted on the shard's peer listener (mutual TLS, the
//! client must be a gateway) and dialled to every peer the control plane names.

use std::{net::SocketAddr, os::fd::AsRawFd, rc::Rc, sync::Arc, time::Duration};

use agw_proto::identity::GatewayId;
use agw_tls::{leaf_serial, peer_identity};
use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::{
    net::{TcpListener, TcpStream},
    spawn_local,
    timer::sleep,
};
use rustls::pki_types::ServerName;

use super::{
    Shard,
    conn::{Conn, ConnKind, Stream},
    serve,
};
/// Peer gateways' links: mutual TLS; the client certificate must name a gateway.
pub(super) async fn accept_peers(shard: Rc<Shard>, listener: TcpListener) {
    let Some(tls) = shard.peer_tls.clone() else {
        return;
    };
    let acceptor = TlsAcceptor::from(tls.server.clone());
    loop {
        let Ok(stream) = listener.accept().await else {
            sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (shard, acceptor) = (shard.clone(), acceptor.clone());
        spawn_local(async move {
            let fd = stream.as_raw_fd();
            let handshake = acceptor.accept(stream);
            let timeout = sleep(Duration::from_secs(5));
            let Some(Ok(tls)) = futures_lite::future::or(async { Some(handshake.await) }, async {
                timeout.await;
                None
            })
            .await
            else {
                return;
            };
            let presented = tls.get_ref().1.peer_certificates();
            let identity = presented.and_then(peer_identity);
            let serial = presented.and_then(leaf_serial).unwrap_or_default();
            let Some(gateway) = identity.filter(|i| GatewayId::parse(i).is_ok()) else {
                return;
            };
            let kind = ConnKind::Peer {
                gateway,
                link: None,
            };
            if let Some(conn) = shard.new_conn_fd(Stream::Server(Box::new(tls)), fd, kind) {
                // Its authority's CRL may list it later: the link closes then.
                *conn.serial.borrow_mut() = serial;
                serve(shard.clone(), conn).await;
            }
        })
        .detach();
    }
}

/// Keeps this shard's link to peer `index` up while it is wanted: dial, serve, back off.
pub(super) async fn keep_link(shard: Rc<Shard>, index: u32) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some((gateway, address)) = shard.wanted.borrow().get(&index).cloned() else {
            return;
        };
        if let Some(conn) = shard.dial(index, &gateway, address).await {
            tracing::info!(shard = shard.id, peer = %gateway, %address, "relay link up");
            backoff = Duration::from_millis(100);
            shard.links.borrow_mut().insert(index, conn.clone());
            serve(shard.clone(), conn).await;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl Shard {
    /// Dials peer `index`'s relay with mutual TLS; the server must prove `gateway`.
    pub(super) async fn dial(
        &self,
        index: u32,
        gateway: &GatewayId,
        address: SocketAddr,
    ) -> Option<Rc<Conn>> {
        let tls = self.peer_tls.clone()?;
        let config = Arc::new(tls.identity.client_config(gateway.as_str()).ok()?);
        let stream = TcpStream::connect_timeout(address, Duration::from_secs(2))
            .await
            .ok()?;
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        // Servers are named by their certificate's URI; the verifier checks it, not this name.
        let name = ServerName::try_from("peer.invalid").ok()?;
        let handshake = TlsConnector::from(config).connect(name, stream);
        let tls = futures_lite::future::or(async { handshake.await.ok() }, async {
            sleep(Duration::from_secs(5)).await;
            None
        })
        .await?;
        let serial = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(leaf_serial)
            .unwrap_or_default();
        let kind = ConnKind::Peer {
            gateway: gateway.to_string(),
            link: Some(index),
        };
        let conn = self.new_conn_fd(Stream::Client(Box::new(tls)), fd, kind)?;
        *conn.serial.borrow_mut() = serial;
        Some(conn)
    }
}
