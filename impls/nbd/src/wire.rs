//! The NBD wire format: magics, codes, flags, fixed headers and the option
//! payloads this crate speaks.
//!
//! Everything here is plain data plus `encode`/`parse`. Parsers take the
//! bytes already read and check them before building anything: a slice
//! that is too short is [`WireError::Incomplete`] (read more or give up),
//! kept apart from bytes that can never be valid (bad magic, lengths that
//! disagree, strings over the protocol's 4096-byte limit). No parser
//! allocates more than the slice it is given, so the bound on what a peer
//! can make us allocate is the bound the caller put on what it read; the
//! limits callers use are the constants below.
//!
//! Numbers are big-endian, as the protocol document says
//! (NetworkBlockDevice/nbd `doc/proto.md`).

use std::fmt;

/// `NBDMAGIC`: the first 8 bytes the server sends.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: follows [`INIT_MAGIC`] in newstyle, and starts every option request.
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Starts every option reply in fixed newstyle.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Starts every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Starts every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Starts every structured reply chunk (only sent if negotiated; we never do).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// The longest option payload either side of this crate accepts. Option
/// payloads are names, info requests and lists: 64 KiB is sixteen times the
/// longest legal string and still small enough to hold without thought.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;
/// The longest string (export name, description, error message) the
/// protocol allows.
pub const MAX_STRING: usize = 4096;
/// The longest read or write payload: 32 MiB, the size the protocol says no
/// peer should treat as a denial of service. Anything longer is refused
/// before its payload is read.
pub const MAX_REQUEST_LEN: u32 = 32 * 1024 * 1024;
/// Reserved zero bytes after an `NBD_OPT_EXPORT_NAME` reply unless both
/// sides agreed on `NO_ZEROES`.
pub const ZERO_PAD_LEN: usize = 124;

/// `NBDMAGIC`, `IHAVEOPT`, 16-bit handshake flags.
pub const GREETING_LEN: usize = 18;
/// `IHAVEOPT`, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Magic, option, reply type, length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Magic, flags, type, handle, offset, length.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Magic, error, handle.
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;
/// Size and transmission flags after `NBD_OPT_EXPORT_NAME`, before padding.
pub const EXPORT_NAME_REPLY_LEN: usize = 10;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too few bytes yet; not a protocol violation by itself.
    #[error("{what}: need {needed} bytes, have {available}")]
    Incomplete {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    /// A magic number is wrong: the peer is not speaking NBD, or we lost framing.
    #[error("{what}: bad magic {found:#x}, expected {expected:#x}")]
    BadMagic {
        what: &'static str,
        expected: u64,
        found: u64,
    },
    /// A declared length is over what we accept.
    #[error("{what}: length {len} is over the limit of {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// Lengths inside a message disagree with the message's size.
    #[error("{what}: declared {declared} bytes but the message holds {actual}")]
    LengthMismatch {
        what: &'static str,
        declared: u64,
        actual: u64,
    },
    /// A string is not valid UTF-8 or holds a NUL.
    #[error("{what}: {reason}")]
    InvalidString {
        what: &'static str,
        reason: &'static str,
    },
}

/// Result of a parser.
pub type WireResult<T> = Result<T, WireError>;

/// Defines a flag set over an integer: named constants, `bits`, `contains`,
/// `|`, and a `Debug` that names the bits (and shows unknown ones).
macro_rules! flag_set {
    (
        $(#[$meta:meta])*
        $name:ident($int:ty) {
            $( $(#[$fmeta:meta])* $flag:ident = $value:expr; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub $int);

        impl $name {
            $( $(#[$fmeta])* pub const $flag: Self = Self($value); )*
            /// Every flag this crate knows.
            pub const KNOWN: Self = Self(0 $(| $value)*);

            /// The raw bits.
            pub const fn bits(self) -> $int {
                self.0
            }
            /// Whether every bit of `other` is set.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }
            /// Bits set here that this crate does not know.
            pub const fn unknown(self) -> $int {
                self.0 & !Self::KNOWN.0
            }
            /// `self` with `other`'s bits set or cleared.
            #[must_use]
            pub const fn with(self, other: Self, on: bool) -> Self {
                if on { Self(self.0 | other.0) } else { Self(self.0 & !other.0) }
            }
        }

        impl std::ops::BitOr for $name {
            type Output = Self;
            fn bitor(self, rhs: Self) -> Self {
                Self(self.0 | rhs.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut first = true;
                write!(f, "{}(", stringify!($name))?;
                $(
                    if self.contains(Self::$flag) && $value != 0 {
                        if !first { f.write_str(" | ")?; }
                        f.write_str(stringify!($flag))?;
                        first = false;
                    }
                )*
                if self.unknown() != 0 {
                    if !first { f.write_str(" | ")?; }
                    write!(f, "{:#x}", self.unknown())?;
                }
                f.write_str(")")
            }
        }
    };
}

flag_set! {
    /// Handshake flags the server sends after the magics.
    HandshakeFlags(u16) {
        /// The server speaks fixed newstyle.
        FIXED_NEWSTYLE = 1 << 0;
        /// The server can leave out the 124 zero bytes after `EXPORT_NAME`.
        NO_ZEROES = 1 << 1;
    }
}

flag_set! {
    /// Client flags, the client's answer to [`HandshakeFlags`].
    ClientFlags(u32) {
        /// The client speaks fixed newstyle.
        FIXED_NEWSTYLE = 1 << 0;
        /// The client wants no zero padding after `EXPORT_NAME`.
        NO_ZEROES = 1 << 1;
    }
}

flag_set! {
    /// Per-export transmission flags.
    TransmissionFlags(u16) {
        /// Always set.
        HAS_FLAGS = 1 << 0;
        /// Writes, trims and write-zeroes fail.
        READ_ONLY = 1 << 1;
        /// `NBD_CMD_FLUSH` is supported.
        SEND_FLUSH = 1 << 2;
        /// `NBD_CMD_FLAG_FUA` is supported.
        SEND_FUA = 1 << 3;
        /// The export behaves like a rotational medium.
        ROTATIONAL = 1 << 4;
        /// `NBD_CMD_TRIM` is supported.
        SEND_TRIM = 1 << 5;
        /// `NBD_CMD_WRITE_ZEROES` is supported.
        SEND_WRITE_ZEROES = 1 << 6;
        /// `NBD_CMD_FLAG_DF` is supported (structured replies only).
        SEND_DF = 1 << 7;
        /// Several connections see each other's flushed writes.
        CAN_MULTI_CONN = 1 << 8;
        /// `NBD_CMD_RESIZE` (experimental).
        SEND_RESIZE = 1 << 9;
        /// `NBD_CMD_CACHE` is understood.
        SEND_CACHE = 1 << 10;
        /// `NBD_CMD_FLAG_FAST_ZERO` is supported.
        SEND_FAST_ZERO = 1 << 11;
    }
}

flag_set! {
    /// Per-request command flags.
    CommandFlags(u16) {
        /// Persist before replying.
        FUA = 1 << 0;
        /// Write-zeroes must not punch a hole.
        NO_HOLE = 1 << 1;
        /// Do not fragment a structured read reply.
        DF = 1 << 2;
        /// One extent per block-status context.
        REQ_ONE = 1 << 3;
        /// Fail write-zeroes unless it is fast.
        FAST_ZERO = 1 << 4;
    }
}

/// Defines a `#[repr]` enum of protocol codes with `TryFrom<int>` (the
/// unknown value comes back as the error) and `name()` for messages.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        $name:ident($int:ty) {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($int)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// The protocol's name for this code.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )*
                }
            }
        }

        impl TryFrom<$int> for $name {
            type Error = $int;
            fn try_from(value: $int) -> Result<Self, $int> {
                match value {
                    $( v if v == Self::$variant as $int => Ok(Self::$variant), )*
                    other => Err(other),
                }
            }
        }

        impl From<$name> for $int {
            fn from(code: $name) -> $int {
                code as $int
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

code_enum! {
    /// Option codes of the handshake phase.
    OptionCode(u32) {
        /// Choose an export and enter transmission; cannot report errors.
        ExportName = 1 => "NBD_OPT_EXPORT_NAME",
        /// End the handshake without transmission.
        Abort = 2 => "NBD_OPT_ABORT",
        /// List the exports.
        List = 3 => "NBD_OPT_LIST",
        /// Withdrawn.
        PeekExport = 4 => "NBD_OPT_PEEK_EXPORT",
        /// Upgrade to TLS.
        StartTls = 5 => "NBD_OPT_STARTTLS",
        /// Describe an export.
        Info = 6 => "NBD_OPT_INFO",
        /// Describe an export and enter transmission.
        Go = 7 => "NBD_OPT_GO",
        /// Ask for structured replies.
        StructuredReply = 8 => "NBD_OPT_STRUCTURED_REPLY",
        /// List metadata contexts.
        ListMetaContext = 9 => "NBD_OPT_LIST_META_CONTEXT",
        /// Select metadata contexts.
        SetMetaContext = 10 => "NBD_OPT_SET_META_CONTEXT",
        /// Ask for 64-bit headers.
        ExtendedHeaders = 11 => "NBD_OPT_EXTENDED_HEADERS",
    }
}

/// Names an option code for messages, known or not.
pub fn option_name(code: u32) -> String {
    match OptionCode::try_from(code) {
        Ok(known) => known.name().to_owned(),
        Err(raw) => format!("option {raw}"),
    }
}

/// Bit 31 marks an option reply type as an error.
pub const REPLY_ERROR_BIT: u32 = 1 << 31;

code_enum! {
    /// Option reply types.
    ReplyType(u32) {
        /// The option succeeded (or a list ended).
        Ack = 1 => "NBD_REP_ACK",
        /// One export in a list.
        Server = 2 => "NBD_REP_SERVER",
        /// One piece of information about an export.
        Info = 3 => "NBD_REP_INFO",
        /// One metadata context.
        MetaContext = 4 => "NBD_REP_META_CONTEXT",
        /// The option is unknown to the server.
        ErrUnsup = REPLY_ERROR_BIT + 1 => "NBD_REP_ERR_UNSUP",
        /// The option is forbidden by policy.
        ErrPolicy = REPLY_ERROR_BIT + 2 => "NBD_REP_ERR_POLICY",
        /// The option was malformed.
        ErrInvalid = REPLY_ERROR_BIT + 3 => "NBD_REP_ERR_INVALID",
        /// Not supported on this platform.
        ErrPlatform = REPLY_ERROR_BIT + 4 => "NBD_REP_ERR_PLATFORM",
        /// TLS first.
        ErrTlsReqd = REPLY_ERROR_BIT + 5 => "NBD_REP_ERR_TLS_REQD",
        /// No such export.
        ErrUnknown = REPLY_ERROR_BIT + 6 => "NBD_REP_ERR_UNKNOWN",
        /// The server is shutting down.
        ErrShutdown = REPLY_ERROR_BIT + 7 => "NBD_REP_ERR_SHUTDOWN",
        /// The client must ask for block sizes first.
        ErrBlockSizeReqd = REPLY_ERROR_BIT + 8 => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        /// The request or reply is too large.
        ErrTooBig = REPLY_ERROR_BIT + 9 => "NBD_REP_ERR_TOO_BIG",
        /// Extended headers are required.
        ErrExtHeaderReqd = REPLY_ERROR_BIT + 10 => "NBD_REP_ERR_EXT_HEADER_REQD",
    }
}

/// Names a reply type for messages, known or not.
pub fn reply_name(code: u32) -> String {
    match ReplyType::try_from(code) {
        Ok(known) => known.name().to_owned(),
        Err(raw) if raw & REPLY_ERROR_BIT != 0 => {
            format!("unknown error reply {:#x}", raw)
        }
        Err(raw) => format!("unknown reply {raw}"),
    }
}

code_enum! {
    /// Information types inside `NBD_REP_INFO`.
    InfoType(u16) {
        /// Size and transmission flags; mandatory on success.
        Export = 0 => "NBD_INFO_EXPORT",
        /// Canonical export name.
        Name = 1 => "NBD_INFO_NAME",
        /// Human-readable description.
        Description = 2 => "NBD_INFO_DESCRIPTION",
        /// Minimum, preferred and maximum block size.
        BlockSize = 3 => "NBD_INFO_BLOCK_SIZE",
    }
}

code_enum! {
    /// Transmission command types.
    Command(u16) {
        /// Read `length` bytes at `offset`.
        Read = 0 => "NBD_CMD_READ",
        /// Write the `length`-byte payload at `offset`.
        Write = 1 => "NBD_CMD_WRITE",
        /// Soft disconnect; no reply.
        Disc = 2 => "NBD_CMD_DISC",
        /// Persist completed writes.
        Flush = 3 => "NBD_CMD_FLUSH",
        /// The range is no longer needed.
        Trim = 4 => "NBD_CMD_TRIM",
        /// Prefetch hint.
        Cache = 5 => "NBD_CMD_CACHE",
        /// Zero the range without a payload.
        WriteZeroes = 6 => "NBD_CMD_WRITE_ZEROES",
        /// Query metadata contexts.
        BlockStatus = 7 => "NBD_CMD_BLOCK_STATUS",
        /// Resize (experimental).
        Resize = 8 => "NBD_CMD_RESIZE",
    }
}

/// An error value in a simple reply. Any value may arrive; the protocol
/// defines the ones named here and says to treat others as `EINVAL`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub u32);

impl Errno {
    /// Operation not permitted (writes to a read-only export).
    pub const EPERM: Errno = Errno(1);
    /// Input/output error.
    pub const EIO: Errno = Errno(5);
    /// Cannot allocate memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Invalid argument (bad range, flags, alignment, unknown command).
    pub const EINVAL: Errno = Errno(22);
    /// No space left (writes past the end).
    pub const ENOSPC: Errno = Errno(28);
    /// Value too large.
    pub const EOVERFLOW: Errno = Errno(75);
    /// Operation not supported.
    pub const ENOTSUP: Errno = Errno(95);
    /// The server is shutting down.
    pub const ESHUTDOWN: Errno = Errno(108);

    /// The protocol's name for the value.
    pub fn name(self) -> &'static str {
        match self {
            Errno(0) => "success",
            Errno::EPERM => "NBD_EPERM",
            Errno::EIO => "NBD_EIO",
            Errno::ENOMEM => "NBD_ENOMEM",
            Errno::EINVAL => "NBD_EINVAL",
            Errno::ENOSPC => "NBD_ENOSPC",
            Errno::EOVERFLOW => "NBD_EOVERFLOW",
            Errno::ENOTSUP => "NBD_ENOTSUP",
            Errno::ESHUTDOWN => "NBD_ESHUTDOWN",
            _ => "unknown NBD error",
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// A bounds-checked big-endian cursor over received bytes.
#[derive(Debug)]
pub struct Cursor<'a> {
    what: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor over `buf`; `what` names the message in errors.
    pub fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Self { what, buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> WireResult<&'a [u8]> {
        if self.remaining() < n {
            return Err(WireError::Incomplete {
                what: self.what,
                needed: self.pos.saturating_add(n),
                available: self.buf.len(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> WireResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> WireResult<u16> {
        self.array().map(u16::from_be_bytes)
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> WireResult<u32> {
        self.array().map(u32::from_be_bytes)
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> WireResult<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// The rest of the bytes.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> WireResult<()> {
        if self.remaining() != 0 {
            return Err(WireError::LengthMismatch {
                what: self.what,
                declared: self.pos as u64,
                actual: self.buf.len() as u64,
            });
        }
        Ok(())
    }
}

/// Decodes a protocol string: at most [`MAX_STRING`] bytes of UTF-8 without NUL.
pub fn parse_string(what: &'static str, bytes: &[u8]) -> WireResult<String> {
    check_string_len(what, bytes.len())?;
    if bytes.contains(&0) {
        return Err(WireError::InvalidString {
            what,
            reason: "contains a NUL byte",
        });
    }
    let s = std::str::from_utf8(bytes).map_err(|_| WireError::InvalidString {
        what,
        reason: "is not valid UTF-8",
    })?;
    Ok(s.to_owned())
}

fn check_string_len(what: &'static str, len: usize) -> WireResult<()> {
    if len > MAX_STRING {
        return Err(WireError::TooLong {
            what,
            len: len as u64,
            max: MAX_STRING as u64,
        });
    }
    Ok(())
}

/// What the server sends first: the magics and its handshake flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// The server's handshake flags.
    pub flags: HandshakeFlags,
}

impl Greeting {
    /// The 18 bytes on the wire.
    pub fn encode(&self) -> [u8; GREETING_LEN] {
        let mut out = [0u8; GREETING_LEN];
        out[..8].copy_from_slice(&INIT_MAGIC.to_be_bytes());
        out[8..16].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
        out[16..].copy_from_slice(&self.flags.0.to_be_bytes());
        out
    }

    /// Checks both magics. An oldstyle server (second magic
    /// `0x00420281861253`) is reported as a bad magic: oldstyle is not
    /// supported.
    pub fn parse(buf: &[u8]) -> WireResult<Self> {
        let mut c = Cursor::new("server greeting", buf);
        let init = c.u64()?;
        expect_magic("server greeting", INIT_MAGIC, init)?;
        let opt = c.u64()?;
        expect_magic("server greeting (newstyle)", OPTION_MAGIC, opt)?;
        Ok(Self {
            flags: HandshakeFlags(c.u16()?),
        })
    }
}

fn expect_magic(what: &'static str, expected: u64, found: u64) -> WireResult<()> {
    if found != expected {
        return Err(WireError::BadMagic {
            what,
            expected,
            found,
        });
    }
    Ok(())
}

/// The header of an option request; `length` bytes of data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The raw option code (unknown codes must be answered, so not an enum).
    pub option: u32,
    /// Length of the data that follows.
    pub length: u32,
}

impl OptionHeader {
    /// The 16 bytes on the wire.
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut out = [0u8; OPTION_HEADER_LEN];
        out[..8].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Checks the magic; the length is the caller's to bound.
    pub fn parse(buf: &[u8]) -> WireResult<Self> {
        let mut c = Cursor::new("option request header", buf);
        expect_magic("option request header", OPTION_MAGIC, c.u64()?)?;
        Ok(Self {
            option: c.u32()?,
            length: c.u32()?,
        })
    }
}

/// The header of an option reply; `length` bytes of data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option this answers.
    pub option: u32,
    /// The raw reply type (see [`ReplyType`]).
    pub reply: u32,
    /// Length of the data that follows.
    pub length: u32,
}

impl OptionReplyHeader {
    /// The 20 bytes on the wire.
    pub fn encode(&self) -> [u8; OPTION_REPLY_HEADER_LEN] {
        let mut out = [0u8; OPTION_REPLY_HEADER_LEN];
        out[..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..16].copy_from_slice(&self.reply.to_be_bytes());
        out[16..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Checks the magic; the length is the caller's to bound.
    pub fn parse(buf: &[u8]) -> WireResult<Self> {
        let mut c = Cursor::new("option reply header", buf);
        expect_magic("option reply header", OPTION_REPLY_MAGIC, c.u64()?)?;
        Ok(Self {
            option: c.u32()?,
            reply: c.u32()?,
            length: c.u32()?,
        })
    }

    /// Whether the reply type has the error bit set.
    pub fn is_error(&self) -> bool {
        self.reply & REPLY_ERROR_BIT != 0
    }
}

/// Encodes one whole option reply: header and data.
pub fn encode_option_reply(option: u32, reply: ReplyType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + data.len());
    out.extend_from_slice(
        &OptionReplyHeader {
            option,
            reply: reply.into(),
            length: data.len() as u32,
        }
        .encode(),
    );
    out.extend_from_slice(data);
    out
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: an export name and the
/// information the client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export; empty means the default export.
    pub name: String,
    /// Requested [`InfoType`]s, raw (unknown ones are ignored, not refused).
    pub requests: Vec<u16>,
}

impl InfoRequest {
    /// The option data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.name.len() + 2 * self.requests.len());
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&(self.requests.len() as u16).to_be_bytes());
        for r in &self.requests {
            out.extend_from_slice(&r.to_be_bytes());
        }
        out
    }

    /// Parses option data, requiring every length inside to agree with
    /// the data's size.
    pub fn parse(buf: &[u8]) -> WireResult<Self> {
        let mut c = Cursor::new("NBD_OPT_INFO/GO data", buf);
        let name_len = c.u32()? as usize;
        // Checked before slicing so a huge declared length is a clear
        // "too long", not an "incomplete".
        check_string_len("export name", name_len)?;
        let name = parse_string("export name", c.bytes(name_len)?)?;
        let count = c.u16()? as usize;
        if c.remaining() != count * 2 {
            return Err(WireError::LengthMismatch {
                what: "NBD_OPT_INFO/GO information requests",
                declared: (count * 2) as u64,
                actual: c.remaining() as u64,
            });
        }
        let mut requests = Vec::with_capacity(count);
        for _ in 0..count {
            requests.push(c.u16()?);
        }
        c.finish()?;
        Ok(Self { name, requests })
    }
}

/// One `NBD_REP_INFO` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: TransmissionFlags,
    },
    /// `NBD_INFO_NAME`: the canonical name.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`, as sent (validated by the receiver).
    BlockSize {
        /// Minimum block size.
        minimum: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum block size.
        maximum: u32,
    },
    /// A type this crate does not know; clients must ignore it.
    Unknown {
        /// The raw type.
        info_type: u16,
    },
}

impl Info {
    /// The reply data (type first).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Info::Export { size, flags } => {
                out.extend_from_slice(&u16::from(InfoType::Export).to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&flags.0.to_be_bytes());
            }
            Info::Name(name) => {
                out.extend_from_slice(&u16::from(InfoType::Name).to_be_bytes());
                out.extend_from_slice(name.as_bytes());
            }
            Info::Description(text) => {
                out.extend_from_slice(&u16::from(InfoType::Description).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            Info::BlockSize {
                minimum,
                preferred,
                maximum,
            } => {
                out.extend_from_slice(&u16::from(InfoType::BlockSize).to_be_bytes());
                out.extend_from_slice(&minimum.to_be_bytes());
                out.extend_from_slice(&preferred.to_be_bytes());
                out.extend_from_slice(&maximum.to_be_bytes());
            }
            Info::Unknown { info_type } => {
                out.extend_from_slice(&info_type.to_be_bytes());
            }
        }
        out
    }

    /// Parses reply data, requiring the exact length each type defines.
    pub fn parse(buf: &[u8]) -> WireResult<Self> {
        let mut c = Cursor::new("NBD_REP_INFO data", buf);
        let info_type = c.u16()?;
        let info = match InfoType::try_from(info_type) {
            Ok(InfoType::Export) => Info::Export {
                size: c.u64()?,
                flags: TransmissionFlags(c.u16()?),
            },
            Ok(InfoType::Name) => Info::Name(parse_string("NBD_INFO_NAME", c.rest())?),
            Ok(InfoType::Description) => {
                Info::Description(parse_string("NBD_INFO_DESCRIPTION", c.rest())?)
            }
            Ok(InfoType::BlockSize) => Info::BlockSize {
                minimum: c.u32()?,
                preferred: c.u32()?,
                maximum: c.u32()?,
            },
            Err(raw) => {
                c.rest();
                Info::Unknown { info_type: raw }
            }
        };
        c.finish()?;
        Ok(info)
    }
}

/// The data of one `NBD_REP_SERVER` reply: an export in a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// The export's name.
    pub name: String,
    /// Free text after the name (empty if none).
    pub description: String,
}

impl ServerEntry {
    /// The reply data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.name.len() + self.description.len());
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(self.description.as_bytes());
        out
    }

    /// Parses reply data.
    pub fn parse(buf: &[u8]) -> WireResult<Self> {
        let mut c = Cursor::new("NBD_REP_SERVER data", buf);
        let name_len = c.u32()? as usize;
        check_string_len("NBD_REP_SERVER name", name_len)?;
        let name = parse_string("NBD_REP_SERVER name", c.bytes(name_len)?)?;
        let description = parse_string("NBD_REP_SERVER description", c.rest())?;
        Ok(Self { name, description })
    }
}

/// The server's answer to `NBD_OPT_EXPORT_NAME` (before any padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReply {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: TransmissionFlags,
}

impl ExportNameReply {
    /// The reply bytes, with the 124 zero bytes unless `no_zeroes`.
    pub fn encode(&self, no_zeroes: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(EXPORT_NAME_REPLY_LEN + ZERO_PAD_LEN);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.flags.0.to_be_bytes());
        if !no_zeroes {
            out.extend_from_slice(&[0u8; ZERO_PAD_LEN]);
        }
        out
    }

    /// Parses the first 10 bytes (the padding is the caller's to skip).
    pub fn parse(buf: &[u8]) -> WireResult<Self> {
        let mut c = Cursor::new("NBD_OPT_EXPORT_NAME reply", buf);
        Ok(Self {
            size: c.u64()?,
            flags: TransmissionFlags(c.u16()?),
        })
    }
}

/// A transmission request header; a write's payload follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags.
    pub flags: CommandFlags,
    /// The raw command type (unknown types get `EINVAL`, so not an enum).
    pub command: u16,
    /// Opaque value echoed in the reply.
    pub handle: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

impl RequestHeader {
    /// The 28 bytes on the wire.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.0.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.handle.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Checks the magic; the command, flags and length are the server's to judge.
    pub fn parse(buf: &[u8]) -> WireResult<Self> {
        let mut c = Cursor::new("request header", buf);
        let magic = c.u32()?;
        expect_magic("request header", REQUEST_MAGIC.into(), magic.into())?;
        Ok(Self {
            flags: CommandFlags(c.u16()?),
            command: c.u16()?,
            handle: c.u64()?,
            offset: c.u64()?,
            length: c.u32()?,
        })
    }
}

/// A simple reply header; a successful read's data follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReplyHeader {
    /// Zero on success.
    pub error: Errno,
    /// The request's handle.
    pub handle: u64,
}

impl SimpleReplyHeader {
    /// The 16 bytes on the wire.
    pub fn encode(&self) -> [u8; SIMPLE_REPLY_HEADER_LEN] {
        let mut out = [0u8; SIMPLE_REPLY_HEADER_LEN];
        out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        out[4..8].copy_from_slice(&self.error.0.to_be_bytes());
        out[8..].copy_from_slice(&self.handle.to_be_bytes());
        out
    }

    /// Checks the magic. A structured reply magic is reported as a bad
    /// magic: this crate never negotiates structured replies, so one
    /// arriving means the peer broke the protocol.
    pub fn parse(buf: &[u8]) -> WireResult<Self> {
        let mut c = Cursor::new("simple reply header", buf);
        let magic = c.u32()?;
        expect_magic(
            "simple reply header",
            SIMPLE_REPLY_MAGIC.into(),
            magic.into(),
        )?;
        Ok(Self {
            error: Errno(c.u32()?),
            handle: c.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    #[test]
    fn headers_round_trip() {
        let g = Greeting {
            flags: HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES,
        };
        assert_eq!(Greeting::parse(&g.encode()).unwrap(), g);
        let o = OptionHeader {
            option: 7,
            length: 12,
        };
        assert_eq!(OptionHeader::parse(&o.encode()).unwrap(), o);
        let r = OptionReplyHeader {
            option: 7,
            reply: ReplyType::ErrUnknown.into(),
            length: 3,
        };
        let parsed = OptionReplyHeader::parse(&r.encode()).unwrap();
        assert_eq!(parsed, r);
        assert!(parsed.is_error());
        let q = RequestHeader {
            flags: CommandFlags::FUA,
            command: Command::Write.into(),
            handle: u64::MAX - 3,
            offset: 1 << 40,
            length: 4096,
        };
        assert_eq!(RequestHeader::parse(&q.encode()).unwrap(), q);
        let s = SimpleReplyHeader {
            error: Errno::ENOSPC,
            handle: 99,
        };
        assert_eq!(SimpleReplyHeader::parse(&s.encode()).unwrap(), s);
        let e = ExportNameReply {
            size: 12345,
            flags: TransmissionFlags::HAS_FLAGS | TransmissionFlags::READ_ONLY,
        };
        assert_eq!(e.encode(false).len(), 134);
        assert_eq!(e.encode(true).len(), 10);
        assert_eq!(ExportNameReply::parse(&e.encode(false)).unwrap(), e);
    }

    #[test]
    fn known_wire_bytes() {
        // The option reply magic as the protocol document spells it.
        assert_eq!(OPTION_REPLY_MAGIC, 0x3e889045565a9);
        assert_eq!(&INIT_MAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&OPTION_MAGIC.to_be_bytes(), b"IHAVEOPT");
        let q = RequestHeader {
            flags: CommandFlags(0),
            command: 0,
            handle: 0x0102030405060708,
            offset: 0x1122,
            length: 0x200,
        };
        assert_eq!(
            q.encode(),
            [
                0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x11,
                0x22, 0, 0, 2, 0
            ]
        );
        assert_eq!(u32::from(ReplyType::ErrUnsup), 0x8000_0001);
    }

    #[test]
    fn payloads_round_trip() {
        let i = InfoRequest {
            name: "disk-ü".into(),
            requests: vec![3, 1, 2, 999],
        };
        assert_eq!(InfoRequest::parse(&i.encode()).unwrap(), i);
        for info in [
            Info::Export {
                size: 1 << 33,
                flags: TransmissionFlags::HAS_FLAGS,
            },
            Info::Name("n".into()),
            Info::Name(String::new()),
            Info::Description("a disk".into()),
            Info::BlockSize {
                minimum: 1,
                preferred: 4096,
                maximum: 1 << 25,
            },
            Info::Unknown { info_type: 77 },
        ] {
            assert_eq!(Info::parse(&info.encode()).unwrap(), info);
        }
        let s = ServerEntry {
            name: "a".into(),
            description: "the a disk".into(),
        };
        assert_eq!(ServerEntry::parse(&s.encode()).unwrap(), s);
    }

    #[test]
    fn bad_magic_is_named() {
        let mut b = RequestHeader {
            flags: CommandFlags(0),
            command: 0,
            handle: 1,
            offset: 0,
            length: 0,
        }
        .encode();
        b[0] ^= 0xff;
        assert!(matches!(
            RequestHeader::parse(&b),
            Err(WireError::BadMagic { .. })
        ));
        let mut r = SimpleReplyHeader {
            error: Errno(0),
            handle: 1,
        }
        .encode();
        r[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert!(matches!(
            SimpleReplyHeader::parse(&r),
            Err(WireError::BadMagic { .. })
        ));
        let mut g = Greeting {
            flags: HandshakeFlags(0),
        }
        .encode();
        // Oldstyle's second magic.
        g[8..16].copy_from_slice(&0x0000_4202_8186_1253_u64.to_be_bytes());
        assert!(matches!(
            Greeting::parse(&g),
            Err(WireError::BadMagic { .. })
        ));
    }

    #[test]
    fn truncated_input_is_incomplete() {
        let i = InfoRequest {
            name: "export".into(),
            requests: vec![3],
        }
        .encode();
        let q = RequestHeader {
            flags: CommandFlags(0),
            command: 1,
            handle: 2,
            offset: 3,
            length: 4,
        }
        .encode();
        for n in 0..q.len() {
            assert!(matches!(
                RequestHeader::parse(&q[..n]),
                Err(WireError::Incomplete { .. })
            ));
        }
        for n in 0..i.len() {
            // A cut inside the request list shows up as a count mismatch;
            // anywhere else it is incomplete. Either way, an error.
            assert!(InfoRequest::parse(&i[..n]).is_err(), "prefix {n}");
        }
        let info = Info::BlockSize {
            minimum: 1,
            preferred: 2,
            maximum: 3,
        }
        .encode();
        for n in 0..info.len() {
            assert!(Info::parse(&info[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn declared_lengths_are_bounded_before_use() {
        // A name length of 4 GiB in 10 bytes must be "too long", not an
        // attempt to slice or allocate.
        let mut data = u32::MAX.to_be_bytes().to_vec();
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            InfoRequest::parse(&data),
            Err(WireError::TooLong { .. })
        ));
        assert!(matches!(
            ServerEntry::parse(&data),
            Err(WireError::TooLong { .. })
        ));
        // Counts that disagree with the data.
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend_from_slice(&5u16.to_be_bytes());
        d.extend_from_slice(&[0, 3]);
        assert!(matches!(
            InfoRequest::parse(&d),
            Err(WireError::LengthMismatch { .. })
        ));
        // Extra bytes after a fixed-size info.
        let mut e = Info::Export {
            size: 1,
            flags: TransmissionFlags(1),
        }
        .encode();
        e.push(0);
        assert!(matches!(
            Info::parse(&e),
            Err(WireError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn strings_are_checked() {
        assert!(parse_string("s", b"ok").is_ok());
        assert!(matches!(
            parse_string("s", b"a\0b"),
            Err(WireError::InvalidString { .. })
        ));
        assert!(matches!(
            parse_string("s", &[0xff, 0xfe]),
            Err(WireError::InvalidString { .. })
        ));
        assert!(matches!(
            parse_string("s", &vec![b'a'; MAX_STRING + 1]),
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6e6264);
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut buf = vec![0u8; len];
            rng.fill_bytes(&mut buf);
            // Random bytes with valid magics reach the deeper checks too.
            if len >= 8 && rng.random_bool(0.5) {
                buf[..8].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
            }
            let _ = Greeting::parse(&buf);
            let _ = OptionHeader::parse(&buf);
            let _ = OptionReplyHeader::parse(&buf);
            let _ = RequestHeader::parse(&buf);
            let _ = SimpleReplyHeader::parse(&buf);
            let _ = ExportNameReply::parse(&buf);
            let _ = InfoRequest::parse(&buf);
            let _ = Info::parse(&buf);
            let _ = ServerEntry::parse(&buf);
        }
    }

    #[test]
    fn flags_debug_names_bits() {
        let f = TransmissionFlags::HAS_FLAGS
            | TransmissionFlags::READ_ONLY
            | TransmissionFlags(1 << 15);
        assert_eq!(
            format!("{f:?}"),
            "TransmissionFlags(HAS_FLAGS | READ_ONLY | 0x8000)"
        );
        assert_eq!(ClientFlags(3).unknown(), 0);
        assert_eq!(ClientFlags(4).unknown(), 4);
    }

    #[test]
    fn codes_convert() {
        assert_eq!(Command::try_from(6), Ok(Command::WriteZeroes));
        assert_eq!(Command::try_from(60), Err(60));
        assert_eq!(OptionCode::try_from(7), Ok(OptionCode::Go));
        assert_eq!(option_name(1234), "option 1234");
        assert_eq!(
            reply_name(REPLY_ERROR_BIT + 99),
            "unknown error reply 0x80000063"
        );
        assert_eq!(Errno(1000).name(), "unknown NBD error");
    }
}
