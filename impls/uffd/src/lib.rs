//! Post-copy memory regions: userfaultfd MISSING faults resolved from a
//! backend; and write-protect dirty tracking for pre-copy ([`wp`]).
//!
//! A [`UffdRegion`] is anonymous memory whose pages are absent until first
//! touched; a handler thread then fetches the touched page's chunk from a
//! [`backends::BlockingBackend`] and installs it with `UFFDIO_COPY` (thesis
//! sections 3.1 and 4.1). The application reads and writes the region as
//! plain memory. [`probe()`] reports what the running kernel and this
//! process's privileges allow, for the harness's `doctor` command.
//!
//! # Layout
//!
//! - [`config`] holds [`UffdConfig`] and its validation.
//! - [`open`] obtains a userfaultfd (device, syscall, user-mode-only).
//! - [`region`] holds [`UffdRegion`], with its Behavior and Limitations.
//! - [`handler`] is the fault-handling thread and the races it handles.
//! - [`background`] is the background pull of a post-copy region
//!   ([`UffdRegion::start_background_pull`]).
//! - [`stats`] holds [`FaultStats`].
//! - [`wp`] holds [`DirtyTracker`]: write-protect dirty tracking (async
//!   with `PAGEMAP_SCAN`, or sync with a handler thread).
//! - [`probe`](mod@probe) holds [`probe()`], [`UffdCapabilities`], [`Features`].
//! - `sys` (private) is the kernel ABI, mirrored from the uapi headers.
//! - `mapping` (private) is the owned anonymous mapping.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use backends::{BlockingBackend, MemoryBackend};
//! use uffd::{UffdConfig, UffdError, UffdRegion};
//!
//! let runtime = tokio::runtime::Builder::new_multi_thread().build().unwrap();
//! let bytes: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
//! let source = BlockingBackend::new(
//!     Arc::new(MemoryBackend::from_bytes(bytes.clone())),
//!     runtime.handle().clone(),
//! );
//! let region = match UffdRegion::open(UffdConfig::new(1 << 20, 64 << 10), source) {
//!     Ok(region) => region,
//!     Err(UffdError::Unavailable { reason }) => {
//!         eprintln!("skipping: {reason}");
//!         return;
//!     }
//!     Err(e) => panic!("{e}"),
//! };
//! assert_eq!(region.as_slice(), &bytes[..]);
//! assert_eq!(region.stats().chunks_installed, 16);
//! ```

pub mod background;
pub mod config;
pub mod handler;
mod mapping;
pub mod open;
pub mod probe;
pub mod region;
pub mod stats;
mod sys;
pub mod wp;

pub use background::BackgroundPull;
pub use config::{ConfigError, UffdConfig};
pub use handler::{HandlerError, FETCH_ATTEMPTS};
pub use open::{OpenMode, OpenedVia};
pub use probe::{probe, Features, OpenAttempt, PagemapScan, UffdCapabilities};
pub use region::{UffdError, UffdRegion};
pub use stats::FaultStats;
pub use wp::{DirtyTracker, PushError, PushReport, WpChoice, WpError, WpMode};
