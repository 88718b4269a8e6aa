//! The crate's one error type for connections, and its mapping onto
//! [`BackendError`].

use std::io;
use std::time::Duration;

use backends::BackendError;

use crate::wire::{Command, Errno, WireError};

/// Why a handshake, a connection or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that cannot be decoded.
    #[error("malformed NBD message: {0}")]
    Wire(#[from] WireError),
    /// The peer closed the connection in the middle of something.
    #[error("the peer closed the connection {during}")]
    UnexpectedEof { during: &'static str },
    /// The peer broke a rule of the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server only speaks non-fixed newstyle, which cannot do what was asked.
    #[error("the server does not speak fixed newstyle, which {needed} needs")]
    NotFixedNewstyle { needed: &'static str },
    /// The client set handshake flags that are unknown or were not offered.
    #[error("client flags {flags:#x} include bits {bad:#x} the server did not offer (offered {offered:#x})")]
    BadClientFlags { flags: u32, bad: u32, offered: u32 },
    /// The server answered an option with an error reply.
    #[error("the server refused {option}: {reply}{}", fmt_message(.message))]
    OptionRejected {
        option: String,
        reply: String,
        message: String,
    },
    /// The server closed the connection instead of answering
    /// `NBD_OPT_EXPORT_NAME`, the one option that cannot carry an error.
    #[error(
        "the server closed the connection instead of opening export {name:?} (unknown export?)"
    )]
    ExportRefused { name: String },
    /// A client asked (with `NBD_OPT_EXPORT_NAME`) for an export this server lacks.
    #[error("no export named {name:?}; exports are {available:?}")]
    UnknownExport {
        name: String,
        available: Vec<String>,
    },
    /// The server answered a request with an error.
    #[error("{command} of {length} bytes at offset {offset} failed on the server: {errno}")]
    Server {
        command: Command,
        offset: u64,
        length: u32,
        errno: Errno,
    },
    /// A write to an export the server marked read-only.
    #[error("export {name:?} is read-only: the server refuses writes")]
    ReadOnly { name: String },
    /// A write, read or option longer than this side accepts.
    #[error("{what} of {length} bytes is over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        length: u64,
        limit: u64,
    },
    /// The connection broke; requests can no longer be sent.
    #[error("NBD connection lost: {0}")]
    Closed(String),
    /// [`NbdClient::disconnect`](crate::NbdClient::disconnect) was called.
    #[error("the NBD client has disconnected")]
    Disconnected,
    /// The handshake took too long.
    #[error("the handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
}

fn fmt_message(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

impl NbdError {
    /// Turns an `UnexpectedEof` I/O error into [`NbdError::UnexpectedEof`]
    /// naming what was being read.
    pub(crate) fn eof_during(during: &'static str) -> impl FnOnce(io::Error) -> NbdError {
        move |e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                NbdError::UnexpectedEof { during }
            } else {
                NbdError::Io(e)
            }
        }
    }
}

impl From<NbdError> for BackendError {
    fn from(e: NbdError) -> Self {
        match e {
            NbdError::Io(io) => BackendError::Io(io),
            NbdError::ReadOnly { .. } => BackendError::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                e.to_string(),
            )),
            NbdError::Disconnected => BackendError::Closed,
            other => BackendError::Remote(other.to_string()),
        }
    }
}
