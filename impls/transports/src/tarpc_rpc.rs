//! tarpc: the services as a `#[tarpc::service]`, over TCP with tarpc's
//! serde transport: length-delimited frames holding bincode.
//!
//! # Limits and deadlines
//!
//! - Frames are capped at the maximum message plus
//!   [`FRAME_OVERHEAD`] bytes for the envelope; a larger frame in either
//!   direction is a codec error that ends the connection (the length prefix
//!   is checked before the body is buffered, so memory stays bounded).
//!   Every call waiting on it fails.
//! - Every call carries the client's deadline in its tarpc context; the
//!   server drops work whose deadline passed, the client fails the call.
//! - Malformed bincode ends the connection the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Future, StreamExt};
use tarpc::client::RpcError;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use backends::{BackendError, Result};

use crate::kind::{TransportConfig, DEFAULT_DEADLINE};
use crate::meter::{ByteCounters, Counted, Meter};
use crate::remote::Rpc;
use crate::server::ServeStats;
use crate::service::{check_limit, dispatch, Call, Outcome, RemoteError, Services};

/// Bytes a frame may hold beyond its payload: tarpc's envelope (ids,
/// deadline, trace context) and bincode's length prefixes.
pub const FRAME_OVERHEAD: usize = 4096;

/// What a call returns over tarpc.
pub type Reply<T> = std::result::Result<T, RemoteError>;

/// The backend and seeder services as one tarpc service.
#[tarpc::service]
pub trait Remote {
    /// Backend `ReadAt`.
    async fn read_at(offset: u64, length: u32) -> Reply<Bytes>;
    /// Backend `WriteAt`.
    async fn write_at(offset: u64, data: Bytes) -> Reply<()>;
    /// Backend `Size`.
    async fn size() -> Reply<u64>;
    /// Backend `Sync`.
    async fn sync() -> Reply<()>;
    /// Seeder `ReadAt`.
    async fn seeder_read_at(offset: u64, length: u32) -> Reply<Bytes>;
    /// Seeder `Size`.
    async fn seeder_size() -> Reply<u64>;
    /// Seeder `Track`.
    async fn track() -> Reply<()>;
    /// Seeder `Sync`.
    async fn seeder_sync() -> Reply<Vec<u64>>;
    /// Seeder `Dirty`.
    async fn seeder_dirty() -> Reply<Vec<u64>>;
    /// Seeder `Close`.
    async fn close() -> Reply<()>;
}

/// The serving side: every method is [`dispatch`] of the matching call.
#[derive(Debug, Clone)]
struct Server {
    services: Services,
    meter: Arc<Meter>,
    max_message: u32,
}

impl Server {
    async fn run(&self, call: Call) -> Reply<Outcome> {
        let _in_flight = self.meter.begin();
        check_limit(&call, self.max_message).map_err(|e| RemoteError::from(&e))?;
        dispatch(&self.services, call)
            .await
            .map_err(|e| RemoteError::from(&e))
    }
}

fn mismatch(got: &Outcome) -> RemoteError {
    RemoteError::Remote(format!("internal: unexpected {} outcome", got.shape()))
}

fn data(o: Outcome) -> Reply<Bytes> {
    match o {
        Outcome::Data(data) => Ok(data),
        other => Err(mismatch(&other)),
    }
}

fn done(o: Outcome) -> Reply<()> {
    match o {
        Outcome::Done => Ok(()),
        other => Err(mismatch(&other)),
    }
}

fn size(o: Outcome) -> Reply<u64> {
    match o {
        Outcome::Size(size) => Ok(size),
        other => Err(mismatch(&other)),
    }
}

impl Remote for Server {
    async fn read_at(self, _: Context, offset: u64, length: u32) -> Reply<Bytes> {
        data(self.run(Call::ReadAt { offset, length }).await?)
    }
    async fn write_at(self, _: Context, offset: u64, data: Bytes) -> Reply<()> {
        done(self.run(Call::WriteAt { offset, data }).await?)
    }
    async fn size(self, _: Context) -> Reply<u64> {
        size(self.run(Call::Size).await?)
    }
    async fn sync(self, _: Context) -> Reply<()> {
        done(self.run(Call::Sync).await?)
    }
    async fn seeder_read_at(self, _: Context, offset: u64, length: u32) -> Reply<Bytes> {
        data(self.run(Call::SeederReadAt { offset, length }).await?)
    }
    async fn seeder_size(self, _: Context) -> Reply<u64> {
        size(self.run(Call::SeederSize).await?)
    }
    async fn track(self, _: Context) -> Reply<()> {
        done(self.run(Call::Track).await?)
    }
    async fn seeder_sync(self, _: Context) -> Reply<Vec<u64>> {
        match self.run(Call::SeederSync).await? {
            Outcome::Dirty(offsets) => Ok(offsets),
            other => Err(mismatch(&other)),
        }
    }
    async fn seeder_dirty(self, _: Context) -> Reply<Vec<u64>> {
        match self.run(Call::Dirty).await? {
            Outcome::Dirty(offsets) => Ok(offsets),
            other => Err(mismatch(&other)),
        }
    }
    async fn close(self, _: Context) -> Reply<()> {
        done(self.run(Call::Close).await?)
    }
}

fn codec(max_message: u32) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_message as usize + FRAME_OVERHEAD)
        .new_codec()
}

/// Serves one connection until it ends or `shutdown` fires.
async fn serve_connection<S>(
    stream: S,
    server: Server,
    max_in_flight: usize,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let framed = Framed::new(stream, codec(server.max_message));
    let transport = tarpc::serde_transport::new(framed, Bincode::default());
    let config = tarpc::server::Config {
        pending_response_buffer: max_in_flight,
    };
    let responses = BaseChannel::new(config, transport)
        .max_concurrent_requests(max_in_flight)
        .execute(server.serve());
    let mut responses = std::pin::pin!(responses);
    let mut handlers = JoinSet::new();
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            next = responses.next() => next,
        };
        match next {
            Some(response) => {
                handlers.spawn(response);
            }
            None => break,
        }
        while handlers.try_join_next().is_some() {}
    }
    // Dropping the channel closes the stream; unfinished handlers go too.
    handlers.abort_all();
}

/// Serves `services` on every connection to `listener` until `shutdown`.
pub async fn serve_listener(
    listener: TcpListener,
    services: Services,
    config: TransportConfig,
    shutdown: CancellationToken,
) -> std::io::Result<ServeStats> {
    let meter = Arc::new(Meter::default());
    let server = Server {
        services,
        meter: meter.clone(),
        max_message: config.max_message,
    };
    // Connections may finish what is in flight for `linger`, as the other
    // servers' do.
    crate::accept::accept_until(
        &listener,
        &shutdown,
        Some(config.linger),
        |stream, _peer| {
            serve_connection(
                Counted::new(stream, meter.bytes.clone()),
                server.clone(),
                config.max_in_flight,
                shutdown.child_token(),
            )
        },
        drop,
    )
    .await;
    Ok(meter.stats())
}

/// One tarpc connection.
#[derive(Debug)]
pub struct TarpcClient {
    client: RemoteClient,
    max_message: u32,
    deadline: Duration,
}

impl TarpcClient {
    /// A client on `stream`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: the client spawns its dispatch task.
    pub fn new<S>(stream: S, config: &TransportConfig) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let framed = Framed::new(stream, codec(config.max_message));
        let transport = tarpc::serde_transport::new(framed, Bincode::default());
        let mut client_config = tarpc::client::Config::default();
        client_config.max_in_flight_requests = config.max_in_flight.max(1);
        client_config.pending_request_buffer = config.max_in_flight.max(1);
        let client = RemoteClient::new(client_config, transport).spawn();
        Self {
            client,
            max_message: config.max_message,
            deadline: config.deadline.unwrap_or(DEFAULT_DEADLINE),
        }
    }

    fn context(&self) -> Context {
        let mut ctx = tarpc::context::current();
        ctx.deadline = Instant::now() + self.deadline;
        ctx
    }
}

fn rpc_error(method: &str, e: RpcError) -> BackendError {
    match e {
        RpcError::Shutdown => BackendError::Closed,
        RpcError::DeadlineExceeded => {
            BackendError::Remote(format!("{method} got no reply before its tarpc deadline"))
        }
        other => BackendError::Remote(format!("tarpc {method} failed: {other}")),
    }
}

async fn flatten<T>(
    method: &str,
    call: impl Future<Output = std::result::Result<Reply<T>, RpcError>>,
) -> Result<T> {
    match call.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(rpc_error(method, e)),
    }
}

#[async_trait::async_trait]
impl Rpc for TarpcClient {
    async fn call(&self, call: Call) -> Result<Outcome> {
        let c = &self.client;
        let ctx = self.context();
        let name = call.method().name();
        Ok(match call {
            Call::ReadAt { offset, length } => {
                Outcome::Data(flatten(name, c.read_at(ctx, offset, length)).await?)
            }
            Call::WriteAt { offset, data } => {
                flatten(name, c.write_at(ctx, offset, data)).await?;
                Outcome::Done
            }
            Call::Size => Outcome::Size(flatten(name, c.size(ctx)).await?),
            Call::Sync => {
                flatten(name, c.sync(ctx)).await?;
                Outcome::Done
            }
            Call::SeederReadAt { offset, length } => {
                Outcome::Data(flatten(name, c.seeder_read_at(ctx, offset, length)).await?)
            }
            Call::SeederSize => Outcome::Size(flatten(name, c.seeder_size(ctx)).await?),
            Call::Track => {
                flatten(name, c.track(ctx)).await?;
                Outcome::Done
            }
            Call::SeederSync => Outcome::Dirty(flatten(name, c.seeder_sync(ctx)).await?),
            Call::Dirty => Outcome::Dirty(flatten(name, c.seeder_dirty(ctx)).await?),
            Call::Close => {
                flatten(name, c.close(ctx)).await?;
                Outcome::Done
            }
        })
    }

    fn max_message(&self) -> u32 {
        self.max_message
    }
}

/// One tarpc connection to `addr` as an [`Rpc`].
pub(crate) async fn connect_rpc(
    addr: std::net::SocketAddr,
    config: &TransportConfig,
    bytes: Arc<ByteCounters>,
) -> std::io::Result<Arc<dyn Rpc>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(Arc::new(TarpcClient::new(
        Counted::new(stream, bytes),
        config,
    )))
}
