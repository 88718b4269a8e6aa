//! The two remote services, written once for every transport.
//!
//! - The **backend service** (`ReadAt`, `WriteAt`, `Size`, `Sync`) is
//!   [`backends::Backend`] itself: a server serves a
//!   [`SharedBackend`](backends::SharedBackend), a client is one.
//! - The **seeder service** (`ReadAt`, `Size`, `Track`, `Sync` returning the
//!   offsets written since `Track`, `Close`) is the [`Seeder`] trait: the
//!   source of a two-phase migration implements it, the destination calls it.
//!
//! A transport never sees either trait directly. On the wire it carries a
//! [`Call`] and its [`Outcome`]; [`dispatch`] runs a call against the
//! [`Services`] a server exposes, and [`crate::remote`] turns calls back into
//! the traits on the client side. So the service definitions live here once
//! and every transport is only a codec and a connection.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use backends::{check_range, BackendError, Result, SharedBackend};

/// The source side of a two-phase migration, as the destination sees it.
///
/// `read_at` and `size` follow the [`backends::Backend`] rules. `track`
/// starts recording which chunks are written; `sync` makes the source's
/// writes durable and returns the offsets of the chunks written since
/// `track` (or the previous `sync`), sorted, and clears the record; `close`
/// tells the source the destination has everything and it may shut down.
#[async_trait]
pub trait Seeder: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; short only at the end.
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;
    /// The region's size in bytes; fixed.
    async fn size(&self) -> Result<u64>;
    /// Starts recording writes.
    async fn track(&self) -> Result<()>;
    /// Flushes and returns chunk offsets written since `track`, sorted
    /// ascending: at least those written since the previous `sync`. An
    /// implementation may return every offset since `track` (the migration
    /// crate's seeder does, so a `sync` whose reply was lost loses nothing);
    /// [`BackendSeeder`] returns only those since the previous call.
    async fn sync(&self) -> Result<Vec<u64>>;
    /// Flushes and returns the chunk offsets written since `track` or the
    /// previous `dirty`, sorted ascending, and starts a new round; unlike
    /// `sync` it does not suspend the source's application. The rounds of
    /// an iterative pre-copy.
    async fn dirty(&self) -> Result<Vec<u64>>;
    /// Ends the migration; later calls may fail with [`BackendError::Closed`].
    async fn close(&self) -> Result<()>;
}

/// A shared, dynamically chosen seeder.
pub type SharedSeeder = Arc<dyn Seeder>;

#[async_trait]
impl<S: Seeder + ?Sized> Seeder for Arc<S> {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        (**self).read_at(buf, offset).await
    }
    async fn size(&self) -> Result<u64> {
        (**self).size().await
    }
    async fn track(&self) -> Result<()> {
        (**self).track().await
    }
    async fn sync(&self) -> Result<Vec<u64>> {
        (**self).sync().await
    }
    async fn dirty(&self) -> Result<Vec<u64>> {
        (**self).dirty().await
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

/// What a server exposes: a backend, a seeder, or both. A call to a service
/// that is not exposed fails (that call only) with a message saying so.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// Answers the backend service's calls.
    pub backend: Option<SharedBackend>,
    /// Answers the seeder service's calls.
    pub seeder: Option<SharedSeeder>,
}

impl Services {
    /// Exposes only `backend`.
    pub fn backend(backend: SharedBackend) -> Self {
        Self {
            backend: Some(backend),
            seeder: None,
        }
    }

    /// Exposes only `seeder`.
    pub fn seeder(seeder: SharedSeeder) -> Self {
        Self {
            backend: None,
            seeder: Some(seeder),
        }
    }

    /// Exposes nothing: for a peer that only calls (jsonl).
    pub fn none() -> Self {
        Self::default()
    }
}

/// Which of the two services a method belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// `ReadAt`, `WriteAt`, `Size`, `Sync`.
    Backend,
    /// `ReadAt`, `Size`, `Track`, `Sync`, `Close`.
    Seeder,
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Backend => "backend",
            Self::Seeder => "seeder",
        })
    }
}

/// Every method of both services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Backend `ReadAt(offset, length)`.
    ReadAt,
    /// Backend `WriteAt(offset, data)`.
    WriteAt,
    /// Backend `Size`.
    Size,
    /// Backend `Sync`.
    Sync,
    /// Seeder `ReadAt(offset, length)`.
    SeederReadAt,
    /// Seeder `Size`.
    SeederSize,
    /// Seeder `Track`.
    Track,
    /// Seeder `Sync`, returning dirty offsets.
    SeederSync,
    /// Seeder `Dirty`, returning the offsets dirtied in the last round.
    Dirty,
    /// Seeder `Close`.
    Close,
}

impl Method {
    /// Every method, backend first.
    pub const ALL: [Method; 10] = [
        Self::ReadAt,
        Self::WriteAt,
        Self::Size,
        Self::Sync,
        Self::SeederReadAt,
        Self::SeederSize,
        Self::Track,
        Self::SeederSync,
        Self::Dirty,
        Self::Close,
    ];

    /// The service the method belongs to.
    pub fn service(self) -> ServiceKind {
        match self {
            Self::ReadAt | Self::WriteAt | Self::Size | Self::Sync => ServiceKind::Backend,
            Self::SeederReadAt
            | Self::SeederSize
            | Self::Track
            | Self::SeederSync
            | Self::Dirty
            | Self::Close => ServiceKind::Seeder,
        }
    }

    /// The wire name: `ReadAt` for the backend, `seeder.ReadAt` for the
    /// seeder (jsonl uses these, errors quote them).
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadAt => "ReadAt",
            Self::WriteAt => "WriteAt",
            Self::Size => "Size",
            Self::Sync => "Sync",
            Self::SeederReadAt => "seeder.ReadAt",
            Self::SeederSize => "seeder.Size",
            Self::Track => "seeder.Track",
            Self::SeederSync => "seeder.Sync",
            Self::Dirty => "seeder.Dirty",
            Self::Close => "seeder.Close",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A method name no service has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown method {0:?}; known methods are ReadAt, WriteAt, Size, Sync, seeder.ReadAt, seeder.Size, seeder.Track, seeder.Sync, seeder.Dirty, seeder.Close")]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> std::result::Result<Self, UnknownMethod> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMethod(s.to_owned()))
    }
}

/// One call of either service, as every transport carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Backend `ReadAt`: up to `length` bytes at `offset`.
    ReadAt { offset: u64, length: u32 },
    /// Backend `WriteAt`: all of `data` at `offset`.
    WriteAt { offset: u64, data: Bytes },
    /// Backend `Size`.
    Size,
    /// Backend `Sync`.
    Sync,
    /// Seeder `ReadAt`.
    SeederReadAt { offset: u64, length: u32 },
    /// Seeder `Size`.
    SeederSize,
    /// Seeder `Track`.
    Track,
    /// Seeder `Sync`.
    SeederSync,
    /// Seeder `Dirty`.
    Dirty,
    /// Seeder `Close`.
    Close,
}

impl Call {
    /// The method this call invokes.
    pub fn method(&self) -> Method {
        match self {
            Self::ReadAt { .. } => Method::ReadAt,
            Self::WriteAt { .. } => Method::WriteAt,
            Self::Size => Method::Size,
            Self::Sync => Method::Sync,
            Self::SeederReadAt { .. } => Method::SeederReadAt,
            Self::SeederSize => Method::SeederSize,
            Self::Track => Method::Track,
            Self::SeederSync => Method::SeederSync,
            Self::Dirty => Method::Dirty,
            Self::Close => Method::Close,
        }
    }

    /// The payload bytes the call moves in either direction, for checks
    /// against a maximum message: the length a read asks for, the data a
    /// write carries, 0 otherwise.
    pub fn payload_len(&self) -> u64 {
        match self {
            Self::ReadAt { length, .. } | Self::SeederReadAt { length, .. } => u64::from(*length),
            Self::WriteAt { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

/// A successful call's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The bytes a `ReadAt` read (short only at the end).
    Data(Bytes),
    /// `WriteAt`, `Sync`, `Track`, `Close`: done, nothing to return.
    Done,
    /// A `Size`.
    Size(u64),
    /// The seeder's `Sync`: offsets written since tracking started.
    Dirty(Vec<u64>),
}

impl Outcome {
    /// A short name for error messages.
    pub fn shape(&self) -> &'static str {
        match self {
            Self::Data(_) => "data",
            Self::Done => "done",
            Self::Size(_) => "size",
            Self::Dirty(_) => "dirty offsets",
        }
    }
}

/// The error a call to a service this server does not expose gets.
pub fn not_served(service: ServiceKind) -> BackendError {
    BackendError::Remote(format!("this server does not expose the {service} service"))
}

/// Checks that a call's payload fits the maximum message; the servers run
/// this before they allocate anything for the call.
pub fn check_limit(call: &Call, max_message: u32) -> Result<()> {
    let len = call.payload_len();
    if len > u64::from(max_message) {
        return Err(BackendError::Remote(format!(
            "{} of {len} bytes is over the maximum message size of {max_message} bytes",
            call.method()
        )));
    }
    Ok(())
}

/// Runs `call` against `services`. Reads allocate exactly the length asked
/// for; callers check it against their limit first ([`check_limit`]).
pub async fn dispatch(services: &Services, call: Call) -> Result<Outcome> {
    let backend = || {
        services
            .backend
            .as_deref()
            .ok_or_else(|| not_served(ServiceKind::Backend))
    };
    let seeder = || {
        services
            .seeder
            .as_deref()
            .ok_or_else(|| not_served(ServiceKind::Seeder))
    };
    match call {
        Call::ReadAt { offset, length } => {
            let backend = backend()?;
            let mut buf = BytesMut::zeroed(length as usize);
            let n = backend.read_at(&mut buf, offset).await?;
            buf.truncate(n.min(length as usize));
            Ok(Outcome::Data(buf.freeze()))
        }
        Call::WriteAt { offset, data } => backend()?
            .write_at(&data, offset)
            .await
            .map(|()| Outcome::Done),
        Call::Size => backend()?.size().await.map(Outcome::Size),
        Call::Sync => backend()?.sync().await.map(|()| Outcome::Done),
        Call::SeederReadAt { offset, length } => {
            let seeder = seeder()?;
            let mut buf = BytesMut::zeroed(length as usize);
            let n = seeder.read_at(&mut buf, offset).await?;
            buf.truncate(n.min(length as usize));
            Ok(Outcome::Data(buf.freeze()))
        }
        Call::SeederSize => seeder()?.size().await.map(Outcome::Size),
        Call::Track => seeder()?.track().await.map(|()| Outcome::Done),
        Call::SeederSync => seeder()?.sync().await.map(Outcome::Dirty),
        Call::Dirty => seeder()?.dirty().await.map(Outcome::Dirty),
        Call::Close => seeder()?.close().await.map(|()| Outcome::Done),
    }
}

/// A [`BackendError`] in a form serde codecs (jsonl, tarpc) carry; the
/// fields of `OutOfRange` and `Unaligned` survive the trip.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RemoteError {
    /// [`BackendError::OutOfRange`].
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// [`BackendError::Unaligned`].
    Unaligned {
        offset: u64,
        len: u64,
        chunk_size: u64,
    },
    /// [`BackendError::Io`] on the serving side; the message only.
    Io(String),
    /// [`BackendError::Remote`].
    Remote(String),
    /// [`BackendError::Closed`].
    Closed,
}

impl From<&BackendError> for RemoteError {
    fn from(e: &BackendError) -> Self {
        match e {
            BackendError::OutOfRange { offset, len, size } => Self::OutOfRange {
                offset: *offset,
                len: *len,
                size: *size,
            },
            BackendError::Unaligned {
                offset,
                len,
                chunk_size,
            } => Self::Unaligned {
                offset: *offset,
                len: *len,
                chunk_size: *chunk_size,
            },
            BackendError::Io(e) => Self::Io(e.to_string()),
            BackendError::Remote(m) => Self::Remote(m.clone()),
            BackendError::Closed => Self::Closed,
        }
    }
}

impl From<RemoteError> for BackendError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::OutOfRange { offset, len, size } => {
                BackendError::OutOfRange { offset, len, size }
            }
            RemoteError::Unaligned {
                offset,
                len,
                chunk_size,
            } => BackendError::Unaligned {
                offset,
                len,
                chunk_size,
            },
            // An I/O error on the far side is a remote failure here: this
            // side's I/O did not fail.
            RemoteError::Io(m) => BackendError::Remote(format!("I/O error: {m}")),
            RemoteError::Remote(m) => BackendError::Remote(m),
            RemoteError::Closed => BackendError::Closed,
        }
    }
}

/// A [`Seeder`] over a local backend that records, once tracking, which
/// chunks its own [`BackendSeeder::write_at`] touched.
///
/// For tests and benchmarks, and as the reference for what the migration's
/// tracking pipeline stage must answer: offsets are chunk starts
/// (multiples of `chunk_size`), a write spanning chunks marks each.
#[derive(Debug)]
pub struct BackendSeeder {
    backend: SharedBackend,
    chunk_size: u64,
    tracking: AtomicBool,
    closed: AtomicBool,
    dirty: Mutex<BTreeSet<u64>>,
}

impl BackendSeeder {
    /// A seeder over `backend` that tracks in chunks of `chunk_size` bytes
    /// (at least 1).
    pub fn new(backend: SharedBackend, chunk_size: u64) -> Self {
        Self {
            backend,
            chunk_size: chunk_size.max(1),
            tracking: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dirty: Mutex::new(BTreeSet::new()),
        }
    }

    /// A write by the source's own application: goes to the backend, and is
    /// recorded if tracking has started.
    pub async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.backend.write_at(data, offset).await?;
        if self.tracking.load(Ordering::SeqCst) && !data.is_empty() {
            let first = offset / self.chunk_size;
            let last = (offset + data.len() as u64 - 1) / self.chunk_size;
            let mut dirty = self.dirty.lock();
            for chunk in first..=last {
                dirty.insert(chunk * self.chunk_size);
            }
        }
        Ok(())
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(BackendError::Closed);
        }
        Ok(())
    }
}

#[async_trait]
impl Seeder for BackendSeeder {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.check_open()?;
        self.backend.read_at(buf, offset).await
    }

    async fn size(&self) -> Result<u64> {
        self.check_open()?;
        self.backend.size().await
    }

    async fn track(&self) -> Result<()> {
        self.check_open()?;
        self.tracking.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn sync(&self) -> Result<Vec<u64>> {
        self.check_open()?;
        self.backend.sync().await?;
        let dirty = std::mem::take(&mut *self.dirty.lock());
        Ok(dirty.into_iter().collect())
    }

    /// The same set as `sync` (this seeder has no application to suspend).
    async fn dirty(&self) -> Result<Vec<u64>> {
        self.sync().await
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Checks a write's range against a size: a helper for clients that split a
/// write into pieces and must not let any land when the whole is out of
/// range.
pub(crate) fn check_write(offset: u64, len: usize, size: u64) -> Result<()> {
    check_range(offset, len as u64, size, true).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::MemoryBackend;

    #[test]
    fn method_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>(), Ok(m));
        }
        let err = "Nope".parse::<Method>().unwrap_err();
        assert!(err.to_string().contains("\"Nope\""), "{err}");
    }

    #[test]
    fn remote_errors_round_trip() {
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
            let back = BackendError::from(RemoteError::from(e));
            assert_eq!(back.to_string(), e.to_string());
        }
        let io = BackendError::Io(std::io::Error::other("disk"));
        assert!(
            matches!(BackendError::from(RemoteError::from(&io)), BackendError::Remote(m) if m.contains("disk"))
        );
    }

    #[tokio::test]
    async fn dispatch_routes_and_refuses_unserved_services() {
        let memory = Arc::new(MemoryBackend::from_bytes(b"0123456789".to_vec()));
        let services = Services::backend(memory.clone());
        let got = dispatch(
            &services,
            Call::ReadAt {
                offset: 8,
                length: 5,
            },
        )
        .await
        .unwrap();
        assert_eq!(got, Outcome::Data(Bytes::from_static(b"89")));
        let err = dispatch(&services, Call::Track).await.unwrap_err();
        assert!(err.to_string().contains("seeder service"), "{err}");
        assert!(check_limit(
            &Call::ReadAt {
                offset: 0,
                length: 11
            },
            10
        )
        .is_err());
    }

    #[tokio::test]
    async fn backend_seeder_records_chunks_after_track() {
        let memory = Arc::new(MemoryBackend::new(100));
        let seeder = BackendSeeder::new(memory, 10);
        seeder.write_at(b"a", 0).await.unwrap(); // before track: not recorded
        seeder.track().await.unwrap();
        seeder.write_at(b"abc", 18).await.unwrap(); // chunks 10 and 20
        seeder.write_at(b"z", 55).await.unwrap();
        assert_eq!(seeder.sync().await.unwrap(), vec![10, 20, 50]);
        assert_eq!(seeder.sync().await.unwrap(), Vec::<u64>::new());
        seeder.close().await.unwrap();
        assert!(matches!(seeder.size().await, Err(BackendError::Closed)));
    }
}
