//! The frame codec, sans-IO.
//!
//! Every message travels in a frame: an 8-byte header, then the protobuf body.
//!
//! ```text
//!  0         1         2         3         4                                  8
//! +---------+---------+---------+---------+----------------------------------+
//! | version |  kind   |  flags  |   hop   |       body length (u32, BE)      |
//! +---------+---------+---------+---------+----------------------------------+
//! | body: the protobuf encoding of the kind's message ...                    |
//! ```
//!
//! `flags` is reserved and must be 0 in version 1. `hop` is the hop limit of data kinds (a relay
//! decrements it and refuses the frame at 0); control kinds must send 0. The body length is
//! checked against the kind's cap as soon as the header is in, before anything is allocated
//! for the body.
//!
//! [`FrameDecoder`] turns bytes read from a connection into [`Frame`]s whose bodies are slices
//! of the read buffer. [`FrameEncoder`] appends frames to one reused buffer, so several frames
//! leave in one write. [`WriteBatch`] queues forwarded frames as a fresh header plus the
//! unchanged body slice, for vectored writes that never copy a payload.

use std::{collections::VecDeque, io::IoSlice};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{
    kind::{DecodeError, EncodeError, Kind, Message, WireMessage},
    pb::ErrorCode,
    view::{DataView, ViewError},
};

/// The protocol version this crate speaks: byte 0 of every frame.
pub const PROTOCOL_VERSION: u8 = 1;
/// Length of the frame header.
pub const HEADER_LEN: usize = 8;
/// No frame body is ever larger than this, whatever the configuration.
pub const HARD_MAX_BODY: u32 = 16 * 1024 * 1024;
/// Hop limit an agent puts on a new data frame unless it chooses another.
pub const DEFAULT_HOP_LIMIT: u8 = 16;

/// Size limits a decoder and an encoder enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest body of a data kind (an agent's message). Default 1 MiB; at most
    /// [`HARD_MAX_BODY`]. Control kinds have fixed caps of their own ([`Kind::max_body`]).
    pub max_data_body: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_data_body: 1024 * 1024,
        }
    }
}

impl FrameLimits {
    /// Checks the limits; returns them unchanged when valid.
    pub fn validate(self) -> Result<Self, String> {
        if self.max_data_body == 0 || self.max_data_body > HARD_MAX_BODY {
            return Err(format!(
                "max_data_body must be between 1 and {HARD_MAX_BODY}, got {}",
                self.max_data_body
            ));
        }
        Ok(self)
    }

    /// Largest body of `kind` these limits accept.
    pub fn max_body(&self, kind: Kind) -> u32 {
        if kind.is_data() {
            kind.max_body().min(self.max_data_body)
        } else {
            kind.max_body()
        }
    }
}

/// A frame header, parsed and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message kind.
    pub kind: Kind,
    /// Hop limit; 0 for control kinds.
    pub hop_limit: u8,
    /// Body length in bytes.
    pub body_len: u32,
}

impl FrameHeader {
    /// The header's eight bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let len = self.body_len.to_be_bytes();
        [
            PROTOCOL_VERSION,
            self.kind.code(),
            0,
            self.hop_limit,
            len[0],
            len[1],
            len[2],
            len[3],
        ]
    }

    /// Parses and checks a header against `limits`.
    pub fn parse(bytes: [u8; HEADER_LEN], limits: &FrameLimits) -> Result<Self, FrameError> {
        let [version, code, flags, hop_limit, l0, l1, l2, l3] = bytes;
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let kind = Kind::from_code(code).ok_or(FrameError::UnknownKind(code))?;
        if flags != 0 || (hop_limit != 0 && !kind.is_data()) {
            return Err(FrameError::ReservedBits {
                kind,
                flags,
                hop_limit,
            });
        }
        let body_len = u32::from_be_bytes([l0, l1, l2, l3]);
        let max = limits.max_body(kind);
        if body_len > max {
            return Err(FrameError::TooLarge {
                kind,
                len: body_len,
                max,
            });
        }
        Ok(FrameHeader {
            kind,
            hop_limit,
            body_len,
        })
    }

    /// The same header for a body of `len` bytes (saturating at `u32::MAX`).
    pub fn with_body_len(self, len: usize) -> FrameHeader {
        FrameHeader {
            body_len: u32::try_from(len).unwrap_or(u32::MAX),
            ..self
        }
    }

    /// Frame length, header included.
    pub fn frame_len(self) -> usize {
        HEADER_LEN + self.body_len as usize
    }
}

/// Bytes that cannot be framed. Framing is lost after any of these: the connection must close
/// (after telling the peer the [`code`](FrameError::code) where the protocol allows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Byte 0 is not a version this decoder speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Byte 1 is not a known kind.
    #[error("unknown message kind 0x{0:02x}")]
    UnknownKind(u8),
    /// Reserved header bits are set.
    #[error("reserved header bits set on {kind}: flags 0x{flags:02x}, hop limit {hop_limit}")]
    ReservedBits {
        /// The frame's kind.
        kind: Kind,
        /// Byte 2.
        flags: u8,
        /// Byte 3.
        hop_limit: u8,
    },
    /// A kind this connection does not take in its current state (see [`Admission`]).
    #[error("{0} is not expected here")]
    NotAdmitted(Kind),
    /// The announced body exceeds the kind's cap.
    #[error("{kind} body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The frame's kind.
        kind: Kind,
        /// Announced body length.
        len: u32,
        /// The cap it exceeds.
        max: u32,
    },
}

impl FrameError {
    /// The code to report to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::UnknownKind(_) => ErrorCode::UnknownKind,
            FrameError::ReservedBits { .. } => ErrorCode::Malformed,
            FrameError::NotAdmitted(_) => ErrorCode::UnexpectedMessage,
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
        }
    }
}

/// One frame off the wire. The body shares the decoder's read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The checked header.
    pub header: FrameHeader,
    /// The protobuf body, a slice of the read buffer.
    pub body: Bytes,
}

impl Frame {
    /// Decodes the body into its message; `bytes` fields slice the body, they do not copy it.
    pub fn message(&self) -> Result<Message, DecodeError> {
        Message::decode(self.header.kind, self.body.clone())
    }

    /// The routing fields of a data frame, without allocating.
    pub fn data_view(&self) -> Result<DataView<'_>, ViewError> {
        DataView::parse(self.header.kind, &self.body)
    }
}

/// Which kinds a decoder takes, and a tighter cap for its control kinds: what a connection
/// in a given state may send, refused at the header, before its body is buffered. (An agent
/// that has not accessed yet sends an access request and nothing else; a peer link carries
/// data frames only.) Data kinds keep the caps of [`FrameLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Bit `code` set: the kind with that code is taken.
    kinds: u128,
    /// Largest body of a control kind.
    control_cap: u32,
}

impl Admission {
    /// Every kind, each up to its own cap.
    pub const ALL: Admission = Admission {
        kinds: u128::MAX,
        control_cap: u32::MAX,
    };

    /// Only `kinds`; their control kinds' bodies at most `control_cap` (and their own cap).
    pub const fn only(kinds: &[Kind], control_cap: u32) -> Admission {
        let mut bits = 0u128;
        let mut i = 0;
        while i < kinds.len() {
            bits |= 1 << kinds[i].code();
            i += 1;
        }
        Admission {
            kinds: bits,
            control_cap,
        }
    }

    /// No kind at all.
    pub const NONE: Admission = Admission {
        kinds: 0,
        control_cap: 0,
    };

    /// Whether `kind` is among these.
    pub const fn takes(&self, kind: Kind) -> bool {
        (self.kinds >> kind.code()) & 1 == 1
    }

    /// Whether a header of `kind` announcing `body_len` bytes is taken.
    fn check(&self, kind: Kind, body_len: u32) -> Result<(), FrameError> {
        if (self.kinds >> kind.code()) & 1 == 0 {
            return Err(FrameError::NotAdmitted(kind));
        }
        if !kind.is_data() && body_len > self.control_cap {
            return Err(FrameError::TooLarge {
                kind,
                len: body_len,
                max: self.control_cap,
            });
        }
        Ok(())
    }
}

/// Incremental frame decoder: feed it bytes as they arrive, take frames as they complete.
///
/// Call order: put bytes in ([`read_buf`](Self::read_buf) then a read into its spare capacity,
/// or [`extend_from_slice`](Self::extend_from_slice)), then call [`decode`](Self::decode) until
/// it returns `Ok(None)`. After an error the decoder keeps returning it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    limits: FrameLimits,
    admission: Admission,
    /// Header of the frame whose body is still arriving.
    pending: Option<FrameHeader>,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`. It allocates nothing until bytes arrive.
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            limits,
            admission: Admission::ALL,
            pending: None,
            failed: None,
        }
    }

    /// From the next header on, takes only what `admission` allows; anything else is a
    /// header error ([`FrameError::NotAdmitted`], or [`FrameError::TooLarge`]).
    pub fn set_admission(&mut self, admission: Admission) {
        self.admission = admission;
    }

    /// The read buffer, with at least `chunk` bytes of spare capacity for the next read. The
    /// buffer grows by what the peer actually sends, never to a size a header merely announced.
    pub fn read_buf(&mut self, chunk: usize) -> &mut BytesMut {
        self.buf.reserve(chunk.max(1));
        &mut self.buf
    }

    /// Gives the read buffer back to the allocator when it holds nothing (no partial frame):
    /// an idle connection then costs no buffer memory. Call it when a read finds the socket
    /// drained. Returns whether it released anything.
    pub fn release_if_idle(&mut self) -> bool {
        if self.buf.is_empty() && self.pending.is_none() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
            return true;
        }
        false
    }

    /// Bytes of buffer memory this decoder holds (what an idle connection costs).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends received bytes.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes received and not yet decoded (a header waiting for its body not included).
    pub fn unread(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the bytes received and not yet decoded: for a connection found to speak another
    /// protocol before any frame was decoded.
    pub fn take_unread(&mut self) -> BytesMut {
        self.buf.split()
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
            + if self.pending.is_some() {
                HEADER_LEN
            } else {
                0
            }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let header = match self.pending.take() {
            Some(h) => h,
            None => {
                let Some(bytes) = self.buf.get(..HEADER_LEN) else {
                    return Ok(None);
                };
                let mut raw = [0u8; HEADER_LEN];
                raw.copy_from_slice(bytes);
                match FrameHeader::parse(raw, &self.limits)
                    .and_then(|h| self.admission.check(h.kind, h.body_len).map(|()| h))
                {
                    Ok(h) => {
                        self.buf.advance(HEADER_LEN);
                        h
                    }
                    Err(e) => {
                        self.failed = Some(e.clone());
                        return Err(e);
                    }
                }
            }
        };
        let len = header.body_len as usize;
        if self.buf.len() < len {
            self.pending = Some(header);
            return Ok(None);
        }
        let body = self.buf.split_to(len).freeze();
        Ok(Some(Frame { header, body }))
    }
}

/// Appends frames to one reused buffer; [`take`](Self::take) hands them out as one write.
#[derive(Debug, Default)]
pub struct FrameEncoder {
    buf: BytesMut,
    limits: FrameLimits,
}

impl FrameEncoder {
    /// An encoder refusing bodies its peers' decoders would refuse under `limits`.
    pub fn new(limits: FrameLimits) -> Self {
        FrameEncoder {
            buf: BytesMut::new(),
            limits,
        }
    }

    /// Appends `msg`. Data kinds get [`DEFAULT_HOP_LIMIT`].
    pub fn push<M: WireMessage>(&mut self, msg: &M) -> Result<(), EncodeError> {
        let hop = if M::KIND.is_data() {
            DEFAULT_HOP_LIMIT
        } else {
            0
        };
        self.append(M::KIND, hop, msg.encoded_len(), |buf| msg.encode_raw(buf))
    }

    /// Appends a data-kind `msg` with an explicit hop limit.
    pub fn push_data<M: WireMessage>(&mut self, msg: &M, hop_limit: u8) -> Result<(), EncodeError> {
        if !M::KIND.is_data() {
            return Err(EncodeError::HopLimitOnControl(M::KIND));
        }
        self.append(M::KIND, hop_limit, msg.encoded_len(), |buf| {
            msg.encode_raw(buf)
        })
    }

    /// Appends any message; `hop_limit` must be 0 for control kinds.
    pub fn push_message(&mut self, msg: &Message, hop_limit: u8) -> Result<(), EncodeError> {
        let kind = msg.kind();
        if hop_limit != 0 && !kind.is_data() {
            return Err(EncodeError::HopLimitOnControl(kind));
        }
        self.append(kind, hop_limit, msg.encoded_len(), |buf| {
            msg.encode_body(buf)
        })
    }

    fn append(
        &mut self,
        kind: Kind,
        hop_limit: u8,
        len: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<(), EncodeError> {
        let max = self.limits.max_body(kind);
        let body_len = u32::try_from(len)
            .ok()
            .filter(|l| *l <= max)
            .ok_or(EncodeError::TooLarge { kind, len, max })?;
        let header = FrameHeader {
            kind,
            hop_limit,
            body_len,
        };
        self.buf.reserve(header.frame_len());
        self.buf.put_slice(&header.to_bytes());
        encode(&mut self.buf);
        Ok(())
    }

    /// Bytes encoded and not yet taken.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is waiting to be taken.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// All frames appended since the last take, as one buffer. The encoder keeps its
    /// allocation for the next frames once the returned bytes are dropped.
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

/// Frames waiting to be written, as segments for one vectored write: forwarded frames are a
/// fresh header followed by their unchanged body slice, so no payload is copied. Headers are
/// held inline, so queueing a frame costs no allocation and one reference count (the body's).
#[derive(Debug, Default)]
pub struct WriteBatch {
    segments: VecDeque<Segment>,
    len: usize,
    frames: usize,
}

#[derive(Debug)]
enum Segment {
    /// A frame header; `start` bytes of it were already written.
    Header { bytes: [u8; HEADER_LEN], start: u8 },
    /// A queued frame's body, whole until it is written whole (`start` bytes of it were), so
    /// a frame cut short can still be read (and answered) when its connection closes.
    Body {
        bytes: Bytes,
        start: usize,
        kind: Kind,
    },
    /// Pre-encoded frames.
    Bytes(Bytes),
}

impl Segment {
    fn as_slice(&self) -> &[u8] {
        match self {
            Segment::Header { bytes, start } => &bytes[usize::from(*start)..],
            Segment::Body { bytes, start, .. } => bytes.get(*start..).unwrap_or_default(),
            Segment::Bytes(b) => b,
        }
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WriteBatch::default()
    }

    /// Queues a frame: `header` (its body length must be `body.len()`) then `body`.
    pub fn push_frame(&mut self, header: FrameHeader, body: Bytes) {
        debug_assert_eq!(header.body_len as usize, body.len());
        self.len += HEADER_LEN;
        self.segments.push_back(Segment::Header {
            bytes: header.to_bytes(),
            start: 0,
        });
        if !body.is_empty() {
            self.len += body.len();
            self.segments.push_back(Segment::Body {
                bytes: body,
                start: 0,
                kind: header.kind,
            });
        }
        self.frames += 1;
    }

    /// Queues bytes that already hold whole frames, e.g. [`FrameEncoder::take`].
    pub fn push_encoded(&mut self, frames: Bytes) {
        self.push_bytes(frames);
    }

    fn push_bytes(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.segments.push_back(Segment::Bytes(b));
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frames queued with [`push_frame`](Self::push_frame) since the batch was last emptied.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The bytes waiting, segment by segment, in order.
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> {
        self.segments.iter().map(Segment::as_slice)
    }

    /// Fills `out` with up to `max` slices, in order, for one vectored write.
    pub fn io_slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>, max: usize) {
        out.clear();
        out.extend(self.segments().take(max).map(IoSlice::new));
    }

    /// The kind and whole body of each frame queued with [`push_frame`](Self::push_frame) and
    /// not yet written whole (a frame with an empty body is not told).
    pub fn unwritten(&self) -> impl Iterator<Item = (Kind, &Bytes)> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Body { bytes, kind, .. } => Some((*kind, bytes)),
            _ => None,
        })
    }

    /// The first bytes waiting (one segment), for a plain write.
    pub fn front(&self) -> Option<&[u8]> {
        self.segments.front().map(Segment::as_slice)
    }

    /// Drops the first `n` bytes after a write of that many.
    pub fn advance(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            let left = front.as_slice().len();
            if n < left {
                match front {
                    // n < left <= HEADER_LEN, so the new start fits in a u8.
                    Segment::Header { start, .. } => *start += n as u8,
                    Segment::Body { start, .. } => *start += n,
                    Segment::Bytes(b) => b.advance(n),
                }
                break;
            }
            n -= left;
            self.segments.pop_front();
        }
        if self.segments.is_empty() {
            self.frames = 0;
        }
    }
}
