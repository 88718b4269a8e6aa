//! The registry of transports and the two entry points that work the same
//! for all of them: [`TransportKind::serve`] answers calls on a TCP
//! listener, [`TransportKind::connect`] returns a [`Client`] whose
//! [`Client::backend`] and [`Client::seeder`] are the remote services.
//!
//! | kind    | wire                                                  | both ways | methods |
//! |---------|-------------------------------------------------------|-----------|---------|
//! | `jsonl` | JSON lines, base64 payloads, ids (dudirekta-style)    | yes       | all     |
//! | `grpc`  | tonic over HTTP/2, prost messages from `proto/`        | no        | all     |
//! | `frpc`  | 22-byte binary header + body, ids, multiplexed         | no        | all     |
//! | `tarpc` | tarpc, length-delimited bincode frames                 | no        | all     |
//! | `raw`   | 13-byte request, 4-byte length + bytes, in order       | no        | `ReadAt`, `Size` |

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use backends::SharedBackend;

use crate::client::ClientStats;
use crate::meter::ByteCounters;
use crate::remote::{Pool, RemoteBackend, RemoteSeeder, Rpc};
use crate::server::{ServeConfig, ServeStats, DEFAULT_LINGER, DEFAULT_MAX_IN_FLIGHT};
use crate::service::{Method, Services, SharedSeeder};
use crate::wire::DEFAULT_MAX_MESSAGE;

/// Default time one call may take before it fails: long enough for a 32 MiB
/// message over a slow emulated link, short enough that a dead peer is
/// noticed.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// One of the wires the study compares; in files and on command lines by
/// its [`TransportKind::name`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// dudirekta-style JSON lines, bidirectional.
    Jsonl,
    /// gRPC: tonic + prost over HTTP/2.
    Grpc,
    /// The lean binary RPC in the spirit of fRPC.
    Frpc,
    /// tarpc with a bincode codec.
    Tarpc,
    /// The raw TCP baseline: the ceiling the others are measured against.
    Raw,
}

impl TransportKind {
    /// Every transport, in the order the study lists them.
    pub const ALL: [Self; 5] = [Self::Jsonl, Self::Grpc, Self::Frpc, Self::Tarpc, Self::Raw];

    /// The name used on command lines, in scenarios and results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Grpc => "grpc",
            Self::Frpc => "frpc",
            Self::Tarpc => "tarpc",
            Self::Raw => "raw",
        }
    }

    /// Whether the transport carries `method`. The raw baseline only reads:
    /// its other methods fail with an error saying so.
    pub fn supports(self, method: Method) -> bool {
        match self {
            Self::Raw => matches!(
                method,
                Method::ReadAt | Method::Size | Method::SeederReadAt | Method::SeederSize
            ),
            _ => true,
        }
    }

    /// Whether both ends may call each other over one connection.
    pub fn is_bidirectional(self) -> bool {
        self == Self::Jsonl
    }

    /// Serves `services` on `listener` until `shutdown` is cancelled, then
    /// lets open connections finish what is in flight (up to
    /// [`TransportConfig::linger`]) and returns what all connections
    /// carried.
    pub async fn serve(
        self,
        listener: TcpListener,
        services: Services,
        config: TransportConfig,
        shutdown: CancellationToken,
    ) -> Result<ServeStats, TransportError> {
        config.validate()?;
        let served = match self {
            Self::Frpc => {
                crate::server::serve_listener_services(
                    listener,
                    services,
                    config.serve_config(),
                    shutdown,
                )
                .await
            }
            Self::Jsonl => crate::jsonl::serve_listener(listener, services, config, shutdown).await,
            Self::Raw => crate::raw::serve_listener(listener, services, config, shutdown).await,
            Self::Tarpc => {
                crate::tarpc_rpc::serve_listener(listener, services, config, shutdown).await
            }
            Self::Grpc => crate::grpc::serve_listener(listener, services, config, shutdown).await,
        };
        served.map_err(|source| TransportError::Serve { kind: self, source })
    }

    /// Opens [`TransportConfig::connections`] connections to `addr` and
    /// returns them as one client.
    pub async fn connect(
        self,
        addr: SocketAddr,
        config: &TransportConfig,
    ) -> Result<Client, TransportError> {
        config.validate()?;
        let bytes = Arc::new(ByteCounters::default());
        let mut members = Vec::with_capacity(config.connections);
        for _ in 0..config.connections {
            let bytes = bytes.clone();
            let member = match self {
                Self::Frpc => crate::client::connect_rpc(addr, config, bytes).await,
                Self::Jsonl => crate::jsonl::connect_rpc(addr, config, bytes).await,
                Self::Raw => crate::raw::connect_rpc(addr, config, bytes).await,
                Self::Tarpc => crate::tarpc_rpc::connect_rpc(addr, config, bytes).await,
                Self::Grpc => crate::grpc::connect_rpc(addr, config, bytes).await,
            };
            members.push(member.map_err(|source| TransportError::Connect {
                kind: self,
                addr,
                source,
            })?);
        }
        Ok(Client {
            kind: self,
            pool: Arc::new(Pool::new(members)),
            bytes,
            deadline: config.deadline,
        })
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A transport name that is not one of [`TransportKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?}; known transports are jsonl, grpc, frpc, tarpc, raw")]
pub struct UnknownTransport(pub String);

impl FromStr for TransportKind {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, UnknownTransport> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownTransport(s.to_owned()))
    }
}

/// How a transport is run, on both sides.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest payload (read or written data) one message carries, in
    /// bytes; larger accesses are split by the client. Both sides must
    /// agree. At least 1.
    pub max_message: u32,
    /// Connections a client opens and spreads its calls over. At least 1.
    pub connections: usize,
    /// Time one call may take on the client before it fails; `None` waits
    /// as long as the connection lives.
    pub deadline: Option<Duration>,
    /// Calls one connection handles at once on the serving side (and
    /// queues on the calling side) before it pushes back. At least 1.
    pub max_in_flight: usize,
    /// Time a closing connection has to deliver its last replies.
    pub linger: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_message: DEFAULT_MAX_MESSAGE,
            connections: 1,
            deadline: Some(DEFAULT_DEADLINE),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            linger: DEFAULT_LINGER,
        }
    }
}

impl TransportConfig {
    /// Checks the fields against their allowed ranges.
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |field: &'static str, value: String, allowed: &'static str| {
            Err(TransportError::Config {
                field,
                value,
                allowed,
            })
        };
        if self.max_message == 0 {
            return bad("max_message", "0".into(), "1 to 4294967295 bytes");
        }
        if self.connections == 0 {
            return bad("connections", "0".into(), "at least 1");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "0".into(), "at least 1");
        }
        if self.deadline == Some(Duration::ZERO) {
            return bad("deadline", "0s".into(), "more than zero, or none");
        }
        Ok(())
    }

    /// The frpc server settings this config means.
    pub fn serve_config(&self) -> ServeConfig {
        ServeConfig {
            max_message: self.max_message,
            max_in_flight: self.max_in_flight,
            linger: self.linger,
        }
    }
}

/// Why serving or connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A config field out of its range.
    #[error("transport config {field} = {value} is not allowed; allowed: {allowed}")]
    Config {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },
    /// A connection could not be opened.
    #[error("{kind}: connecting to {addr} failed: {source}")]
    Connect {
        kind: TransportKind,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The server could not run.
    #[error("{kind}: serving failed: {source}")]
    Serve {
        kind: TransportKind,
        source: std::io::Error,
    },
}

/// The calling side of a transport: a pool of connections that carries
/// either service. Cheap to clone; the connections close when the client
/// and every backend or seeder taken from it are dropped.
#[derive(Debug, Clone)]
pub struct Client {
    kind: TransportKind,
    pool: Arc<Pool<Arc<dyn Rpc>>>,
    bytes: Arc<ByteCounters>,
    deadline: Option<Duration>,
}

impl Client {
    /// The transport this client speaks.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// The server's backend service as a [`backends::Backend`].
    pub fn backend(&self) -> SharedBackend {
        Arc::new(RemoteBackend::new(self.pool.clone(), self.deadline))
    }

    /// The server's seeder service.
    pub fn seeder(&self) -> SharedSeeder {
        Arc::new(RemoteSeeder::new(self.pool.clone(), self.deadline))
    }

    /// The pool as a bare [`Rpc`], for callers that build their own calls.
    pub fn rpc(&self) -> Arc<dyn Rpc> {
        self.pool.clone()
    }

    /// Calls made and bytes carried by all connections so far.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.pool.calls(),
            bytes_sent: self.bytes.written.load(Ordering::Relaxed),
            bytes_received: self.bytes.read.load(Ordering::Relaxed),
        }
    }

    /// Whether every connection is known to be dead.
    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in TransportKind::ALL {
            assert_eq!(kind.name().parse::<TransportKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.name());
        }
        let err = "http".parse::<TransportKind>().unwrap_err();
        assert!(err.to_string().contains("\"http\""), "{err}");
        assert!(err.to_string().contains("frpc"), "{err}");
    }

    #[test]
    fn configs_are_checked() {
        assert!(TransportConfig::default().validate().is_ok());
        let bad = TransportConfig {
            connections: 0,
            ..TransportConfig::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("connections = 0"), "{err}");
        let bad = TransportConfig {
            max_message: 0,
            ..TransportConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn only_raw_is_limited() {
        for kind in TransportKind::ALL {
            let all = Method::ALL.iter().all(|m| kind.supports(*m));
            assert_eq!(all, kind != TransportKind::Raw, "{kind}");
        }
        assert!(TransportKind::Raw.supports(Method::ReadAt));
        assert!(!TransportKind::Raw.supports(Method::WriteAt));
    }
}
