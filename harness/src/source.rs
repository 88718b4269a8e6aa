//! The source region's content: seeded, incompressible, hashed once and
//! shared by every cell of the same size in a run.

use std::collections::HashMap;
use std::sync::Arc;

use backends::MemoryBackend;
use sha2::{Digest, Sha256};

/// What the destination must end up holding.
#[derive(Debug)]
pub struct SourceImage {
    /// Served to the destination; the one copy of the bytes.
    pub backend: Arc<MemoryBackend>,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// What the bytes were made from: `SourceImage::new(size, seed)` makes
    /// them again, in another process too.
    pub seed: u64,
}

impl SourceImage {
    /// `size` bytes from `seed`.
    pub fn new(size: u64, seed: u64) -> Self {
        let mut bytes = vec![0u8; size as usize];
        crate::workload::fill_pattern(&mut bytes, seed);
        let sha256 = sha256_hex(&bytes);
        Self {
            backend: Arc::new(MemoryBackend::from_bytes(bytes)),
            sha256,
            seed,
        }
    }

    /// The source bytes (nothing writes to the source during a cell, so
    /// holding them never blocks the server).
    pub fn bytes(&self) -> impl std::ops::Deref<Target = [u8]> + '_ {
        self.backend.bytes()
    }
}

/// Source images by size, made on first use.
#[derive(Debug, Default)]
pub struct SourceCache {
    seed: u64,
    images: HashMap<u64, Arc<SourceImage>>,
}

impl SourceCache {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            images: HashMap::new(),
        }
    }

    /// The image of `size` bytes; every size used in a run is kept (a run
    /// uses a few sizes, and regenerating and rehashing costs seconds).
    pub fn get(&mut self, size: u64) -> Arc<SourceImage> {
        if let Some(img) = self.images.get(&size) {
            return img.clone();
        }
        let img = Arc::new(SourceImage::new(size, self.seed ^ size));
        self.images.insert(size, img.clone());
        img
    }
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
