//! The client side of the handshake: greeting, `NBD_OPT_GO` (falling back
//! to `NBD_OPT_EXPORT_NAME` for servers that do not know it),
//! `NBD_OPT_LIST` and `NBD_OPT_INFO`.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{discard, read_array};
use crate::error::NbdError;
use crate::export::{BlockSizes, MAX_MINIMUM_BLOCK_SIZE};
use crate::wire::{
    option_name, reply_name, ClientFlags, ExportNameReply, Greeting, HandshakeFlags, Info,
    InfoRequest, InfoType, OptionCode, OptionHeader, OptionReplyHeader, ReplyType, ServerEntry,
    TransmissionFlags, EXPORT_NAME_REPLY_LEN, GREETING_LEN, MAX_OPTION_DATA,
    OPTION_REPLY_HEADER_LEN, ZERO_PAD_LEN,
};

/// What the server told us about one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The canonical name if the server sent one, else the name asked for.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub transmission_flags: TransmissionFlags,
    /// Block size constraints, if the server advertised them.
    pub block_size: Option<BlockSizes>,
    /// The description, if the server sent one.
    pub description: Option<String>,
}

impl ExportInfo {
    /// Whether the server marked the export read-only.
    pub fn read_only(&self) -> bool {
        self.transmission_flags
            .contains(TransmissionFlags::READ_ONLY)
    }

    /// The alignment every request must keep: the advertised minimum, or 1.
    pub fn minimum_block(&self) -> u32 {
        self.block_size.map_or(1, |b| b.minimum)
    }

    /// The longest request to send: the advertised maximum (or the
    /// protocol's interoperable default of 32 MiB), capped at 32 MiB and
    /// rounded down to the minimum block size.
    pub fn maximum_request(&self) -> u32 {
        let max = self
            .block_size
            .map_or(crate::wire::MAX_REQUEST_LEN, |b| b.maximum)
            .min(crate::wire::MAX_REQUEST_LEN);
        let min = self.minimum_block();
        (max / min * min).max(min)
    }
}

/// One entry of `NBD_OPT_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The export name.
    pub name: String,
    /// The free text after the name, if any.
    pub description: Option<String>,
}

/// The most `NBD_REP_SERVER` data a list may hold in total.
const MAX_LIST_BYTES: u64 = 16 * 1024 * 1024;

/// What the server's greeting allows.
#[derive(Debug, Clone, Copy)]
struct Session {
    fixed: bool,
    no_zeroes: bool,
}

/// Reads the greeting and answers with the client flags matching what the
/// server offered.
async fn greet<S>(io: &mut S) -> Result<Session, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let greeting =
        Greeting::parse(&read_array::<GREETING_LEN, _>(io, "while reading the greeting").await?)?;
    let fixed = greeting.flags.contains(HandshakeFlags::FIXED_NEWSTYLE);
    let no_zeroes = greeting.flags.contains(HandshakeFlags::NO_ZEROES);
    let flags = ClientFlags(0)
        .with(ClientFlags::FIXED_NEWSTYLE, fixed)
        .with(ClientFlags::NO_ZEROES, no_zeroes);
    io.write_all(&flags.bits().to_be_bytes()).await?;
    Ok(Session { fixed, no_zeroes })
}

async fn send_option<S>(io: &mut S, option: OptionCode, data: &[u8]) -> Result<(), NbdError>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(
        &OptionHeader {
            option: option.into(),
            length: data.len() as u32,
        }
        .encode(),
    );
    out.extend_from_slice(data);
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one option reply to `option`, bounding its data.
async fn read_reply<S>(
    io: &mut S,
    option: OptionCode,
) -> Result<(OptionReplyHeader, Vec<u8>), NbdError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let head = OptionReplyHeader::parse(
        &read_array::<OPTION_REPLY_HEADER_LEN, _>(io, "while reading an option reply").await?,
    )?;
    if head.option != u32::from(option) {
        return Err(NbdError::Protocol(format!(
            "reply to {} arrived while waiting for the reply to {option}",
            option_name(head.option)
        )));
    }
    if head.length > MAX_OPTION_DATA {
        return Err(NbdError::TooLarge {
            what: "option reply data",
            length: head.length.into(),
            limit: MAX_OPTION_DATA.into(),
        });
    }
    let mut data = vec![0u8; head.length as usize];
    io.read_exact(&mut data)
        .await
        .map_err(NbdError::eof_during("inside option reply data"))?;
    Ok((head, data))
}

/// The error an error reply stands for; its data is a message for humans.
fn rejected(option: OptionCode, head: &OptionReplyHeader, data: &[u8]) -> NbdError {
    let mut message = String::from_utf8_lossy(data).into_owned();
    message.truncate(crate::wire::MAX_STRING);
    NbdError::OptionRejected {
        option: option.name().to_owned(),
        reply: reply_name(head.reply),
        message,
    }
}

/// The information items this client asks for.
const WANTED: [InfoType; 3] = [InfoType::BlockSize, InfoType::Name, InfoType::Description];

/// Collects `NBD_REP_INFO` replies.
#[derive(Debug, Default)]
struct InfoCollector {
    export: Option<(u64, TransmissionFlags)>,
    name: Option<String>,
    description: Option<String>,
    block_size: Option<BlockSizes>,
}

impl InfoCollector {
    fn absorb(&mut self, data: &[u8]) -> Result<(), NbdError> {
        match Info::parse(data)? {
            Info::Export { size, flags } => self.export = Some((size, flags)),
            Info::Name(name) => self.name = Some(name),
            Info::Description(d) => self.description = Some(d),
            Info::BlockSize {
                minimum,
                preferred,
                maximum,
            } => {
                // What we go on to rely on: a usable alignment, and a
                // maximum no smaller than it. Other oddities (a preferred
                // size under 512, a huge maximum) are harmless to us.
                if minimum == 0
                    || !minimum.is_power_of_two()
                    || minimum > MAX_MINIMUM_BLOCK_SIZE
                    || maximum < minimum
                {
                    return Err(NbdError::Protocol(format!(
                        "server advertised unusable block sizes: minimum {minimum}, \
                         preferred {preferred}, maximum {maximum}"
                    )));
                }
                self.block_size = Some(BlockSizes {
                    minimum,
                    preferred,
                    maximum,
                });
            }
            // Clients must ignore information they do not understand.
            Info::Unknown { .. } => {}
        }
        Ok(())
    }

    fn finish(self, asked_for: &str) -> Result<ExportInfo, NbdError> {
        let Some((size, transmission_flags)) = self.export else {
            return Err(NbdError::Protocol(
                "the server acknowledged without sending NBD_INFO_EXPORT".into(),
            ));
        };
        Ok(ExportInfo {
            name: self.name.unwrap_or_else(|| asked_for.to_owned()),
            size,
            transmission_flags,
            block_size: self.block_size,
            description: self.description,
        })
    }
}

/// How an `NBD_OPT_INFO`/`NBD_OPT_GO` exchange ended.
enum InfoOutcome {
    Acked(ExportInfo),
    Unsupported,
}

async fn info_exchange<S>(
    io: &mut S,
    option: OptionCode,
    name: &str,
) -> Result<InfoOutcome, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let request = InfoRequest {
        name: name.to_owned(),
        requests: WANTED.iter().map(|t| u16::from(*t)).collect(),
    };
    send_option(io, option, &request.encode()).await?;
    let mut collected = InfoCollector::default();
    loop {
        let (head, data) = read_reply(io, option).await?;
        match ReplyType::try_from(head.reply) {
            Ok(ReplyType::Info) => collected.absorb(&data)?,
            Ok(ReplyType::Ack) => return Ok(InfoOutcome::Acked(collected.finish(name)?)),
            Ok(ReplyType::ErrUnsup) => return Ok(InfoOutcome::Unsupported),
            _ if head.is_error() => return Err(rejected(option, &head, &data)),
            _ => {
                return Err(NbdError::Protocol(format!(
                    "unexpected {} in reply to {option}",
                    reply_name(head.reply)
                )))
            }
        }
    }
}

/// Runs the handshake for export `name` (empty: the server's default
/// export) and hands back the stream, positioned at the start of the
/// transmission phase, with what the server said about the export.
///
/// Uses `NBD_OPT_GO` asking for block sizes (so the constraints in the
/// returned info bind the caller), and falls back to
/// `NBD_OPT_EXPORT_NAME` if the server does not know `NBD_OPT_GO` or is not
/// fixed newstyle. This is what the kernel attach needs: the kernel takes
/// the socket from here.
pub async fn handshake<S>(mut stream: S, name: &str) -> Result<(S, ExportInfo), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = greet(&mut stream).await?;
    if session.fixed {
        match info_exchange(&mut stream, OptionCode::Go, name).await? {
            InfoOutcome::Acked(info) => return Ok((stream, info)),
            InfoOutcome::Unsupported => {}
        }
    }
    let info = export_name(&mut stream, name, session).await?;
    Ok((stream, info))
}

async fn export_name<S>(io: &mut S, name: &str, session: Session) -> Result<ExportInfo, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    send_option(io, OptionCode::ExportName, name.as_bytes()).await?;
    let mut head = [0u8; EXPORT_NAME_REPLY_LEN];
    io.read_exact(&mut head).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            NbdError::ExportRefused {
                name: name.to_owned(),
            }
        } else {
            NbdError::Io(e)
        }
    })?;
    let reply = ExportNameReply::parse(&head)?;
    if !session.no_zeroes {
        discard(
            io,
            ZERO_PAD_LEN as u64,
            "inside the export name reply padding",
        )
        .await?;
    }
    Ok(ExportInfo {
        name: name.to_owned(),
        size: reply.size,
        transmission_flags: reply.flags,
        block_size: None,
        description: None,
    })
}

/// Ends option haggling politely: `NBD_OPT_ABORT`, then waits for the
/// acknowledgement (or the server hanging up, which older servers do).
async fn abort<S>(io: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    if send_option(io, OptionCode::Abort, &[]).await.is_ok() {
        let _ = read_reply(io, OptionCode::Abort).await;
    }
    let _ = io.shutdown().await;
}

/// Lists the server's exports with `NBD_OPT_LIST`, then aborts.
pub(crate) async fn list<S>(mut stream: S) -> Result<Vec<ExportSummary>, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = greet(&mut stream).await?;
    if !session.fixed {
        return Err(NbdError::NotFixedNewstyle {
            needed: "NBD_OPT_LIST",
        });
    }
    send_option(&mut stream, OptionCode::List, &[]).await?;
    let mut out = Vec::new();
    let mut total: u64 = 0;
    let result = loop {
        let (head, data) = read_reply(&mut stream, OptionCode::List).await?;
        match ReplyType::try_from(head.reply) {
            Ok(ReplyType::Server) => {
                total += data.len() as u64;
                if total > MAX_LIST_BYTES {
                    break Err(NbdError::TooLarge {
                        what: "NBD_OPT_LIST reply",
                        length: total,
                        limit: MAX_LIST_BYTES,
                    });
                }
                let entry = ServerEntry::parse(&data)?;
                out.push(ExportSummary {
                    name: entry.name,
                    description: (!entry.description.is_empty()).then_some(entry.description),
                });
            }
            Ok(ReplyType::Ack) => break Ok(out),
            _ if head.is_error() => break Err(rejected(OptionCode::List, &head, &data)),
            _ => {
                break Err(NbdError::Protocol(format!(
                    "unexpected {} in reply to NBD_OPT_LIST",
                    reply_name(head.reply)
                )))
            }
        }
    };
    abort(&mut stream).await;
    result
}

/// Asks about export `name` with `NBD_OPT_INFO`, then aborts.
pub(crate) async fn info<S>(mut stream: S, name: &str) -> Result<ExportInfo, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = greet(&mut stream).await?;
    if !session.fixed {
        return Err(NbdError::NotFixedNewstyle {
            needed: "NBD_OPT_INFO",
        });
    }
    let result = match info_exchange(&mut stream, OptionCode::Info, name).await {
        Ok(InfoOutcome::Acked(info)) => Ok(info),
        Ok(InfoOutcome::Unsupported) => Err(NbdError::OptionRejected {
            option: OptionCode::Info.name().to_owned(),
            reply: ReplyType::ErrUnsup.name().to_owned(),
            message: String::new(),
        }),
        Err(e) => Err(e),
    };
    abort(&mut stream).await;
    result
}
