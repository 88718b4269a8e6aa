//! The calling side, written once: [`Rpc`] is what a transport's client
//! implements (send one [`Call`], get its [`Outcome`]); [`RemoteBackend`] and
//! [`RemoteSeeder`] turn any `Rpc` into a [`Backend`] or a [`Seeder`];
//! [`Pool`] spreads calls over several connections.
//!
//! # Behavior
//!
//! - An access larger than the transport's maximum message is split into
//!   pieces of at most that size, sent concurrently. A split write is
//!   checked against the size first, so an out-of-range write writes
//!   nothing.
//! - `Size` is asked once and cached: a region's size is fixed.
//! - With a deadline, every trait call (all of its pieces) that takes longer
//!   fails with [`BackendError::Remote`] naming the method and the deadline.
//!   The connection stays usable; a late reply is dropped.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;

use backends::{Backend, BackendError, Result};

use crate::service::{check_write, Call, Method, Outcome, Seeder, ServiceKind};

/// One connection's (or pool's) way to make a call.
#[async_trait]
pub trait Rpc: Send + Sync + fmt::Debug {
    /// Sends `call` and waits for its outcome; error replies are errors.
    async fn call(&self, call: Call) -> Result<Outcome>;
    /// The largest payload one call may carry; larger accesses are split.
    fn max_message(&self) -> u32;
    /// Whether the connection is known to be dead (every call would fail).
    fn is_closed(&self) -> bool {
        false
    }
}

#[async_trait]
impl<R: Rpc + ?Sized> Rpc for Arc<R> {
    async fn call(&self, call: Call) -> Result<Outcome> {
        (**self).call(call).await
    }
    fn max_message(&self) -> u32 {
        (**self).max_message()
    }
    fn is_closed(&self) -> bool {
        (**self).is_closed()
    }
}

fn unexpected(method: Method, got: &Outcome) -> BackendError {
    BackendError::Remote(format!(
        "{method} reply carried {} instead of its result",
        got.shape()
    ))
}

fn expect_done(method: Method, got: Outcome) -> Result<()> {
    match got {
        Outcome::Done => Ok(()),
        other => Err(unexpected(method, &other)),
    }
}

/// One read of at most the maximum message.
async fn read_piece<R: Rpc + ?Sized>(
    rpc: &R,
    service: ServiceKind,
    buf: &mut [u8],
    offset: u64,
) -> Result<usize> {
    let length = buf.len() as u32;
    let call = match service {
        ServiceKind::Backend => Call::ReadAt { offset, length },
        ServiceKind::Seeder => Call::SeederReadAt { offset, length },
    };
    let method = call.method();
    let data = match rpc.call(call).await? {
        Outcome::Data(data) => data,
        other => return Err(unexpected(method, &other)),
    };
    let n = data.len();
    if n > buf.len() {
        return Err(BackendError::Remote(format!(
            "server returned {n} bytes for a {method} of {} at offset {offset}",
            buf.len()
        )));
    }
    buf[..n].copy_from_slice(&data);
    Ok(n)
}

/// `ReadAt` of any length over `rpc`, split at the maximum message.
pub(crate) async fn read_at<R: Rpc + ?Sized>(
    rpc: &R,
    service: ServiceKind,
    buf: &mut [u8],
    offset: u64,
) -> Result<usize> {
    let max = rpc.max_message().max(1) as usize;
    if buf.len() <= max {
        return read_piece(rpc, service, buf, offset).await;
    }
    let pieces = buf
        .chunks_mut(max)
        .enumerate()
        .map(|(i, piece)| async move {
            let want = piece.len();
            let at = offset.saturating_add((i * max) as u64);
            (want, read_piece(rpc, service, piece, at).await)
        });
    let mut total = 0;
    for (i, (want, result)) in join_all(pieces).await.into_iter().enumerate() {
        match result {
            Ok(n) => {
                total += n;
                if n < want {
                    break;
                }
            }
            // A later piece starting at or past the end: the read is short
            // there, which is not an error.
            Err(BackendError::OutOfRange { .. }) if i > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// `Size` of either service, asked once.
pub(crate) async fn size<R: Rpc + ?Sized>(
    rpc: &R,
    service: ServiceKind,
    cache: &OnceLock<u64>,
) -> Result<u64> {
    if let Some(size) = cache.get() {
        return Ok(*size);
    }
    let call = match service {
        ServiceKind::Backend => Call::Size,
        ServiceKind::Seeder => Call::SeederSize,
    };
    let method = call.method();
    match rpc.call(call).await? {
        Outcome::Size(size) => Ok(*cache.get_or_init(|| size)),
        other => Err(unexpected(method, &other)),
    }
}

/// Backend `WriteAt` of any length over `rpc`, split at the maximum message.
pub(crate) async fn write_at<R: Rpc + ?Sized>(
    rpc: &R,
    size_cache: &OnceLock<u64>,
    data: &[u8],
    offset: u64,
) -> Result<()> {
    let max = rpc.max_message().max(1) as usize;
    if data.len() <= max {
        let call = Call::WriteAt {
            offset,
            data: Bytes::copy_from_slice(data),
        };
        return expect_done(Method::WriteAt, rpc.call(call).await?);
    }
    // Pieces land independently; check the whole range first so an
    // out-of-range write writes nothing, as the Backend rules require.
    let size = size(rpc, ServiceKind::Backend, size_cache).await?;
    check_write(offset, data.len(), size)?;
    let pieces = data.chunks(max).enumerate().map(|(i, piece)| async move {
        let call = Call::WriteAt {
            offset: offset.saturating_add((i * max) as u64),
            data: Bytes::copy_from_slice(piece),
        };
        expect_done(Method::WriteAt, rpc.call(call).await?)
    });
    join_all(pieces).await.into_iter().collect()
}

/// Backend `Sync`.
pub(crate) async fn sync<R: Rpc + ?Sized>(rpc: &R) -> Result<()> {
    expect_done(Method::Sync, rpc.call(Call::Sync).await?)
}

/// Runs `call` under `deadline`, if any.
async fn within<T>(
    deadline: Option<Duration>,
    method: Method,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match deadline {
        None => call.await,
        Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(BackendError::Remote(format!(
                "{method} got no reply within the deadline of {limit:?}"
            )))
        }),
    }
}

/// A [`Backend`] whose bytes are behind an [`Rpc`].
#[derive(Debug)]
pub struct RemoteBackend<R> {
    rpc: R,
    size: OnceLock<u64>,
    deadline: Option<Duration>,
}

impl<R: Rpc> RemoteBackend<R> {
    /// A backend over `rpc`; every call fails after `deadline` if given.
    pub fn new(rpc: R, deadline: Option<Duration>) -> Self {
        Self {
            rpc,
            size: OnceLock::new(),
            deadline,
        }
    }

    /// The connection (or pool) underneath.
    pub fn rpc(&self) -> &R {
        &self.rpc
    }
}

#[async_trait]
impl<R: Rpc> Backend for RemoteBackend<R> {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        within(
            self.deadline,
            Method::ReadAt,
            read_at(&self.rpc, ServiceKind::Backend, buf, offset),
        )
        .await
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        within(
            self.deadline,
            Method::WriteAt,
            write_at(&self.rpc, &self.size, data, offset),
        )
        .await
    }

    async fn size(&self) -> Result<u64> {
        within(
            self.deadline,
            Method::Size,
            size(&self.rpc, ServiceKind::Backend, &self.size),
        )
        .await
    }

    async fn sync(&self) -> Result<()> {
        within(self.deadline, Method::Sync, sync(&self.rpc)).await
    }
}

/// A [`Seeder`] behind an [`Rpc`].
#[derive(Debug)]
pub struct RemoteSeeder<R> {
    rpc: R,
    size: OnceLock<u64>,
    deadline: Option<Duration>,
}

impl<R: Rpc> RemoteSeeder<R> {
    /// A seeder over `rpc`; every call fails after `deadline` if given.
    pub fn new(rpc: R, deadline: Option<Duration>) -> Self {
        Self {
            rpc,
            size: OnceLock::new(),
            deadline,
        }
    }
}

#[async_trait]
impl<R: Rpc> Seeder for RemoteSeeder<R> {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        within(
            self.deadline,
            Method::SeederReadAt,
            read_at(&self.rpc, ServiceKind::Seeder, buf, offset),
        )
        .await
    }

    async fn size(&self) -> Result<u64> {
        within(
            self.deadline,
            Method::SeederSize,
            size(&self.rpc, ServiceKind::Seeder, &self.size),
        )
        .await
    }

    async fn track(&self) -> Result<()> {
        within(self.deadline, Method::Track, async {
            expect_done(Method::Track, self.rpc.call(Call::Track).await?)
        })
        .await
    }

    async fn sync(&self) -> Result<Vec<u64>> {
        within(self.deadline, Method::SeederSync, async {
            match self.rpc.call(Call::SeederSync).await? {
                Outcome::Dirty(offsets) => Ok(offsets),
                other => Err(unexpected(Method::SeederSync, &other)),
            }
        })
        .await
    }

    async fn dirty(&self) -> Result<Vec<u64>> {
        within(self.deadline, Method::Dirty, async {
            match self.rpc.call(Call::Dirty).await? {
                Outcome::Dirty(offsets) => Ok(offsets),
                other => Err(unexpected(Method::Dirty, &other)),
            }
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        within(self.deadline, Method::Close, async {
            expect_done(Method::Close, self.rpc.call(Call::Close).await?)
        })
        .await
    }
}

/// Several connections used as one: calls go round-robin to the members
/// that are still open (to a closed one only when all are closed, so the
/// caller gets that connection's error rather than a hang).
#[derive(Debug)]
pub struct Pool<R> {
    members: Vec<R>,
    next: AtomicUsize,
    calls: AtomicU64,
}

impl<R: Rpc> Pool<R> {
    /// A pool of `members`.
    ///
    /// # Panics
    ///
    /// If `members` is empty: a pool needs a connection to call on.
    pub fn new(members: Vec<R>) -> Self {
        assert!(!members.is_empty(), "a pool needs at least one connection");
        Self {
            members,
            next: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// The connections.
    pub fn members(&self) -> &[R] {
        &self.members
    }

    /// Calls made through the pool (split accesses count each piece).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn pick(&self) -> &R {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|m| !m.is_closed())
            .unwrap_or(&self.members[start])
    }
}

#[async_trait]
impl<R: Rpc> Rpc for Pool<R> {
    async fn call(&self, call: Call) -> Result<Outcome> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.pick().call(call).await
    }

    fn max_message(&self) -> u32 {
        self.members.iter().map(Rpc::max_message).min().unwrap_or(1)
    }

    fn is_closed(&self) -> bool {
        self.members.iter().all(Rpc::is_closed)
    }
}
