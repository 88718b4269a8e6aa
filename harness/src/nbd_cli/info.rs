//! `harness nbd info`: asking a server about its exports and reporting them.

use std::fmt::Write as _;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use nbd::{ExportInfo, ExportSummary, NbdClient, TransmissionFlags};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::size::human_size;
use super::url::{parse_url, tcp_uri, NbdTarget, NbdUrl};
use super::InfoArgs;

/// How long `info` waits for a server to answer one question.
const INFO_TIMEOUT: Duration = Duration::from_secs(30);

/// One export, as `info` reports it.
#[derive(Debug, Clone, Serialize)]
struct ExportReport {
    /// The export name.
    name: String,
    /// Its URI.
    uri: String,
    /// Size in bytes.
    size: u64,
    /// Whether the server refuses writes.
    read_only: bool,
    /// Advertised block sizes, if any.
    block_size: Option<BlockSizeReport>,
    /// Names of the transmission flags set (unknown bits as hex).
    flags: Vec<String>,
    /// The raw transmission flags.
    flags_raw: u16,
    /// The server's description, if any.
    description: Option<String>,
}

/// Advertised block size constraints.
#[derive(Debug, Clone, Copy, Serialize)]
struct BlockSizeReport {
    /// Smallest length and alignment.
    minimum: u32,
    /// Efficient length and alignment.
    preferred: u32,
    /// Longest request.
    maximum: u32,
}

/// What `info --json` prints.
#[derive(Debug, Clone, Serialize)]
struct InfoReport {
    /// The URL asked about.
    uri: String,
    /// The exports described: every export, or the one named.
    exports: Vec<ExportReport>,
}

/// The transmission flags by name (`READ_ONLY` and `HAS_FLAGS` left out:
/// the first has its own field, the second is always set).
const FLAG_NAMES: [(TransmissionFlags, &str); 9] = [
    (TransmissionFlags::SEND_FLUSH, "flush"),
    (TransmissionFlags::SEND_FUA, "fua"),
    (TransmissionFlags::ROTATIONAL, "rotational"),
    (TransmissionFlags::SEND_TRIM, "trim"),
    (TransmissionFlags::SEND_WRITE_ZEROES, "write-zeroes"),
    (TransmissionFlags::SEND_DF, "df"),
    (TransmissionFlags::CAN_MULTI_CONN, "multi-conn"),
    (TransmissionFlags::SEND_RESIZE, "resize"),
    (TransmissionFlags::SEND_CACHE, "cache"),
];

fn flag_names(flags: TransmissionFlags) -> Vec<String> {
    let mut names: Vec<String> = FLAG_NAMES
        .iter()
        .filter(|(flag, _)| flags.contains(*flag))
        .map(|(_, name)| (*name).to_owned())
        .collect();
    if flags.contains(TransmissionFlags::SEND_FAST_ZERO) {
        names.push("fast-zero".to_owned());
    }
    if flags.unknown() != 0 {
        names.push(format!("{:#x}", flags.unknown()));
    }
    names
}

fn export_report(url: &NbdUrl, info: ExportInfo, listed: Option<&ExportSummary>) -> ExportReport {
    ExportReport {
        uri: url.with_export(&info.name),
        size: info.size,
        read_only: info.read_only(),
        block_size: info.block_size.map(|b| BlockSizeReport {
            minimum: b.minimum,
            preferred: b.preferred,
            maximum: b.maximum,
        }),
        flags: flag_names(info.transmission_flags),
        flags_raw: info.transmission_flags.bits(),
        description: info
            .description
            .or_else(|| listed.and_then(|l| l.description.clone())),
        name: info.name,
    }
}

/// A connection of either kind, for the handshake-only client calls.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(target: &NbdTarget) -> anyhow::Result<Box<dyn Io>> {
    Ok(match target {
        NbdTarget::Tcp { host, port } => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .with_context(|| format!("connecting to {}", tcp_uri(host, *port, None)))?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        NbdTarget::Unix { socket } => Box::new(
            tokio::net::UnixStream::connect(socket)
                .await
                .with_context(|| format!("connecting to Unix socket {}", socket.display()))?,
        ),
    })
}

/// Bounds one question to the server, so a silent peer cannot hang `info`.
async fn timed<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(INFO_TIMEOUT, work)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} s", INFO_TIMEOUT.as_secs()))?
}

async fn describe(url: &NbdUrl) -> anyhow::Result<InfoReport> {
    let ask = |name: String| async move {
        let what = format!("asking {} about export {name:?}", url.with_export(&name));
        let work = async {
            let stream = connect(&url.target).await?;
            Ok(NbdClient::info(stream, &name).await?)
        };
        timed(work).await.context(what)
    };
    let exports = match &url.export {
        Some(name) => vec![export_report(url, ask(name.clone()).await?, None)],
        None => {
            let what = format!("listing the exports of {url}");
            let list = timed(async {
                let stream = connect(&url.target).await?;
                Ok(NbdClient::list(stream).await?)
            })
            .await
            .context(what)?;
            let mut reports = Vec::with_capacity(list.len());
            for entry in &list {
                let info = ask(entry.name.clone()).await?;
                reports.push(export_report(url, info, Some(entry)));
            }
            reports
        }
    };
    Ok(InfoReport {
        uri: url.to_string(),
        exports,
    })
}

pub(super) fn info(args: &InfoArgs) -> anyhow::Result<ExitCode> {
    let url = parse_url(&args.url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(describe(&url))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", info_text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn info_text(report: &InfoReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{}: {} export(s)", report.uri, report.exports.len());
    for e in &report.exports {
        let _ = writeln!(out, "export {:?}", e.name);
        let _ = writeln!(out, "  uri           {}", e.uri);
        let _ = writeln!(
            out,
            "  size          {} bytes ({})",
            e.size,
            human_size(e.size)
        );
        let _ = match e.block_size {
            Some(b) => writeln!(
                out,
                "  block sizes   minimum {}, preferred {}, maximum {}",
                b.minimum, b.preferred, b.maximum
            ),
            None => writeln!(out, "  block sizes   not advertised"),
        };
        let _ = writeln!(
            out,
            "  read-only     {}",
            if e.read_only { "yes" } else { "no" }
        );
        let _ = writeln!(
            out,
            "  flags         {} ({:#06x})",
            e.flags.join(" "),
            e.flags_raw
        );
        if let Some(d) = &e.description {
            let _ = writeln!(out, "  description   {d}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_named() {
        let f = TransmissionFlags::HAS_FLAGS
            | TransmissionFlags::READ_ONLY
            | TransmissionFlags::SEND_FLUSH
            | TransmissionFlags::CAN_MULTI_CONN
            | TransmissionFlags::SEND_FAST_ZERO
            | TransmissionFlags(1 << 15);
        assert_eq!(
            flag_names(f),
            ["flush", "multi-conn", "fast-zero", "0x8000"]
        );
    }
}
