//! Messages between the runner and a role, one JSON object per line.

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
    Stopped { serve: ServeCounters, cpu_s: f64 },
    /// The role failed; it exits non-zero after this.
    Error { message: String },
}

/// Longest line a peer may send; a longer one is a protocol error, so a
/// broken role cannot make the runner buffer without bound.
pub const MAX_LINE: usize = 64 * 1024;
