//! A blocking request/reply connection speaking the framed protocol over TCP: what an agent
//! uses to reach a standalone authority or registry. (Access to gateways, with heartbeats and
//! pipelined messages, comes with the dataplane.)

use std::{
    io::{self, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use rustls::{ClientConfig, ClientConnection, StreamOwned, pki_types::ServerName};

use agw_proto::{
    DecodeError, EncodeError, FrameDecoder, FrameEncoder, FrameError, FrameLimits, Message,
};

/// A request that got no reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The socket failed, timed out or closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The peer's bytes are not frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer's reply is not a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The request cannot be framed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// One connection (TCP, or TLS over TCP), one request at a time.
#[derive(Debug)]
pub struct Connection<S = TcpStream> {
    stream: S,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
}

/// A connection over TLS.
pub type TlsConnection = Connection<StreamOwned<ClientConnection, TcpStream>>;

fn tcp(addr: impl ToSocketAddrs, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Connection {
    /// Connects over plain TCP; every later read and write times out after `timeout`.
    pub fn connect(
        addr: impl ToSocketAddrs,
        timeout: Duration,
    ) -> Result<Connection, ConnectionError> {
        Ok(Connection::over(tcp(addr, timeout)?))
    }
}

impl TlsConnection {
    /// Connects over TLS with `config` (which decides whom to trust and which identity the
    /// server must have; see `agw_aca::tls`), and completes the handshake.
    pub fn connect_tls(
        addr: impl ToSocketAddrs,
        timeout: Duration,
        config: Arc<ClientConfig>,
    ) -> Result<TlsConnection, ConnectionError> {
        // Servers are identified by their certificate's URI, not a DNS name; the verifier in
        // `config` checks it, so the name here is a placeholder.
        let name = ServerName::try_from("agw.invalid").map_err(io::Error::other)?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp(addr, timeout)?);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Connection::over(stream))
    }
}

impl<S: Read + Write> Connection<S> {
    /// Speaks the protocol over an established stream.
    pub fn over(stream: S) -> Connection<S> {
        Connection {
            stream,
            decoder: FrameDecoder::new(FrameLimits::default()),
            encoder: FrameEncoder::new(FrameLimits::default()),
        }
    }

    /// Sends `request` and returns the next message the peer sends.
    pub fn request(&mut self, request: impl Into<Message>) -> Result<Message, ConnectionError> {
        self.encoder.push_message(&request.into(), 0)?;
        self.stream.write_all(&self.encoder.take())?;
        loop {
            if let Some(frame) = self.decoder.decode()? {
                return Ok(frame.message()?);
            }
            let buf = self.decoder.read_buf(16 * 1024);
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}
