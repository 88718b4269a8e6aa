//! Messages between the runner and a role, one JSON object per line.

use std::io::{BufRead, Write};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Runner to role, on the role's standard input. End of input means `Stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum RoleCommand {
    /// Finish in-flight work, report final counters and exit.
    Stop,
}

/// What a remote backend role has carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeCounters {
    pub requests: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub peak_in_flight: usize,
}

/// What a migration source role saw, reported when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// The application's run on the source.
    pub app: crate::downtime::app::RunStats,
    /// When `Sync` suspended the application (CLOCK_MONOTONIC ns); none if
    /// it never was, or was resumed after a failed `Sync`.
    pub suspended_at_ns: Option<u64>,
    /// Bytes `ReadAt` served.
    pub bytes_read: u64,
    /// `Dirty` rounds and `Sync`s served.
    pub rounds: u64,
    pub syncs: u64,
    /// The last `Sync`'s flush of the source's mount, ms (its `msync`).
    pub sync_flush_ms: Option<f64>,
    /// The destination called `Close`.
    pub closed: bool,
    /// Requests the server read.
    pub requests: u64,
    /// CPU seconds of the process from `ready`.
    pub cpu_s: f64,
}

/// Role to runner, on the role's standard output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RoleEvent {
    /// Serving: where, and what (so the runner can check it serves the
    /// region it expects).
    Ready {
        addr: String,
        size: u64,
        sha256: String,
    },
    /// The last message before a clean exit.
    Stopped {
        serve: ServeCounters,
        cpu_s: f64,
        /// SHA-256 of what the role's store holds after serving (a remote
        /// backend's; other roles have none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        store_sha256: Option<String>,
    },
    /// The last message of a migration source before a clean exit.
    SourceStopped { report: SourceReport },
    /// The role failed; it exits non-zero after this.
    Error { message: String },
}

/// Longest line a peer may send; a longer one is a protocol error, so a
/// broken role cannot make the runner buffer without bound.
pub const MAX_LINE: usize = 64 * 1024;

/// Role side: writes one event to the runner (stdout), flushed.
pub fn emit(event: &RoleEvent) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, event)?;
    out.write_all(b"\n")?;
    out.flush().context("writing to the runner")
}

/// Role side: reads commands from stdin until `stop` or its end (the
/// runner went away); a line over [`MAX_LINE`] or not a command is an error.
pub fn wait_for_stop() -> anyhow::Result<()> {
    let stdin = std::io::stdin().lock();
    for line in stdin.split(b'\n') {
        let line = line.context("reading commands")?;
        if line.len() > MAX_LINE {
            anyhow::bail!("a command line of {} bytes exceeds {MAX_LINE}", line.len());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let command: RoleCommand = serde_json::from_slice(&line)
            .with_context(|| format!("bad command {:?}", String::from_utf8_lossy(&line)))?;
        match command {
            RoleCommand::Stop => break,
        }
    }
    Ok(())
}

/// Role side: runs `serve`, reporting a failure to the runner as an
/// `error` event as well as returning it.
pub fn run_reporting(serve: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let result = serve();
    if let Err(e) = &result {
        let _ = emit(&RoleEvent::Error {
            message: format!("{e:#}"),
        });
    }
    result
}
