//! The source region's content: seeded (incompressible bytes, or a SQLite
//! database for the `sqlite` workload), hashed once and shared by every
//! cell of the same size and content in a run.

use std::collections::HashMap;
use std::sync::Arc;

use backends::MemoryBackend;
use sha2::{Digest, Sha256};

/// What a source region is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum Content {
    /// Seeded random bytes.
    #[default]
    Pattern,
    /// A seeded SQLite database, then seeded random bytes
    /// ([`crate::sqlite_app::build_image`]).
    Sqlite,
}

impl Content {
    pub fn name(self) -> &'static str {
        match self {
            Content::Pattern => "pattern",
            Content::Sqlite => "sqlite",
        }
    }
}

/// What the destination must end up holding.
#[derive(Debug)]
pub struct SourceImage {
    /// Served to the destination; the one copy of the bytes.
    pub backend: Arc<MemoryBackend>,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// What the bytes were made from: `SourceImage::new(size, seed,
    /// content)` makes them again, in another process too.
    pub seed: u64,
    pub content: Content,
}

impl SourceImage {
    /// `size` bytes of `content` from `seed`.
    pub fn new(
        size: u64,
        seed: u64,
        content: Content,
    ) -> Result<Self, crate::sqlite_app::SqliteAppError> {
        match content {
            Content::Pattern => Ok(Self::pattern(size, seed)),
            Content::Sqlite => Ok(Self::holding(
                crate::sqlite_app::build_image(size, seed)?,
                seed,
                content,
            )),
        }
    }

    /// `size` bytes of the seeded pattern (which cannot fail to be made).
    pub fn pattern(size: u64, seed: u64) -> Self {
        let mut bytes = vec![0u8; size as usize];
        crate::workload::fill_pattern(&mut bytes, seed);
        Self::holding(bytes, seed, Content::Pattern)
    }

    fn holding(bytes: Vec<u8>, seed: u64, content: Content) -> Self {
        let sha256 = sha256_hex(&bytes);
        Self {
            backend: Arc::new(MemoryBackend::from_bytes(bytes)),
            sha256,
            seed,
            content,
        }
    }

    /// The source bytes (nothing writes to the source during a cell, so
    /// holding them never blocks the server).
    pub fn bytes(&self) -> impl std::ops::Deref<Target = [u8]> + '_ {
        self.backend.bytes()
    }
}

/// Source images by size and content, made on first use.
#[derive(Debug, Default)]
pub struct SourceCache {
    seed: u64,
    images: HashMap<(u64, Content), Arc<SourceImage>>,
}

impl SourceCache {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            images: HashMap::new(),
        }
    }

    /// The image of `size` bytes of `content`; every one used in a run is
    /// kept (a run uses a few, and regenerating and rehashing costs
    /// seconds).
    pub fn get(
        &mut self,
        size: u64,
        content: Content,
    ) -> Result<Arc<SourceImage>, crate::sqlite_app::SqliteAppError> {
        if let Some(img) = self.images.get(&(size, content)) {
            return Ok(img.clone());
        }
        let img = Arc::new(SourceImage::new(size, self.seed ^ size, content)?);
        self.images.insert((size, content), img.clone());
        Ok(img)
    }

    /// The pattern image of `size` bytes.
    pub fn pattern(&mut self, size: u64) -> Arc<SourceImage> {
        let seed = self.seed ^ size;
        self.images
            .entry((size, Content::Pattern))
            .or_insert_with(|| Arc::new(SourceImage::pattern(size, seed)))
            .clone()
    }
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A digest as lowercase hex.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
