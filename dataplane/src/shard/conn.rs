//! A shard's connections: their byte streams (plain TCP for agents, mutual TLS for peer links),
//! write queues, and the tasks that read into and write out of them.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    io::{self, IoSlice},
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use agw_proto::{
    Admission, FrameDecoder, HEADER_LEN, Kind, WriteBatch, identity::AgentId, rate::Bucket,
};
use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWrite, future::poll_fn};
use futures_rustls::{client, server};
use glommio::net::TcpStream;
use nix::{
    errno::Errno,
    sys::socket::{MsgFlags, Shutdown, SockaddrStorage, sendmsg, shutdown},
};

use super::Shard;
use crate::{access::AccessSession, adapter::Adapter, translation::Recipient};
/// A one-waiter wake-up flag.
#[derive(Default)]
pub(super) struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub(super) fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub(super) async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                return Poll::Ready(());
            }
            let mut slot = self.waker.borrow_mut();
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnState {
    Open,
    /// Write what is queued, then close.
    Flushing(Instant),
    Closed,
}

/// Where a relayed frame ends in a write queue: counted delivered once written (if its
/// connection closes first, the write batch still holds its body, to NACK it).
pub(super) struct Mark {
    pub(super) end: u64,
    /// When the read that brought it finished.
    pub(super) since: Instant,
}

#[derive(Default)]
pub(super) struct Outbound {
    pub(super) batch: WriteBatch,
    pub(super) marks: VecDeque<Mark>,
    pub(super) pushed: u64,
    pub(super) written: u64,
}

/// A connection's byte stream: plain TCP for agents, mutual TLS for peer links.
pub(super) enum Stream {
    Plain(TcpStream),
    Server(Box<server::TlsStream<TcpStream>>),
    Client(Box<client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The socket's descriptor.
    pub(super) fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Server(s) => s.get_ref().0.as_raw_fd(),
            Stream::Client(s) => s.get_ref().0.as_raw_fd(),
        }
    }

    pub(super) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    pub(super) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Client(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
}

/// What an agent may send before its access completes: the access request alone, its
/// certificate chain within 16 KiB. Anything else is refused at its header, unbuffered.
pub(super) const BEFORE_ACCESS: Admission = Admission::only(&[Kind::AccessRequest], 16 * 1024);
/// What an accessed agent sends: data frames, heartbeats, its deregistration.
pub(super) const ACCESSED: Admission = Admission::only(
    &[
        Kind::AgentMessage,
        Kind::Ack,
        Kind::Nack,
        Kind::Heartbeat,
        Kind::Deregister,
    ],
    4 * 1024,
);
/// What a peer's relay link carries: data frames only.
pub(super) const PEER_LINK: Admission =
    Admission::only(&[Kind::AgentMessage, Kind::Ack, Kind::Nack], 0);

/// Who is on the other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConnKind {
    /// An agent: access first, then its own frames.
    Agent,
    /// A peer gateway (its ID): frames of other domains' agents, relayed. `link`: the peer
    /// index when this shard dialled it as that peer's link.
    Peer { gateway: String, link: Option<u32> },
}

pub(super) struct Conn {
    pub(super) id: u32,
    pub(super) stream: RefCell<Stream>,
    /// The socket's descriptor (an A2A server's connection is dialled again under it).
    pub(super) fd: Cell<RawFd>,
    pub(super) plain: bool,
    pub(super) kind: ConnKind,
    pub(super) session: RefCell<Option<AccessSession>>,
    pub(super) agent: RefCell<Option<AgentId>>,
    pub(super) serial: RefCell<Vec<u8>>,
    pub(super) decoder: RefCell<FrameDecoder>,
    pub(super) out: RefCell<Outbound>,
    pub(super) state: Cell<ConnState>,
    /// The access reply is queued but the agent's route is not visible yet: hold writes.
    pub(super) hold: Cell<bool>,
    /// AgentDown was told to the control plane.
    pub(super) down_reported: Cell<bool>,
    /// Marked congested for other shards.
    pub(super) congested: Cell<bool>,
    /// Read anything since the last tick.
    pub(super) active: Cell<bool>,
    pub(super) writer: Notify,
    /// The writer ended (after flushing, when the connection was closing).
    pub(super) flushed: Notify,
    /// Readers waiting for this queue to fall below the soft limit.
    pub(super) space: RefCell<Vec<Waker>>,
    /// An agent's send allowance, made at its first message.
    pub(super) allowance: Cell<Option<Allowance>>,
    /// An adapter's bytes are being written.
    pub(super) writing: Cell<bool>,
    /// Which protocol the client speaks is not known yet (a TLS client that named none in
    /// ALPN): its first bytes tell, and writes wait for them.
    pub(super) identifying: Cell<bool>,
    /// An MQTT or A2A client's translation to and from native frames (`crate::adapter`).
    pub(super) adapter: RefCell<Option<Box<Adapter>>>,
    /// Frames an adapter made while writing (an A2A client's ACK of a reply) wait in the
    /// decoder: this wakes the reader to relay them.
    pub(super) upstream: Notify,
    /// What the accessed agent understands, when it said (and translation is on).
    pub(super) recipient: RefCell<Option<Arc<Recipient>>>,
    /// Messages for this connection in the translation pool: while any is, the next ones
    /// follow them through it, so the order holds.
    pub(super) translating: Cell<u32>,
}

/// An agent's send allowance: its bucket, when last taken from, and the (rate, burst) it was
/// made for (new limits make a new one).
#[derive(Clone, Copy)]
pub(super) struct Allowance {
    bucket: Bucket,
    last: Instant,
    made_for: (u32, u32),
}

impl Conn {
    /// Takes one message from the agent's allowance of `rate` a second and `burst` at once
    /// (0: one second's worth) at `now`, or says how long until it may send.
    pub(super) fn allow(&self, now: Instant, rate: u32, burst: u32) -> Result<(), Duration> {
        let burst = if burst == 0 { rate } else { burst };
        let mut a = match self.allowance.get() {
            Some(a) if a.made_for == (rate, burst) => a,
            _ => Allowance {
                bucket: Bucket::new(f64::from(rate), f64::from(burst)),
                last: now,
                made_for: (rate, burst),
            },
        };
        let taken = a.bucket.take(now.saturating_duration_since(a.last));
        a.last = now.max(a.last);
        self.allowance.set(Some(a));
        taken
    }

    pub(super) fn is_open(&self) -> bool {
        self.state.get() == ConnState::Open
    }

    pub(super) fn queued(&self) -> usize {
        self.out.borrow().batch.len()
    }

    /// Nothing to write: no frame queued, no MQTT packet made.
    fn nothing_to_write(&self) -> bool {
        self.out.borrow().batch.is_empty()
            && !self.adapter.borrow().as_ref().is_some_and(|a| a.has_out())
    }

    /// Whether a lost socket is dialled again under this connection (an A2A server agent's:
    /// its route stays while the server closes idle connections).
    pub(super) fn redials(&self) -> bool {
        matches!(
            self.adapter.borrow().as_deref(),
            Some(Adapter::A2aServer(_))
        )
    }

    /// Ends the socket both ways: the reader sees end of file, the writer an error.
    pub(super) fn shut(&self) {
        let _ = shutdown(self.fd.get(), Shutdown::Both);
    }
}

/// Reads what the connection has into its decoder's buffer (at most `chunk` bytes). A TLS
/// connection's records are read off the socket into `records` (the shard's, shared by its
/// connections) in one large read and decrypted into the buffer (see [`poll_read_tls`]).
pub(super) async fn read(
    conn: &Conn,
    chunk: usize,
    records: &RefCell<Vec<u8>>,
) -> io::Result<usize> {
    poll_fn(|cx| {
        let mut decoder = conn.decoder.borrow_mut();
        let mut adapted = conn.adapter.borrow_mut();
        // An adapted client's bytes go to its adapter, which makes frames for the decoder.
        let buf = match adapted.as_mut() {
            Some(adapter) => {
                let input = adapter.input();
                input.reserve(chunk);
                input
            }
            None => decoder.read_buf(chunk),
        };
        match &mut *conn.stream.borrow_mut() {
            Stream::Plain(s) => {
                let start = buf.len();
                buf.resize(start + chunk, 0);
                let poll = Pin::new(s).poll_read(cx, &mut buf[start..]);
                let got = match &poll {
                    Poll::Ready(Ok(n)) => *n,
                    _ => 0,
                };
                buf.truncate(start + got);
                poll
            }
            Stream::Server(s) => {
                let (io, tls) = s.get_mut();
                poll_read_tls(io, tls, cx, buf, chunk, &mut records.borrow_mut())
            }
            Stream::Client(s) => {
                let (io, tls) = s.get_mut();
                poll_read_tls(io, tls, cx, buf, chunk, &mut records.borrow_mut())
            }
        }
    })
    .await
}

/// Reads TLS records off `io` into `records` in reads as large as `most` bytes of plaintext
/// can come from (plaintext is never longer than its records), hands them to TLS and appends
/// what they decrypt to to `out`, until the socket has nothing more or `most` bytes came.
/// rustls's own reader would read the socket 4 KiB at a time (a system call per four 1 KiB
/// messages), and reading through it would need `out` cleared first.
fn poll_read_tls<D>(
    io: &mut TcpStream,
    tls: &mut rustls::ConnectionCommon<D>,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
    most: usize,
    records: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    if records.len() < RECORDS_READ {
        records.resize(RECORDS_READ, 0);
    }
    let mut filled = match plaintext(tls, out, most) {
        Ok(n) => n,
        Err(e) => return Poll::Ready(Err(e)),
    };
    loop {
        let room = (most - filled).min(records.len());
        if room == 0 {
            return Poll::Ready(Ok(filled));
        }
        let n = match Pin::new(&mut *io).poll_read(cx, &mut records[..room]) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) if filled == 0 => return Poll::Ready(Err(e)),
            Poll::Pending if filled == 0 => return Poll::Pending,
            // What was decrypted goes up first; the error or the wait comes next time.
            Poll::Ready(Err(_)) | Poll::Pending => return Poll::Ready(Ok(filled)),
        };
        if n == 0 {
            // End of stream: 0 (closed) unless plaintext came before it.
            return Poll::Ready(Ok(filled));
        }
        let mut pending = &records[..n];
        while !pending.is_empty() {
            if let Err(e) = tls.read_tls(&mut pending) {
                return Poll::Ready(Err(e));
            }
            if let Err(e) = tls.process_new_packets() {
                return Poll::Ready(Err(io::Error::other(e)));
            }
            match plaintext(tls, out, most - filled) {
                Ok(got) => filled += got,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Bytes of records asked of the socket at once: four full TLS records.
const RECORDS_READ: usize = 64 * 1024;

/// Appends the plaintext TLS holds to `out`, at most `most` bytes: how much.
fn plaintext<D>(
    tls: &mut rustls::ConnectionCommon<D>,
    out: &mut BytesMut,
    most: usize,
) -> io::Result<usize> {
    let mut reader = tls.reader();
    let mut got = 0;
    while got < most {
        let held = match std::io::BufRead::fill_buf(&mut reader) {
            // Empty: the peer closed (close_notify).
            Ok([]) => break,
            Ok(held) => held,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        let n = held.len().min(most - got);
        out.extend_from_slice(&held[..n]);
        std::io::BufRead::consume(&mut reader, n);
        got += n;
    }
    Ok(got)
}

pub(super) async fn wait_for_space(conn: &Conn, soft: usize) {
    poll_fn(|cx| {
        if !conn.is_open() || conn.queued() <= soft {
            return Poll::Ready(());
        }
        conn.space.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    })
    .await;
}

/// Segments (a relayed frame is two: its header and its body) one vectored write takes: 512,
/// half the kernel's limit (`UIO_MAXIOV`), so a read of a few hundred small frames leaves in
/// one `sendmsg`, not one per 32 frames (8 KiB of stack).
const WRITE_SEGMENTS: usize = 512;

/// Writes one connection's queue until it closes, then says so.
pub(super) async fn write_loop(shard: Rc<Shard>, conn: Rc<Conn>) {
    write_queue(&shard, &conn).await;
    conn.flushed.notify();
}

/// Vectored writes of as many frames as are queued.
pub(super) async fn write_queue(shard: &Shard, conn: &Conn) {
    loop {
        loop {
            let empty = conn.nothing_to_write();
            match conn.state.get() {
                ConnState::Closed => return,
                ConnState::Flushing(_) if empty => {
                    conn.shut();
                    return;
                }
                _ => {}
            }
            if !empty && !conn.hold.get() {
                break;
            }
            conn.writer.wait().await;
        }
        if conn.adapter.borrow().is_some() {
            let (n, written) = write_adapted(shard, conn).await;
            if written.is_ok() {
                shard.wrote(conn, n);
                continue;
            }
            conn.shut();
            if !conn.redials() {
                return;
            }
            // An A2A server's connection: its adapter took the frames and answers for them
            // (NACKed when the connection is found gone); writes wait for the reader to dial
            // again.
            shard.wrote(conn, n);
            conn.hold.set(true);
            continue;
        }
        if !conn.plain {
            match write_tls(shard, conn).await {
                Ok(n) => {
                    shard.wrote(conn, n);
                    continue;
                }
                Err(_) => {
                    conn.shut();
                    return;
                }
            }
        }
        let sent = {
            let out = conn.out.borrow();
            // Up to WRITE_SEGMENTS segments per call, gathered on the stack.
            let mut slices = [IoSlice::new(&[]); WRITE_SEGMENTS];
            let n = slices
                .iter_mut()
                .zip(out.batch.segments())
                .map(|(slot, segment)| *slot = IoSlice::new(segment))
                .count();
            sendmsg::<SockaddrStorage>(
                conn.fd.get(),
                &slices[..n],
                &[],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            )
        };
        let n = match sent {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            // The socket is full: let glommio wait for it to drain and write the first segment.
            Err(Errno::EAGAIN) => {
                let wrote = poll_fn(|cx| {
                    let out = conn.out.borrow();
                    let Some(front) = out.batch.front() else {
                        return Poll::Ready(Ok(0));
                    };
                    conn.stream.borrow_mut().poll_write(cx, front)
                })
                .await;
                match wrote {
                    Ok(n) => n,
                    Err(_) => {
                        conn.shut();
                        return;
                    }
                }
            }
            Err(_) => {
                conn.shut();
                return;
            }
        };
        shard.wrote(conn, n);
    }
}

/// A TLS write: the queued frames (up to 64 KiB) gathered into one buffer, encrypted and
/// flushed. Returns the queued bytes written.
pub(super) async fn write_tls(shard: &Shard, conn: &Conn) -> io::Result<usize> {
    let mut buf = std::mem::take(&mut *shard.tls_out.borrow_mut());
    buf.clear();
    {
        let out = conn.out.borrow();
        for s in out.batch.segments() {
            if buf.len() + s.len() > 64 * 1024 && !buf.is_empty() {
                break;
            }
            buf.extend_from_slice(s);
        }
    }
    write_all(conn, &buf).await?;
    let n = buf.len();
    *shard.tls_out.borrow_mut() = buf;
    Ok(n)
}

/// An adapted client's write: the whole frames queued (64 KiB of them, or one larger), made
/// into its protocol by its adapter, then the adapter's own answers; encrypted and flushed.
/// Frames the adapter answers with go to the decoder, and the reader is woken to relay them.
/// Returns the queued bytes the adapter took, and whether its bytes were written.
async fn write_adapted(shard: &Shard, conn: &Conn) -> (usize, io::Result<()>) {
    let (consumed, packets) = {
        let out = conn.out.borrow();
        let mut frames = Vec::new();
        let mut whole = 0;
        for segment in out.batch.segments() {
            frames.extend_from_slice(segment);
            whole = whole_frames(&frames);
            if whole >= 64 * 1024 && whole == frames.len() {
                break;
            }
        }
        let mut decoder = FrameDecoder::new(shard.config.limits);
        decoder.extend_from_slice(&frames[..whole]);
        let mut adapted = conn.adapter.borrow_mut();
        let Some(adapter) = adapted.as_mut() else {
            return (0, Ok(()));
        };
        let mut up = shard.encoder.borrow_mut();
        while let Ok(Some(frame)) = decoder.decode() {
            if let Ok(message) = frame.message() {
                adapter.to_client(message, &mut up);
            }
        }
        let answers = up.take();
        if !answers.is_empty() {
            conn.decoder.borrow_mut().extend_from_slice(&answers);
            conn.upstream.notify();
        }
        (whole, adapter.take_out())
    };
    conn.writing.set(true);
    let written = write_all(conn, &packets).await;
    conn.writing.set(false);
    if let Err(e) = written {
        return (consumed, Err(e));
    }
    // An A2A client refused (or one that asked to close) is closed once answered.
    if conn
        .adapter
        .borrow()
        .as_ref()
        .is_some_and(|a| a.is_closed())
    {
        shard.close_after_flush(conn);
    }
    (consumed, Ok(()))
}

/// Writes `bytes` whole to the connection's stream (TLS encrypts them) and flushes.
async fn write_all(conn: &Conn, bytes: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        let n = poll_fn(|cx| conn.stream.borrow_mut().poll_write(cx, &bytes[done..])).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    poll_fn(|cx| conn.stream.borrow_mut().poll_flush(cx)).await
}

/// How many leading bytes of `frames` are whole frames.
fn whole_frames(frames: &[u8]) -> usize {
    let mut at = 0;
    while let Some(header) = frames.get(at..at + HEADER_LEN) {
        let body = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let end = at + HEADER_LEN + body;
        if end > frames.len() {
            break;
        }
        at = end;
    }
    at
}
