//! What a server exports: named backends and their block size constraints.

use std::fmt;

use backends::SharedBackend;

use crate::wire::{TransmissionFlags, MAX_REQUEST_LEN, MAX_STRING};

/// The largest minimum block size the protocol allows.
pub const MAX_MINIMUM_BLOCK_SIZE: u32 = 64 * 1024;
/// The smallest preferred block size the protocol allows.
pub const MIN_PREFERRED_BLOCK_SIZE: u32 = 512;

/// Block size constraints (protocol section "Block size constraints").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Smallest addressable length and alignment.
    pub minimum: u32,
    /// Length and alignment at which I/O is efficient.
    pub preferred: u32,
    /// Longest request the server takes.
    pub maximum: u32,
}

/// A block size triple a server must not advertise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockSizeError {
    /// The minimum must be a power of two from 1 to 64 KiB.
    #[error("minimum block size {0} must be a power of two from 1 to {MAX_MINIMUM_BLOCK_SIZE}")]
    BadMinimum(u32),
    /// The preferred size must be a power of two at least max(minimum, 512).
    #[error("preferred block size {preferred} must be a power of two and at least {at_least}")]
    BadPreferred { preferred: u32, at_least: u32 },
    /// The maximum must be at least the preferred size.
    #[error("maximum block size {maximum} must be at least the preferred block size {preferred}")]
    MaximumBelowPreferred { maximum: u32, preferred: u32 },
    /// The maximum must be a multiple of the minimum.
    #[error("maximum block size {maximum} must be a multiple of the minimum block size {minimum}")]
    MaximumNotMultiple { maximum: u32, minimum: u32 },
    /// The maximum is bounded by the request limit this crate enforces.
    #[error("maximum block size {maximum} is over the {MAX_REQUEST_LEN}-byte request limit")]
    MaximumTooLarge { maximum: u32 },
}

impl BlockSizes {
    /// What the protocol says a server without constraints should accept,
    /// with the maximum capped at the request limit: 1, 4 KiB, 32 MiB.
    pub const DEFAULT: BlockSizes = BlockSizes {
        minimum: 1,
        preferred: 4096,
        maximum: MAX_REQUEST_LEN,
    };

    /// Validated constraints for an export this crate serves.
    pub fn new(minimum: u32, preferred: u32, maximum: u32) -> Result<Self, BlockSizeError> {
        let sizes = Self {
            minimum,
            preferred,
            maximum,
        };
        sizes.validate()?;
        Ok(sizes)
    }

    /// Checks the protocol's rules plus this crate's 32 MiB request limit:
    /// minimum a power of two in 1..=64 KiB; preferred a power of two at
    /// least max(minimum, 512); maximum at least preferred, a multiple of
    /// the minimum and at most 32 MiB.
    pub fn validate(&self) -> Result<(), BlockSizeError> {
        let Self {
            minimum,
            preferred,
            maximum,
        } = *self;
        if !minimum.is_power_of_two() || minimum > MAX_MINIMUM_BLOCK_SIZE {
            return Err(BlockSizeError::BadMinimum(minimum));
        }
        let at_least = minimum.max(MIN_PREFERRED_BLOCK_SIZE);
        if !preferred.is_power_of_two() || preferred < at_least {
            return Err(BlockSizeError::BadPreferred {
                preferred,
                at_least,
            });
        }
        if maximum < preferred {
            return Err(BlockSizeError::MaximumBelowPreferred { maximum, preferred });
        }
        if maximum % minimum != 0 {
            return Err(BlockSizeError::MaximumNotMultiple { maximum, minimum });
        }
        if maximum > MAX_REQUEST_LEN {
            return Err(BlockSizeError::MaximumTooLarge { maximum });
        }
        Ok(())
    }
}

impl Default for BlockSizes {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One named export of a [`Server`](crate::Server).
#[derive(Clone)]
pub struct Export {
    /// The name clients ask for; the first export is also the default
    /// export, the one an empty name selects.
    pub name: String,
    /// Shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    pub description: Option<String>,
    /// Where the bytes live.
    pub backend: SharedBackend,
    /// Writes, trims and write-zeroes fail with `EPERM`.
    pub read_only: bool,
    /// Advertised and enforced constraints.
    pub block_size: BlockSizes,
    /// Advertise `NBD_FLAG_CAN_MULTI_CONN`: true when every connection to
    /// this export shares one backend whose `sync` covers all of them.
    pub multi_conn: bool,
}

impl Export {
    /// A writable export with default block sizes and multi-conn on (one
    /// shared backend serves every connection).
    pub fn new(name: impl Into<String>, backend: SharedBackend) -> Self {
        Self {
            name: name.into(),
            description: None,
            backend,
            read_only: false,
            block_size: BlockSizes::DEFAULT,
            multi_conn: true,
        }
    }

    /// Sets the description.
    #[must_use]
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// Makes the export read-only.
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets the block size constraints (validated by [`Server::new`](crate::Server::new)).
    #[must_use]
    pub fn block_size(mut self, sizes: BlockSizes) -> Self {
        self.block_size = sizes;
        self
    }

    /// Sets multi-conn.
    #[must_use]
    pub fn multi_conn(mut self, on: bool) -> Self {
        self.multi_conn = on;
        self
    }

    /// The transmission flags this export is advertised with.
    ///
    /// Read-only exports do not advertise the write-side features (FUA,
    /// trim, write-zeroes) so well-behaved clients never try them.
    pub fn transmission_flags(&self) -> TransmissionFlags {
        let writable = !self.read_only;
        TransmissionFlags::HAS_FLAGS
            .with(TransmissionFlags::SEND_FLUSH, true)
            .with(TransmissionFlags::READ_ONLY, self.read_only)
            .with(TransmissionFlags::SEND_FUA, writable)
            .with(TransmissionFlags::SEND_TRIM, writable)
            .with(TransmissionFlags::SEND_WRITE_ZEROES, writable)
            .with(TransmissionFlags::CAN_MULTI_CONN, self.multi_conn)
    }

    /// Checks the name and block sizes.
    pub fn validate(&self) -> Result<(), ExportError> {
        if self.name.len() > MAX_STRING {
            return Err(ExportError::NameTooLong {
                len: self.name.len(),
            });
        }
        if self.name.contains('\0') {
            return Err(ExportError::NameHasNul {
                name: self.name.clone(),
            });
        }
        if let Some(d) = &self.description {
            if d.len() > MAX_STRING || d.contains('\0') {
                return Err(ExportError::BadDescription {
                    name: self.name.clone(),
                    len: d.len(),
                });
            }
        }
        self.block_size
            .validate()
            .map_err(|source| ExportError::BlockSize {
                name: self.name.clone(),
                source,
            })
    }
}

impl fmt::Debug for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("backend", &self.backend)
            .field("read_only", &self.read_only)
            .field("block_size", &self.block_size)
            .field("multi_conn", &self.multi_conn)
            .finish()
    }
}

/// An export that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// Names are protocol strings: at most 4096 bytes.
    #[error("export name of {len} bytes is longer than the {MAX_STRING}-byte limit")]
    NameTooLong { len: usize },
    /// Names are protocol strings: no NUL.
    #[error("export name {name:?} contains a NUL byte")]
    NameHasNul { name: String },
    /// Descriptions are protocol strings too.
    #[error(
        "description of export {name:?} ({len} bytes) is over {MAX_STRING} bytes or contains NUL"
    )]
    BadDescription { name: String, len: usize },
    /// Two exports with one name.
    #[error("two exports are named {name:?}; names must be unique")]
    DuplicateName { name: String },
    /// A server needs at least one export.
    #[error("a server needs at least one export")]
    NoExports,
    /// Invalid block sizes.
    #[error("export {name:?}: {source}")]
    BlockSize {
        name: String,
        #[source]
        source: BlockSizeError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn block_sizes_follow_the_rules() {
        assert!(BlockSizes::new(1, 4096, 32 << 20).is_ok());
        assert!(BlockSizes::new(512, 512, 512).is_ok());
        assert!(BlockSizes::new(4096, 4096, 1 << 20).is_ok());
        assert!(BlockSizes::DEFAULT.validate().is_ok());
        assert_eq!(
            BlockSizes::new(0, 4096, 4096),
            Err(BlockSizeError::BadMinimum(0))
        );
        assert_eq!(
            BlockSizes::new(3, 4096, 4096),
            Err(BlockSizeError::BadMinimum(3))
        );
        assert_eq!(
            BlockSizes::new(1 << 17, 1 << 17, 1 << 17),
            Err(BlockSizeError::BadMinimum(1 << 17))
        );
        assert_eq!(
            BlockSizes::new(1, 256, 4096),
            Err(BlockSizeError::BadPreferred {
                preferred: 256,
                at_least: 512
            })
        );
        assert_eq!(
            BlockSizes::new(4096, 2048, 4096),
            Err(BlockSizeError::BadPreferred {
                preferred: 2048,
                at_least: 4096
            })
        );
        assert!(matches!(
            BlockSizes::new(1, 3000, 4096),
            Err(BlockSizeError::BadPreferred { .. })
        ));
        assert_eq!(
            BlockSizes::new(1, 4096, 2048),
            Err(BlockSizeError::MaximumBelowPreferred {
                maximum: 2048,
                preferred: 4096
            })
        );
        assert_eq!(
            BlockSizes::new(4096, 4096, 4096 * 3 + 1),
            Err(BlockSizeError::MaximumNotMultiple {
                maximum: 4096 * 3 + 1,
                minimum: 4096
            })
        );
        assert_eq!(
            BlockSizes::new(1, 4096, (32 << 20) + 1),
            Err(BlockSizeError::MaximumTooLarge {
                maximum: (32 << 20) + 1
            })
        );
        let msg = BlockSizes::new(3, 4096, 4096).unwrap_err().to_string();
        assert!(msg.contains('3') && msg.contains("power of two"), "{msg}");
    }

    #[test]
    fn flags_follow_the_export() {
        let b: SharedBackend = Arc::new(backends::MemoryBackend::new(4096));
        let rw = Export::new("a", b.clone());
        let f = rw.transmission_flags();
        assert!(f.contains(TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH));
        assert!(f.contains(TransmissionFlags::SEND_FUA | TransmissionFlags::SEND_TRIM));
        assert!(
            f.contains(TransmissionFlags::SEND_WRITE_ZEROES | TransmissionFlags::CAN_MULTI_CONN)
        );
        assert!(!f.contains(TransmissionFlags::READ_ONLY));
        let ro = Export::new("b", b).read_only(true).multi_conn(false);
        let f = ro.transmission_flags();
        assert!(f.contains(TransmissionFlags::READ_ONLY));
        assert!(!f.contains(TransmissionFlags::SEND_TRIM));
        assert!(!f.contains(TransmissionFlags::CAN_MULTI_CONN));
    }

    #[test]
    fn export_names_are_checked() {
        let b: SharedBackend = Arc::new(backends::MemoryBackend::new(4096));
        assert!(Export::new("ok", b.clone()).validate().is_ok());
        assert!(matches!(
            Export::new("a\0b", b.clone()).validate(),
            Err(ExportError::NameHasNul { .. })
        ));
        assert!(matches!(
            Export::new("x".repeat(MAX_STRING + 1), b.clone()).validate(),
            Err(ExportError::NameTooLong { .. })
        ));
        assert!(matches!(
            Export::new("bs", b)
                .block_size(BlockSizes {
                    minimum: 2,
                    preferred: 1,
                    maximum: 1
                })
                .validate(),
            Err(ExportError::BlockSize { .. })
        ));
    }
}
