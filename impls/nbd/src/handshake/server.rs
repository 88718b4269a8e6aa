//! The server side of the fixed newstyle handshake.
//!
//! A state machine of one state: after the greeting and the client's flags,
//! read an option, answer it, repeat, until the client picks an export
//! (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`), aborts, or hangs up. Every option
//! the server does not implement gets `NBD_REP_ERR_UNSUP` and the loop goes
//! on, as the protocol's baseline requires.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{discard, read_array, read_exact_or_eof};
use crate::error::NbdError;
use crate::export::Export;
use crate::wire::{
    encode_option_reply, option_name, ClientFlags, ExportNameReply, Greeting, HandshakeFlags, Info,
    InfoRequest, InfoType, OptionCode, OptionHeader, ReplyType, ServerEntry, OPTION_HEADER_LEN,
};

/// How the handshake ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Enter transmission on `exports[export]`, whose size is `size`.
    Transmission { export: usize, size: u64 },
    /// The client aborted or hung up between options.
    Ended,
}

/// What the server offers in the greeting.
const OFFERED: HandshakeFlags =
    HandshakeFlags(HandshakeFlags::FIXED_NEWSTYLE.bits() | HandshakeFlags::NO_ZEROES.bits());

/// Runs the handshake on `io` until transmission or the end.
pub(crate) async fn negotiate<S>(
    io: &mut S,
    exports: &[Export],
    max_option_len: u32,
) -> Result<Outcome, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    io.write_all(&Greeting { flags: OFFERED }.encode()).await?;
    io.flush().await?;

    let flags = ClientFlags(u32::from_be_bytes(
        read_array::<4, _>(io, "while reading the client flags").await?,
    ));
    // Each client flag answers the handshake flag with the same bit.
    let offered = u32::from(OFFERED.bits());
    let bad = flags.bits() & !offered;
    if bad != 0 {
        return Err(NbdError::BadClientFlags {
            flags: flags.bits(),
            bad,
            offered,
        });
    }
    let no_zeroes = flags.contains(ClientFlags::NO_ZEROES);

    loop {
        let mut head = [0u8; OPTION_HEADER_LEN];
        if !read_exact_or_eof(io, &mut head, "inside an option header").await? {
            return Ok(Outcome::Ended);
        }
        let header = OptionHeader::parse(&head)?;
        let code = OptionCode::try_from(header.option);

        if header.length > max_option_len {
            discard(io, header.length.into(), "inside option data").await?;
            if code == Ok(OptionCode::ExportName) {
                // This option has no error reply: all that is left is to hang up.
                return Err(NbdError::TooLarge {
                    what: "NBD_OPT_EXPORT_NAME data",
                    length: header.length.into(),
                    limit: max_option_len.into(),
                });
            }
            let msg = format!(
                "{} data of {} bytes is over this server's {max_option_len}-byte limit",
                option_name(header.option),
                header.length
            );
            send(io, header.option, ReplyType::ErrTooBig, msg.as_bytes()).await?;
            continue;
        }
        let mut data = vec![0u8; header.length as usize];
        tokio::io::AsyncReadExt::read_exact(io, &mut data)
            .await
            .map_err(NbdError::eof_during("inside option data"))?;

        match code {
            Ok(OptionCode::ExportName) => {
                let name = crate::wire::parse_string("export name", &data)?;
                let Some(index) = find(exports, &name) else {
                    return Err(NbdError::UnknownExport {
                        name,
                        available: exports.iter().map(|e| e.name.clone()).collect(),
                    });
                };
                let export = &exports[index];
                let size = export.backend.size().await.map_err(|e| {
                    NbdError::Protocol(format!("export {:?} has no size: {e}", export.name))
                })?;
                let reply = ExportNameReply {
                    size,
                    flags: export.transmission_flags(),
                };
                io.write_all(&reply.encode(no_zeroes)).await?;
                io.flush().await?;
                return Ok(Outcome::Transmission {
                    export: index,
                    size,
                });
            }
            Ok(OptionCode::Abort) => {
                // The client may already be gone; the reply is a courtesy.
                let _ = send(io, header.option, ReplyType::Ack, &[]).await;
                return Ok(Outcome::Ended);
            }
            Ok(OptionCode::List) => {
                if !data.is_empty() {
                    let msg = "NBD_OPT_LIST takes no data";
                    send(io, header.option, ReplyType::ErrInvalid, msg.as_bytes()).await?;
                    continue;
                }
                let mut out = Vec::new();
                for e in exports {
                    let entry = ServerEntry {
                        name: e.name.clone(),
                        description: e.description.clone().unwrap_or_default(),
                    };
                    out.extend(encode_option_reply(
                        header.option,
                        ReplyType::Server,
                        &entry.encode(),
                    ));
                }
                out.extend(encode_option_reply(header.option, ReplyType::Ack, &[]));
                io.write_all(&out).await?;
                io.flush().await?;
            }
            Ok(go_or_info @ (OptionCode::Info | OptionCode::Go)) => {
                if let Some(size_and_index) = answer_info(io, header.option, &data, exports).await?
                {
                    if go_or_info == OptionCode::Go {
                        let (index, size) = size_and_index;
                        return Ok(Outcome::Transmission {
                            export: index,
                            size,
                        });
                    }
                }
            }
            _ => {
                // STARTTLS (we run in NOTLS mode), STRUCTURED_REPLY (simple
                // replies only), meta contexts, extended headers, and
                // anything unknown.
                let msg = format!(
                    "{} is not supported by this server",
                    option_name(header.option)
                );
                send(io, header.option, ReplyType::ErrUnsup, msg.as_bytes()).await?;
            }
        }
    }
}

/// Answers `NBD_OPT_INFO`/`NBD_OPT_GO`. Returns the export index and size
/// when the answer ended in `NBD_REP_ACK`.
async fn answer_info<S>(
    io: &mut S,
    option: u32,
    data: &[u8],
    exports: &[Export],
) -> Result<Option<(usize, u64)>, NbdError>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    let request = match InfoRequest::parse(data) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("malformed {} data: {e}", option_name(option));
            send(io, option, ReplyType::ErrInvalid, msg.as_bytes()).await?;
            return Ok(None);
        }
    };
    let Some(index) = find(exports, &request.name) else {
        let msg = format!("no export named {:?}", request.name);
        send(io, option, ReplyType::ErrUnknown, msg.as_bytes()).await?;
        return Ok(None);
    };
    let export = &exports[index];
    let size = match export.backend.size().await {
        Ok(size) => size,
        Err(e) => {
            let msg = format!("export {:?} is unavailable: {e}", export.name);
            send(io, option, ReplyType::ErrUnknown, msg.as_bytes()).await?;
            return Ok(None);
        }
    };
    let asked = |t: InfoType| request.requests.contains(&u16::from(t));

    let mut out = Vec::new();
    let mut info = |i: Info| out.extend(encode_option_reply(option, ReplyType::Info, &i.encode()));
    info(Info::Export {
        size,
        flags: export.transmission_flags(),
    });
    if asked(InfoType::Name) {
        info(Info::Name(export.name.clone()));
    }
    if let (true, Some(d)) = (asked(InfoType::Description), &export.description) {
        info(Info::Description(d.clone()));
    }
    // Sent whether asked or not: the protocol lets a server volunteer it,
    // and a client that did not ask still learns the limits we enforce.
    info(Info::BlockSize {
        minimum: export.block_size.minimum,
        preferred: export.block_size.preferred,
        maximum: export.block_size.maximum,
    });
    out.extend(encode_option_reply(option, ReplyType::Ack, &[]));
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(Some((index, size)))
}

/// The export a name selects; the empty name selects the first (default) export.
fn find(exports: &[Export], name: &str) -> Option<usize> {
    if name.is_empty() {
        return (!exports.is_empty()).then_some(0);
    }
    exports.iter().position(|e| e.name == name)
}

async fn send<S>(io: &mut S, option: u32, reply: ReplyType, data: &[u8]) -> Result<(), NbdError>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    io.write_all(&encode_option_reply(option, reply, data))
        .await?;
    io.flush().await?;
    Ok(())
}
