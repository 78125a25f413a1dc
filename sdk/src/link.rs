//! The byte stream under an agent's connection: TLS over TCP (the default), or plain TCP where
//! the gateway's operator allows it. One [`Link`] is shared by a connection's two halves, so a
//! split connection reads on one thread and writes on another.
//!
//! Over TLS the halves share one rustls state machine behind a mutex, held only to hand it
//! bytes or take bytes from it, never across a blocking socket call: the reader reads records
//! off the socket unlocked, the writer encrypts under the lock and writes unlocked (with a
//! second lock that keeps the records of concurrent writes in order). So a writer blocked on a
//! full socket never stops the reader, as with plain TCP. The reader never writes: what TLS
//! wants to send in answer to the gateway (a key update) leaves with the writer's next write,
//! which heartbeats make periodic.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    sync::{Arc, Mutex, MutexGuard},
};

use rustls::{ClientConfig, ClientConnection, pki_types::ServerName};

/// Bytes of TLS records read off the socket at once.
const RECORDS: usize = 16 * 1024 + 512;

/// TLS records read off the socket and not yet taken by TLS.
#[derive(Debug, Default)]
pub(crate) struct Records {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

/// A connection's stream, cheap to clone for the other half.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    sock: Arc<TcpStream>,
    tls: Option<Arc<Tls>>,
}

#[derive(Debug)]
struct Tls {
    conn: Mutex<ClientConnection>,
    /// Held from encrypting a write to its last byte on the socket.
    writing: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> io::Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| io::Error::other("TLS state poisoned by a panic"))
}

impl Link {
    /// Plain TCP.
    pub(crate) fn plain(sock: TcpStream) -> Link {
        Link {
            sock: Arc::new(sock),
            tls: None,
        }
    }

    /// TLS over `sock` with `config`, the handshake completed (within the socket's timeouts).
    pub(crate) fn tls(sock: TcpStream, config: Arc<ClientConfig>) -> io::Result<Link> {
        // The server is identified by its certificate's URI, which `config` checks; the name
        // here is a placeholder.
        let name = ServerName::try_from("agw.invalid").map_err(io::Error::other)?;
        let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut s = &sock;
        while conn.is_handshaking() {
            conn.complete_io(&mut s)?;
        }
        Ok(Link {
            sock: Arc::new(sock),
            tls: Some(Arc::new(Tls {
                conn: Mutex::new(conn),
                writing: Mutex::new(()),
            })),
        })
    }

    /// The TCP socket (for timeouts and shutdown).
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Whether the stream is TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The identity the server's TLS certificate names (`None` over plain TCP).
    pub(crate) fn server_identity(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let conn = lock(&tls.conn).ok()?;
        agw_tls::peer_identity(conn.peer_certificates()?)
    }

    /// Reads what is there, blocking up to the socket's read timeout; 0 when the gateway
    /// closed the connection. `records` keeps TLS records read off the socket and not yet
    /// taken by TLS, between calls.
    pub(crate) fn read(&self, buf: &mut [u8], records: &mut Records) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return (&*self.sock).read(buf);
        };
        loop {
            {
                let mut conn = lock(&tls.conn)?;
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    // Closed without TLS's close_notify: closed all the same.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // Records already read: TLS takes what it can hold, then the plaintext goes
                // out before it takes more.
                if records.start < records.end {
                    let mut pending = &records.bytes[records.start..records.end];
                    let before = pending.len();
                    conn.read_tls(&mut pending)?;
                    records.start += before - pending.len();
                    conn.process_new_packets().map_err(io::Error::other)?;
                    continue;
                }
            }
            // Off the socket, unlocked: the writer may encrypt and write meanwhile.
            records.bytes.resize(RECORDS, 0);
            let n = (&*self.sock).read(&mut records.bytes)?;
            if n == 0 {
                return Ok(0);
            }
            (records.start, records.end) = (0, n);
        }
    }

    /// Writes all of `data`.
    pub(crate) fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return (&*self.sock).write_all(data);
        };
        let _writing = lock(&tls.writing)?;
        let mut records = Vec::with_capacity(data.len() + 64);
        {
            let mut conn = lock(&tls.conn)?;
            // TLS takes as much plaintext as its buffer holds (64 KiB): encrypt, take the
            // records out, and go on.
            let mut rest = data;
            while !rest.is_empty() {
                let taken = conn.writer().write(rest)?;
                rest = &rest[taken..];
                while conn.wants_write() {
                    conn.write_tls(&mut records)?;
                }
                if taken == 0 && !rest.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "TLS took none of the data",
                    ));
                }
            }
        }
        (&*self.sock).write_all(&records)
    }
}
