//! grpc: the services as gRPC services (`proto/memsync.proto`), tonic over
//! HTTP/2, messages generated at build time by protox and prost.
//!
//! # Settings
//!
//! - Message limits (both directions, both sides) are the maximum message
//!   plus [`FRAME_OVERHEAD`]; tonic checks the 5-byte length prefix before
//!   buffering a message, so a larger one costs nothing but an error.
//! - HTTP/2 flow-control windows are raised (a stream window of at least
//!   two maximum messages, a connection window of [`CONNECTION_WINDOW`]) so
//!   a high-RTT link is not throttled by the 64 KiB default.
//! - Concurrent streams per connection: [`TransportConfig::max_in_flight`].
//! - A client opens one HTTP/2 connection per pooled member, through its
//!   own connector (byte counting, `TCP_NODELAY`).
//!
//! # Limits and bad input
//!
//! HTTP/2 isolates calls in streams: a message over the limit fails that
//! call with `RESOURCE_EXHAUSTED` (or `OUT_OF_RANGE`) and resets its stream,
//! but the connection and the other calls on it go on. Bytes that are not
//! HTTP/2 end the connection (h2 answers with GOAWAY and closes), failing
//! every call on it. Errors of the services themselves travel in the reply
//! messages, typed.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Response, Status};

use backends::{BackendError, Result};

use crate::kind::TransportConfig;
use crate::meter::{ByteCounters, Counted, Meter};
use crate::remote::Rpc;
use crate::server::ServeStats;
use crate::service::{check_limit, dispatch, Call, Method, Outcome, Services};

/// The messages and services generated from `proto/memsync.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("memsync.v1");
}

use pb::backend_client::BackendClient;
use pb::backend_server::BackendServer;
use pb::seeder_client::SeederClient;
use pb::seeder_server::SeederServer;

/// Bytes a message may hold beyond its payload: field tags and lengths, an
/// error message.
pub const FRAME_OVERHEAD: usize = 4096;
/// The HTTP/2 connection window both sides announce: room for many chunks
/// in flight at a high RTT.
pub const CONNECTION_WINDOW: u32 = 1 << 30;
/// The largest window HTTP/2 allows.
const MAX_WINDOW: u64 = (1 << 31) - 1;

fn message_limit(config: &TransportConfig) -> usize {
    config.max_message as usize + FRAME_OVERHEAD
}

fn stream_window(config: &TransportConfig) -> u32 {
    let wanted = (u64::from(config.max_message) + FRAME_OVERHEAD as u64) * 2;
    wanted.clamp(1 << 20, MAX_WINDOW) as u32
}

fn to_pb(e: &BackendError) -> pb::Error {
    use pb::error::Kind;
    let kind = match e {
        BackendError::OutOfRange { offset, len, size } => Kind::OutOfRange(pb::Range {
            offset: *offset,
            len: *len,
            limit: *size,
        }),
        BackendError::Unaligned {
            offset,
            len,
            chunk_size,
        } => Kind::Unaligned(pb::Range {
            offset: *offset,
            len: *len,
            limit: *chunk_size,
        }),
        BackendError::Io(e) => Kind::Io(e.to_string()),
        BackendError::Remote(m) => Kind::Remote(m.clone()),
        BackendError::Closed => Kind::Closed(pb::Empty {}),
    };
    pb::Error { kind: Some(kind) }
}

fn from_pb(e: pb::Error) -> BackendError {
    use pb::error::Kind;
    match e.kind {
        Some(Kind::OutOfRange(r)) => BackendError::OutOfRange {
            offset: r.offset,
            len: r.len,
            size: r.limit,
        },
        Some(Kind::Unaligned(r)) => BackendError::Unaligned {
            offset: r.offset,
            len: r.len,
            chunk_size: r.limit,
        },
        Some(Kind::Io(m)) => BackendError::Remote(format!("I/O error: {m}")),
        Some(Kind::Remote(m)) => BackendError::Remote(m),
        Some(Kind::Closed(_)) => BackendError::Closed,
        None => BackendError::Remote("gRPC error reply without a kind".into()),
    }
}

fn internal(got: &Outcome) -> BackendError {
    BackendError::Remote(format!("internal: unexpected {} outcome", got.shape()))
}

fn data_reply(r: Result<Outcome>) -> pb::DataReply {
    match r {
        Ok(Outcome::Data(data)) => pb::DataReply { data, error: None },
        Ok(other) => data_reply(Err(internal(&other))),
        Err(e) => pb::DataReply {
            data: Bytes::new(),
            error: Some(to_pb(&e)),
        },
    }
}

fn done_reply(r: Result<Outcome>) -> pb::DoneReply {
    match r {
        Ok(Outcome::Done) => pb::DoneReply { error: None },
        Ok(other) => done_reply(Err(internal(&other))),
        Err(e) => pb::DoneReply {
            error: Some(to_pb(&e)),
        },
    }
}

fn size_reply(r: Result<Outcome>) -> pb::SizeReply {
    match r {
        Ok(Outcome::Size(size)) => pb::SizeReply { size, error: None },
        Ok(other) => size_reply(Err(internal(&other))),
        Err(e) => pb::SizeReply {
            size: 0,
            error: Some(to_pb(&e)),
        },
    }
}

fn dirty_reply(r: Result<Outcome>) -> pb::DirtyReply {
    match r {
        Ok(Outcome::Dirty(offsets)) => pb::DirtyReply {
            offsets,
            error: None,
        },
        Ok(other) => dirty_reply(Err(internal(&other))),
        Err(e) => pb::DirtyReply {
            offsets: Vec::new(),
            error: Some(to_pb(&e)),
        },
    }
}

/// Both generated service traits, over one [`Services`].
#[derive(Debug, Clone)]
struct GrpcServer {
    services: Services,
    meter: Arc<Meter>,
    max_message: u32,
}

impl GrpcServer {
    async fn run(&self, call: Call) -> Result<Outcome> {
        let _in_flight = self.meter.begin();
        check_limit(&call, self.max_message)?;
        dispatch(&self.services, call).await
    }
}

type Answer<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::backend_server::Backend for GrpcServer {
    async fn read_at(&self, request: Request<pb::ReadAtRequest>) -> Answer<pb::DataReply> {
        let r = request.into_inner();
        let call = Call::ReadAt {
            offset: r.offset,
            length: r.length,
        };
        Ok(Response::new(data_reply(self.run(call).await)))
    }

    async fn write_at(&self, request: Request<pb::WriteAtRequest>) -> Answer<pb::DoneReply> {
        let r = request.into_inner();
        let call = Call::WriteAt {
            offset: r.offset,
            data: r.data,
        };
        Ok(Response::new(done_reply(self.run(call).await)))
    }

    async fn size(&self, _: Request<pb::Empty>) -> Answer<pb::SizeReply> {
        Ok(Response::new(size_reply(self.run(Call::Size).await)))
    }

    async fn sync(&self, _: Request<pb::Empty>) -> Answer<pb::DoneReply> {
        Ok(Response::new(done_reply(self.run(Call::Sync).await)))
    }
}

#[tonic::async_trait]
impl pb::seeder_server::Seeder for GrpcServer {
    async fn read_at(&self, request: Request<pb::ReadAtRequest>) -> Answer<pb::DataReply> {
        let r = request.into_inner();
        let call = Call::SeederReadAt {
            offset: r.offset,
            length: r.length,
        };
        Ok(Response::new(data_reply(self.run(call).await)))
    }

    async fn size(&self, _: Request<pb::Empty>) -> Answer<pb::SizeReply> {
        Ok(Response::new(size_reply(self.run(Call::SeederSize).await)))
    }

    async fn track(&self, _: Request<pb::Empty>) -> Answer<pb::DoneReply> {
        Ok(Response::new(done_reply(self.run(Call::Track).await)))
    }

    async fn sync(&self, _: Request<pb::Empty>) -> Answer<pb::DirtyReply> {
        Ok(Response::new(dirty_reply(self.run(Call::SeederSync).await)))
    }

    async fn dirty(&self, _: Request<pb::Empty>) -> Answer<pb::DirtyReply> {
        Ok(Response::new(dirty_reply(self.run(Call::Dirty).await)))
    }

    async fn close(&self, _: Request<pb::Empty>) -> Answer<pb::DoneReply> {
        Ok(Response::new(done_reply(self.run(Call::Close).await)))
    }
}

/// Serves `services` on every connection to `listener` until `shutdown`;
/// then lets calls in flight finish for up to the linger time.
pub async fn serve_listener(
    listener: TcpListener,
    services: Services,
    config: TransportConfig,
    shutdown: CancellationToken,
) -> io::Result<ServeStats> {
    let meter = Arc::new(Meter::default());
    let server = GrpcServer {
        services,
        meter: meter.clone(),
        max_message: config.max_message,
    };
    let limit = message_limit(&config);
    let bytes = meter.bytes.clone();
    let incoming = futures::stream::unfold(listener, move |listener| {
        let bytes = bytes.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::warn!(%peer, error = %e, "could not set TCP_NODELAY");
                        }
                        let stream = Counted::new(stream, bytes);
                        return Some((Ok::<_, io::Error>(stream), listener));
                    }
                    // Per-connection accept failures do not stop the
                    // server; back off so running out of descriptors does
                    // not spin.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    });
    let serving = Server::builder()
        .initial_stream_window_size(stream_window(&config))
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(config.max_in_flight.min(u32::MAX as usize) as u32)
        .add_service(
            BackendServer::new(server.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            SeederServer::new(server)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let linger = config.linger;
    // Graceful shutdown waits for clients to hang up; do not wait forever.
    let give_up = async move {
        shutdown.cancelled().await;
        tokio::time::sleep(linger).await;
    };
    tokio::select! {
        served = serving => served.map_err(io::Error::other)?,
        () = give_up => tracing::debug!("gRPC connections still open after the linger time"),
    }
    Ok(meter.stats())
}

/// One HTTP/2 connection with a client for each service.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    backend: BackendClient<Channel>,
    seeder: SeederClient<Channel>,
    max_message: u32,
}

impl GrpcClient {
    /// Connects to `addr` over one HTTP/2 connection, counting its bytes
    /// into `bytes`.
    pub async fn connect(
        addr: std::net::SocketAddr,
        config: &TransportConfig,
        bytes: Arc<ByteCounters>,
    ) -> io::Result<Self> {
        let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(io::Error::other)?
            .initial_stream_window_size(stream_window(config))
            .initial_connection_window_size(CONNECTION_WINDOW)
            .buffer_size(config.max_in_flight)
            .tcp_nodelay(true);
        if let Some(deadline) = config.deadline {
            endpoint = endpoint.timeout(deadline).connect_timeout(deadline);
        }
        let connector = tower::service_fn(move |_: Uri| {
            let bytes = bytes.clone();
            async move {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok::<_, io::Error>(TokioIo::new(Counted::new(stream, bytes)))
            }
        });
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(io::Error::other)?;
        let limit = message_limit(config);
        Ok(Self {
            backend: BackendClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            seeder: SeederClient::new(channel)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            max_message: config.max_message,
        })
    }
}

fn status_error(method: Method, status: Status) -> BackendError {
    BackendError::Remote(format!(
        "gRPC {method} failed: {:?}: {}",
        status.code(),
        status.message()
    ))
}

fn checked<T>(
    method: Method,
    answer: Answer<T>,
    error: impl FnOnce(&mut T) -> Option<pb::Error>,
) -> Result<T> {
    let mut reply = answer.map_err(|s| status_error(method, s))?.into_inner();
    match error(&mut reply) {
        Some(e) => Err(from_pb(e)),
        None => Ok(reply),
    }
}

#[async_trait::async_trait]
impl Rpc for GrpcClient {
    async fn call(&self, call: Call) -> Result<Outcome> {
        let method = call.method();
        let mut backend = self.backend.clone();
        let mut seeder = self.seeder.clone();
        Ok(match call {
            Call::ReadAt { offset, length } => {
                let r = backend.read_at(pb::ReadAtRequest { offset, length }).await;
                Outcome::Data(checked(method, r, |r| r.error.take())?.data)
            }
            Call::WriteAt { offset, data } => {
                let r = backend.write_at(pb::WriteAtRequest { offset, data }).await;
                checked(method, r, |r| r.error.take())?;
                Outcome::Done
            }
            Call::Size => {
                let r = backend.size(pb::Empty {}).await;
                Outcome::Size(checked(method, r, |r| r.error.take())?.size)
            }
            Call::Sync => {
                let r = backend.sync(pb::Empty {}).await;
                checked(method, r, |r| r.error.take())?;
                Outcome::Done
            }
            Call::SeederReadAt { offset, length } => {
                let r = seeder.read_at(pb::ReadAtRequest { offset, length }).await;
                Outcome::Data(checked(method, r, |r| r.error.take())?.data)
            }
            Call::SeederSize => {
                let r = seeder.size(pb::Empty {}).await;
                Outcome::Size(checked(method, r, |r| r.error.take())?.size)
            }
            Call::Track => {
                let r = seeder.track(pb::Empty {}).await;
                checked(method, r, |r| r.error.take())?;
                Outcome::Done
            }
            Call::SeederSync => {
                let r = seeder.sync(pb::Empty {}).await;
                Outcome::Dirty(checked(method, r, |r| r.error.take())?.offsets)
            }
            Call::Dirty => {
                let r = seeder.dirty(pb::Empty {}).await;
                Outcome::Dirty(checked(method, r, |r| r.error.take())?.offsets)
            }
            Call::Close => {
                let r = seeder.close(pb::Empty {}).await;
                checked(method, r, |r| r.error.take())?;
                Outcome::Done
            }
        })
    }

    fn max_message(&self) -> u32 {
        self.max_message
    }
}

/// One gRPC connection to `addr` as an [`Rpc`].
pub(crate) async fn connect_rpc(
    addr: std::net::SocketAddr,
    config: &TransportConfig,
    bytes: Arc<ByteCounters>,
) -> io::Result<Arc<dyn Rpc>> {
    Ok(Arc::new(GrpcClient::connect(addr, config, bytes).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_proto_form() {
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
            BackendError::Remote("x".into()),
            BackendError::Closed,
        ];
        for e in &errors {
            assert_eq!(from_pb(to_pb(e)).to_string(), e.to_string());
        }
    }

    #[test]
    fn windows_stay_in_the_http2_range() {
        let mut config = TransportConfig::default();
        assert!(u64::from(stream_window(&config)) <= MAX_WINDOW);
        config.max_message = u32::MAX;
        assert_eq!(u64::from(stream_window(&config)), MAX_WINDOW);
        config.max_message = 1;
        assert_eq!(stream_window(&config), 1 << 20);
    }
}
