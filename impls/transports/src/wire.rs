//! The frpc wire format: plain-data frame headers, little-endian, each
//! followed by a body.
//!
//! # Request frame
//!
//! | offset | size | field                                             |
//! |-------:|-----:|---------------------------------------------------|
//! | 0      | 1    | magic/version byte, [`MAGIC_VERSION`] (`0xF1`)     |
//! | 1      | 8    | request id, chosen by the client, never 0         |
//! | 9      | 1    | [`Op`]                                            |
//! | 10     | 8    | offset                                            |
//! | 18     | 4    | length                                            |
//! | 22     | ..   | body: the data of a `WriteAt`, empty otherwise    |
//!
//! `ReadAt` asks for `length` bytes and has no body; `WriteAt` carries
//! `length` bytes of data; `Size` and `Sync` have offset 0 and length 0.
//! The seeder service's ops (codes `0x11`..`0x15`, the high nibble naming
//! the service) follow the same rules: its `ReadAt` is a read, the others
//! have offset 0 and length 0.
//!
//! # Reply frame
//!
//! | offset | size | field                                             |
//! |-------:|-----:|---------------------------------------------------|
//! | 0      | 1    | magic/version byte                                |
//! | 1      | 8    | id of the request this answers                    |
//! | 9      | 1    | [`Status`]                                        |
//! | 10     | 4    | body length                                       |
//! | 14     | ..   | body                                              |
//!
//! An `Ok` body is the read data (`ReadAt`), the size as a `u64` (`Size`),
//! the dirty offsets as `u64`s (seeder `Sync`) or empty. Error bodies are described on [`Status`]. A reply with id 0 and
//! status [`Status::ProtocolError`] is the server's last word before it closes
//! a connection that sent a bad frame.
//!
//! # Validation
//!
//! [`RequestHeader::decode`] and [`ReplyHeader::decode`] reject bad magic,
//! unknown versions, ops and statuses, lengths over the configured maximum
//! message and non-zero fields that must be zero, all from the fixed-size
//! header alone, so a reader never allocates what a bad header announces.
//! [`Request::check`]/[`Reply::check`] then tell a complete frame from one
//! that needs more bytes ([`WireError::Incomplete`], which is not a protocol
//! error: read more and try again).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use backends::BackendError;

use crate::service::Method;

/// The first byte of every frame: high nibble `0xF` marks frpc, low nibble is
/// the protocol version.
pub const MAGIC_VERSION: u8 = 0xF0 | VERSION;
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// The default cap on a frame body: 32 MiB, a few times the largest chunk a
/// pipeline moves, small enough that a peer cannot make us reserve much.
pub const DEFAULT_MAX_MESSAGE: u32 = 32 << 20;

const MAGIC_NIBBLE: u8 = 0xF0;

/// One request's operation.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read up to `length` bytes at `offset`.
    ReadAt = 1,
    /// Write the body at `offset`.
    WriteAt = 2,
    /// Ask the backend's size.
    Size = 3,
    /// Make completed writes durable.
    Sync = 4,
    /// Seeder: read up to `length` bytes at `offset`.
    SeederReadAt = 0x11,
    /// Seeder: ask the region's size.
    SeederSize = 0x12,
    /// Seeder: start recording writes.
    Track = 0x13,
    /// Seeder: flush and return the offsets written since tracking started.
    SeederSync = 0x14,
    /// Seeder: the migration is over.
    Close = 0x15,
    /// Seeder: flush and return the offsets written in the last round.
    Dirty = 0x16,
}

impl Op {
    /// The service method this op invokes.
    pub fn method(self) -> Method {
        match self {
            Self::ReadAt => Method::ReadAt,
            Self::WriteAt => Method::WriteAt,
            Self::Size => Method::Size,
            Self::Sync => Method::Sync,
            Self::SeederReadAt => Method::SeederReadAt,
            Self::SeederSize => Method::SeederSize,
            Self::Track => Method::Track,
            Self::SeederSync => Method::SeederSync,
            Self::Dirty => Method::Dirty,
            Self::Close => Method::Close,
        }
    }

    /// The op that invokes `method`.
    pub fn for_method(method: Method) -> Self {
        match method {
            Method::ReadAt => Self::ReadAt,
            Method::WriteAt => Self::WriteAt,
            Method::Size => Self::Size,
            Method::Sync => Self::Sync,
            Method::SeederReadAt => Self::SeederReadAt,
            Method::SeederSize => Self::SeederSize,
            Method::Track => Self::Track,
            Method::SeederSync => Self::SeederSync,
            Method::Dirty => Self::Dirty,
            Method::Close => Self::Close,
        }
    }

    /// Whether `length` is the size of a read asked for.
    fn is_read(self) -> bool {
        matches!(self, Self::ReadAt | Self::SeederReadAt)
    }
}

impl TryFrom<u8> for Op {
    type Error = WireError;

    fn try_from(code: u8) -> Result<Self, WireError> {
        match code {
            1 => Ok(Self::ReadAt),
            2 => Ok(Self::WriteAt),
            3 => Ok(Self::Size),
            4 => Ok(Self::Sync),
            0x11 => Ok(Self::SeederReadAt),
            0x12 => Ok(Self::SeederSize),
            0x13 => Ok(Self::Track),
            0x14 => Ok(Self::SeederSync),
            0x15 => Ok(Self::Close),
            0x16 => Ok(Self::Dirty),
            other => Err(WireError::UnknownOp(other)),
        }
    }
}

/// How a request ended, and so what the reply body holds.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Success; the body is the op's result.
    Ok = 0,
    /// [`BackendError::OutOfRange`]; body: offset, len, size as three `u64`.
    OutOfRange = 1,
    /// [`BackendError::Unaligned`]; body: offset, len, chunk size as three `u64`.
    Unaligned = 2,
    /// The remote backend's I/O failed; body: UTF-8 message.
    Io = 3,
    /// Any other remote failure; body: UTF-8 message.
    Remote = 4,
    /// The remote backend is closed; empty body.
    Closed = 5,
    /// The server rejected a frame and closes the connection; body: UTF-8
    /// message.
    ProtocolError = 6,
}

impl TryFrom<u8> for Status {
    type Error = WireError;

    fn try_from(code: u8) -> Result<Self, WireError> {
        match code {
            0 => Ok(Self::Ok),
            1 => Ok(Self::OutOfRange),
            2 => Ok(Self::Unaligned),
            3 => Ok(Self::Io),
            4 => Ok(Self::Remote),
            5 => Ok(Self::Closed),
            6 => Ok(Self::ProtocolError),
            other => Err(WireError::UnknownStatus(other)),
        }
    }
}

/// Everything that can be wrong with bytes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not an error in the stream: the buffer holds only part of a frame.
    #[error("incomplete frame: {needed} bytes needed, {available} buffered")]
    Incomplete { needed: usize, available: usize },
    /// The first byte is not an frpc magic/version byte.
    #[error("bad magic byte {found:#04x}: frpc frames start with a byte whose high nibble is 0xF")]
    BadMagic { found: u8 },
    /// An frpc frame of a version this build does not speak.
    #[error("unsupported frpc version {found}; this build speaks version {supported}")]
    UnsupportedVersion { found: u8, supported: u8 },
    /// The op byte names no [`Op`].
    #[error("unknown op code {0}; known ops are 1 (ReadAt), 2 (WriteAt), 3 (Size), 4 (Sync) and the seeder's 17 to 22 (ReadAt, Size, Track, Sync, Close, Dirty)")]
    UnknownOp(u8),
    /// The status byte names no [`Status`].
    #[error("unknown reply status {0}; known statuses are 0 to 6")]
    UnknownStatus(u8),
    /// The header announces more than the maximum message size.
    #[error("frame announces {length} bytes, over the maximum message size of {max} bytes")]
    TooLarge { length: u32, max: u32 },
    /// A request other than a read or write with a non-zero offset or length.
    #[error(
        "{op:?} requests carry offset 0 and length 0, got offset {offset} and length {length}"
    )]
    NonZeroFields { op: Op, offset: u64, length: u32 },
    /// A reply body that does not fit its status.
    #[error("{status:?} reply body is {len} bytes, expected {expected}")]
    BadBody {
        status: Status,
        len: usize,
        expected: usize,
    },
}

impl WireError {
    /// Whether this only means "read more bytes".
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Self::Incomplete { .. })
    }
}

fn check_magic(byte: u8) -> Result<(), WireError> {
    if byte & 0xF0 != MAGIC_NIBBLE {
        return Err(WireError::BadMagic { found: byte });
    }
    if byte & 0x0F != VERSION {
        return Err(WireError::UnsupportedVersion {
            found: byte & 0x0F,
            supported: VERSION,
        });
    }
    Ok(())
}

/// The fixed-size head of a request frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub id: u64,
    pub op: Op,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    /// Encoded size in bytes.
    pub const LEN: usize = 22;

    /// How many body bytes follow this header.
    pub fn body_len(&self) -> usize {
        match self.op {
            Op::WriteAt => self.length as usize,
            _ => 0,
        }
    }

    /// Appends the encoded header to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(MAGIC_VERSION);
        dst.put_u64_le(self.id);
        dst.put_u8(self.op as u8);
        dst.put_u64_le(self.offset);
        dst.put_u32_le(self.length);
    }

    /// Decodes and validates a header; `max_message` caps `length` for both
    /// the data a `WriteAt` carries and the data a `ReadAt` asks for.
    pub fn decode(src: &[u8; Self::LEN], max_message: u32) -> Result<Self, WireError> {
        let mut src = &src[..];
        check_magic(src.get_u8())?;
        let id = src.get_u64_le();
        let op = Op::try_from(src.get_u8())?;
        let offset = src.get_u64_le();
        let length = src.get_u32_le();
        let header = Self {
            id,
            op,
            offset,
            length,
        };
        let moves_data = op.is_read() || op == Op::WriteAt;
        if moves_data && length > max_message {
            return Err(WireError::TooLarge {
                length,
                max: max_message,
            });
        }
        if !moves_data && (offset != 0 || length != 0) {
            return Err(WireError::NonZeroFields { op, offset, length });
        }
        Ok(header)
    }
}

/// The fixed-size head of a reply frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    pub id: u64,
    pub status: Status,
    pub length: u32,
}

impl ReplyHeader {
    /// Encoded size in bytes.
    pub const LEN: usize = 14;

    /// Appends the encoded header to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(MAGIC_VERSION);
        dst.put_u64_le(self.id);
        dst.put_u8(self.status as u8);
        dst.put_u32_le(self.length);
    }

    /// Decodes and validates a header; `max_message` caps the body length.
    pub fn decode(src: &[u8; Self::LEN], max_message: u32) -> Result<Self, WireError> {
        let mut src = &src[..];
        check_magic(src.get_u8())?;
        let id = src.get_u64_le();
        let status = Status::try_from(src.get_u8())?;
        let length = src.get_u32_le();
        if length > max_message {
            return Err(WireError::TooLarge {
                length,
                max: max_message,
            });
        }
        Ok(Self { id, status, length })
    }
}

/// The whole frame's length once its (valid) header is known, or
/// `Incomplete`: the shared tail of both `check`s.
fn frame_len(available: usize, header_len: usize, body_len: usize) -> Result<usize, WireError> {
    let needed = header_len + body_len;
    if available < needed {
        return Err(WireError::Incomplete { needed, available });
    }
    Ok(needed)
}

fn fixed<const N: usize>(src: &[u8]) -> Result<&[u8; N], WireError> {
    src.get(..N)
        .and_then(|head| head.try_into().ok())
        .ok_or(WireError::Incomplete {
            needed: N,
            available: src.len(),
        })
}

/// A whole request: header and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub header: RequestHeader,
    pub body: Bytes,
}

impl Request {
    /// Validates the frame at the start of `src` without allocating.
    ///
    /// Returns the header and the frame's total length once the whole frame
    /// is buffered; [`WireError::Incomplete`] says how many bytes the frame
    /// needs in all (as far as is known yet).
    pub fn check(src: &[u8], max_message: u32) -> Result<(RequestHeader, usize), WireError> {
        let header = RequestHeader::decode(fixed(src)?, max_message)?;
        let len = frame_len(src.len(), RequestHeader::LEN, header.body_len())?;
        Ok((header, len))
    }

    /// Takes one complete, valid frame off the front of `buf`; the body
    /// shares `buf`'s allocation.
    pub fn parse(buf: &mut BytesMut, max_message: u32) -> Result<Self, WireError> {
        let (header, len) = Self::check(buf, max_message)?;
        let mut frame = buf.split_to(len);
        frame.advance(RequestHeader::LEN);
        Ok(Self {
            header,
            body: frame.freeze(),
        })
    }

    /// Appends a request frame to `dst`; `length` is the data asked for by a
    /// `ReadAt` and is ignored for the other ops (it is `body.len()` for a
    /// `WriteAt` and 0 for `Size`/`Sync`).
    pub fn encode(dst: &mut BytesMut, id: u64, op: Op, offset: u64, length: u32, body: &[u8]) {
        let body = if op == Op::WriteAt { body } else { &[][..] };
        dst.reserve(RequestHeader::LEN + body.len());
        Self::encode_head(dst, id, op, offset, length, body.len());
        dst.put_slice(body);
    }

    /// Appends only the header of a request whose body (`body_len` bytes
    /// for a `WriteAt`, none otherwise) the caller sends separately, so a
    /// payload already in a `Bytes` is never copied into a frame.
    pub fn encode_head(
        dst: &mut BytesMut,
        id: u64,
        op: Op,
        offset: u64,
        length: u32,
        body_len: usize,
    ) {
        let (offset, length) = match op {
            _ if op.is_read() => (offset, length),
            Op::WriteAt => (offset, body_len as u32),
            _ => (0, 0),
        };
        RequestHeader {
            id,
            op,
            offset,
            length,
        }
        .encode(dst);
    }
}

/// A whole reply: header and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub header: ReplyHeader,
    pub body: Bytes,
}

impl Reply {
    /// Validates the frame at the start of `src` without allocating; see
    /// [`Request::check`].
    pub fn check(src: &[u8], max_message: u32) -> Result<(ReplyHeader, usize), WireError> {
        let header = ReplyHeader::decode(fixed(src)?, max_message)?;
        let len = frame_len(src.len(), ReplyHeader::LEN, header.length as usize)?;
        Ok((header, len))
    }

    /// Takes one complete, valid frame off the front of `buf`.
    pub fn parse(buf: &mut BytesMut, max_message: u32) -> Result<Self, WireError> {
        let (header, len) = Self::check(buf, max_message)?;
        let mut frame = buf.split_to(len);
        frame.advance(ReplyHeader::LEN);
        Ok(Self {
            header,
            body: frame.freeze(),
        })
    }

    /// Appends a reply frame with `body` to `dst`.
    pub fn encode(dst: &mut BytesMut, id: u64, status: Status, body: &[u8]) {
        dst.reserve(ReplyHeader::LEN + body.len());
        ReplyHeader {
            id,
            status,
            length: body.len() as u32,
        }
        .encode(dst);
        dst.put_slice(body);
    }

    /// Appends the reply that carries `err` to `dst`.
    ///
    /// Messages are cut to `max_message` bytes (at a character boundary) so
    /// an error never makes a frame the peer must reject.
    pub fn encode_error(dst: &mut BytesMut, id: u64, err: &BackendError, max_message: u32) {
        let mut body = BytesMut::new();
        let status = match err {
            BackendError::OutOfRange { offset, len, size } => {
                put_triple(&mut body, *offset, *len, *size);
                Status::OutOfRange
            }
            BackendError::Unaligned {
                offset,
                len,
                chunk_size,
            } => {
                put_triple(&mut body, *offset, *len, *chunk_size);
                Status::Unaligned
            }
            BackendError::Io(e) => {
                body.put_slice(truncate_utf8(&e.to_string(), max_message).as_bytes());
                Status::Io
            }
            BackendError::Remote(msg) => {
                body.put_slice(truncate_utf8(msg, max_message).as_bytes());
                Status::Remote
            }
            BackendError::Closed => Status::Closed,
        };
        Self::encode(dst, id, status, &body);
    }

    /// The error an error reply carries, or `None` for [`Status::Ok`].
    ///
    /// [`Status::ProtocolError`] becomes [`BackendError::Remote`]: for a
    /// caller, the server refusing the stream is a remote failure.
    pub fn error(&self) -> Result<Option<BackendError>, WireError> {
        let status = self.header.status;
        let text = || String::from_utf8_lossy(&self.body).into_owned();
        Ok(Some(match status {
            Status::Ok => return Ok(None),
            Status::OutOfRange => {
                let (offset, len, size) = get_triple(status, &self.body)?;
                BackendError::OutOfRange { offset, len, size }
            }
            Status::Unaligned => {
                let (offset, len, chunk_size) = get_triple(status, &self.body)?;
                BackendError::Unaligned {
                    offset,
                    len,
                    chunk_size,
                }
            }
            Status::Io => BackendError::Remote(format!("I/O error: {}", text())),
            Status::Remote => BackendError::Remote(text()),
            Status::Closed => BackendError::Closed,
            Status::ProtocolError => {
                BackendError::Remote(format!("server rejected the connection: {}", text()))
            }
        }))
    }
}

fn put_triple(dst: &mut BytesMut, a: u64, b: u64, c: u64) {
    dst.put_u64_le(a);
    dst.put_u64_le(b);
    dst.put_u64_le(c);
}

fn get_triple(status: Status, body: &[u8]) -> Result<(u64, u64, u64), WireError> {
    if body.len() != 24 {
        return Err(WireError::BadBody {
            status,
            len: body.len(),
            expected: 24,
        });
    }
    let mut body = body;
    Ok((body.get_u64_le(), body.get_u64_le(), body.get_u64_le()))
}

fn truncate_utf8(s: &str, max: u32) -> &str {
    let max = max as usize;
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 1024;

    fn request_bytes(id: u64, op: u8, offset: u64, length: u32) -> Vec<u8> {
        let mut v = vec![MAGIC_VERSION];
        v.extend_from_slice(&id.to_le_bytes());
        v.push(op);
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&length.to_le_bytes());
        v
    }

    #[test]
    fn ops_and_statuses_round_trip_through_their_codes() {
        for op in [Op::ReadAt, Op::WriteAt, Op::Size, Op::Sync] {
            assert_eq!(Op::try_from(op as u8), Ok(op));
        }
        for method in Method::ALL {
            let op = Op::for_method(method);
            assert_eq!(Op::try_from(op as u8), Ok(op));
            assert_eq!(op.method(), method);
        }
        assert_eq!(Op::try_from(0x17), Err(WireError::UnknownOp(0x17)));
        for code in 0..=6u8 {
            assert_eq!(Status::try_from(code).unwrap() as u8, code);
        }
        assert_eq!(Op::try_from(0), Err(WireError::UnknownOp(0)));
        assert_eq!(Op::try_from(5), Err(WireError::UnknownOp(5)));
        assert_eq!(Status::try_from(7), Err(WireError::UnknownStatus(7)));
    }

    #[test]
    fn request_layout_is_little_endian_and_fixed() {
        let mut buf = BytesMut::new();
        Request::encode(&mut buf, 0x0102, Op::WriteAt, 0x0A0B, 99, b"xyz");
        assert_eq!(buf.len(), RequestHeader::LEN + 3);
        assert_eq!(
            &buf[..],
            &[request_bytes(0x0102, 2, 0x0A0B, 3), b"xyz".to_vec()].concat()[..]
        );
    }

    #[test]
    fn requests_round_trip() {
        let mut buf = BytesMut::new();
        Request::encode(&mut buf, 7, Op::ReadAt, 4096, 512, b"ignored");
        Request::encode(&mut buf, 8, Op::WriteAt, 100, 0, b"hello");
        Request::encode(&mut buf, 9, Op::Size, 5, 5, b"");
        Request::encode(&mut buf, 10, Op::Sync, 0, 0, b"");
        let r = Request::parse(&mut buf, MAX).unwrap();
        assert_eq!(
            r.header,
            RequestHeader {
                id: 7,
                op: Op::ReadAt,
                offset: 4096,
                length: 512
            }
        );
        assert!(r.body.is_empty());
        let w = Request::parse(&mut buf, MAX).unwrap();
        assert_eq!((w.header.id, w.header.length), (8, 5));
        assert_eq!(&w.body[..], b"hello");
        let s = Request::parse(&mut buf, MAX).unwrap();
        assert_eq!(
            (s.header.op, s.header.offset, s.header.length),
            (Op::Size, 0, 0)
        );
        assert_eq!(Request::parse(&mut buf, MAX).unwrap().header.op, Op::Sync);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_are_incomplete_not_errors() {
        let mut full = BytesMut::new();
        Request::encode(&mut full, 1, Op::WriteAt, 0, 0, &[5; 100]);
        for cut in 0..full.len() {
            let err = Request::check(&full[..cut], MAX).unwrap_err();
            assert!(err.is_incomplete(), "cut at {cut}: {err}");
            let needed = if cut < RequestHeader::LEN {
                RequestHeader::LEN
            } else {
                RequestHeader::LEN + 100
            };
            assert_eq!(
                err,
                WireError::Incomplete {
                    needed,
                    available: cut
                }
            );
        }
        assert_eq!(Request::check(&full, MAX).unwrap().1, full.len());
    }

    #[test]
    fn bad_headers_are_rejected_from_the_header_alone() {
        let mut v = request_bytes(1, 1, 0, 8);
        v[0] = 0x00;
        assert_eq!(
            Request::check(&v, MAX),
            Err(WireError::BadMagic { found: 0 })
        );
        v[0] = 0xF2;
        assert_eq!(
            Request::check(&v, MAX),
            Err(WireError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        let v = request_bytes(1, 9, 0, 8);
        assert_eq!(Request::check(&v, MAX), Err(WireError::UnknownOp(9)));
        // Over the limit: rejected although the body is not there yet.
        for op in [Op::ReadAt, Op::WriteAt] {
            let v = request_bytes(1, op as u8, 0, MAX + 1);
            assert_eq!(
                Request::check(&v, MAX),
                Err(WireError::TooLarge {
                    length: MAX + 1,
                    max: MAX
                })
            );
        }
        let v = request_bytes(1, Op::Size as u8, 0, 4);
        assert!(matches!(
            Request::check(&v, MAX),
            Err(WireError::NonZeroFields { op: Op::Size, .. })
        ));
        let v = request_bytes(1, Op::Sync as u8, 3, 0);
        assert!(matches!(
            Request::check(&v, MAX),
            Err(WireError::NonZeroFields { op: Op::Sync, .. })
        ));
        // Exactly at the limit is fine.
        let v = request_bytes(1, Op::ReadAt as u8, 0, MAX);
        assert!(Request::check(&v, MAX).is_ok());
    }

    #[test]
    fn replies_round_trip_with_their_errors() {
        let mut buf = BytesMut::new();
        Reply::encode(&mut buf, 3, Status::Ok, b"data");
        let errors = [
            BackendError::OutOfRange {
                offset: 1,
                len: 2,
                size: 3,
            },
            BackendError::Unaligned {
                offset: 4,
                len: 5,
                chunk_size: 6,
            },
            BackendError::Io(std::io::Error::other("disk on fire")),
            BackendError::Remote("upstream gone".into()),
            BackendError::Closed,
        ];
        for (i, e) in errors.iter().enumerate() {
            Reply::encode_error(&mut buf, 10 + i as u64, e, MAX);
        }
        let ok = Reply::parse(&mut buf, MAX).unwrap();
        assert_eq!((ok.header.id, ok.header.status), (3, Status::Ok));
        assert_eq!(&ok.body[..], b"data");
        assert!(ok.error().unwrap().is_none());
        let got: Vec<_> = (0..errors.len())
            .map(|_| {
                Reply::parse(&mut buf, MAX)
                    .unwrap()
                    .error()
                    .unwrap()
                    .unwrap()
            })
            .collect();
        assert!(matches!(
            got[0],
            BackendError::OutOfRange {
                offset: 1,
                len: 2,
                size: 3
            }
        ));
        assert!(matches!(
            got[1],
            BackendError::Unaligned {
                offset: 4,
                len: 5,
                chunk_size: 6
            }
        ));
        assert!(matches!(&got[2], BackendError::Remote(m) if m.contains("disk on fire")));
        assert!(matches!(&got[3], BackendError::Remote(m) if m == "upstream gone"));
        assert!(matches!(got[4], BackendError::Closed));
        assert!(buf.is_empty());
    }

    #[test]
    fn reply_checks_reject_bad_headers_and_bodies() {
        let mut v = vec![MAGIC_VERSION];
        v.extend_from_slice(&1u64.to_le_bytes());
        v.push(42);
        v.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(Reply::check(&v, MAX), Err(WireError::UnknownStatus(42)));
        v[9] = 0;
        v[10..14].copy_from_slice(&(MAX + 1).to_le_bytes());
        assert_eq!(
            Reply::check(&v, MAX),
            Err(WireError::TooLarge {
                length: MAX + 1,
                max: MAX
            })
        );
        let mut buf = BytesMut::new();
        Reply::encode(&mut buf, 1, Status::OutOfRange, &[0; 5]);
        let r = Reply::parse(&mut buf, MAX).unwrap();
        assert_eq!(
            r.error().unwrap_err(),
            WireError::BadBody {
                status: Status::OutOfRange,
                len: 5,
                expected: 24
            }
        );
    }

    #[test]
    fn long_error_messages_are_cut_to_fit() {
        let mut buf = BytesMut::new();
        let msg = "é".repeat(100); // 200 bytes, 2 per char
        Reply::encode_error(&mut buf, 1, &BackendError::Remote(msg), 51);
        let r = Reply::parse(&mut buf, 51).unwrap();
        assert_eq!(r.body.len(), 50);
        assert!(std::str::from_utf8(&r.body).is_ok());
    }
}
