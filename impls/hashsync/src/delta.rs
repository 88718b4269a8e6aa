//! The difference between the local hash list and the peer's: which chunks
//! to send, and the length the peer must take (growth or truncation).

use std::ops::Range;

use crate::algorithm::Algorithm;
use crate::hashes::HashList;

/// What one cycle must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The region's length now; the peer takes it before the chunks land.
    pub region_len: u64,
    /// The peer's length before this cycle (`None`: unknown, everything is
    /// sent).
    pub peer_len: Option<u64>,
    /// Indices of the chunks to send, ascending.
    pub chunks: Vec<usize>,
    /// Bytes per chunk.
    pub chunk_size: usize,
}

/// Why two lists cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("peer hashes with {peer}, this side with {local}")]
    Algorithm { local: Algorithm, peer: Algorithm },
    #[error("peer hashes {peer}-byte chunks, this side {local}-byte chunks")]
    ChunkSize { local: usize, peer: usize },
}

impl Delta {
    /// The chunks whose hashes differ, plus every chunk past the peer's end
    /// and the chunk that was the peer's short last chunk when the region
    /// grew (its bytes past the old end are new even if the hash list says
    /// nothing about them). `peer: None` sends every chunk.
    pub fn between(local: &HashList, peer: Option<&HashList>) -> Result<Self, DeltaError> {
        let Some(peer) = peer else {
            return Ok(Self {
                region_len: local.region_len(),
                peer_len: None,
                chunks: (0..local.len()).collect(),
                chunk_size: local.chunk_size(),
            });
        };
        if local.algorithm() != peer.algorithm() {
            return Err(DeltaError::Algorithm {
                local: local.algorithm(),
                peer: peer.algorithm(),
            });
        }
        if local.chunk_size() != peer.chunk_size() {
            return Err(DeltaError::ChunkSize {
                local: local.chunk_size(),
                peer: peer.chunk_size(),
            });
        }
        let chunks = (0..local.len())
            .filter(|&i| {
                // A short last chunk hashes fewer bytes than the same index
                // in a longer region, so the lengths must agree too.
                local.digest(i) != peer.digest(i) || chunk_len(local, i) != chunk_len(peer, i)
            })
            .collect();
        Ok(Self {
            region_len: local.region_len(),
            peer_len: Some(peer.region_len()),
            chunks,
            chunk_size: local.chunk_size(),
        })
    }

    /// The byte range of chunk `index` in a region of `region_len` bytes.
    pub fn range(&self, index: usize) -> Range<u64> {
        let start = index as u64 * self.chunk_size as u64;
        start..(start + self.chunk_size as u64).min(self.region_len)
    }

    /// Bytes the chunks to send hold.
    pub fn bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|&i| {
                let r = self.range(i);
                r.end - r.start
            })
            .sum()
    }

    /// Whether the peer's length must change first.
    pub fn resizes(&self) -> bool {
        self.peer_len != Some(self.region_len)
    }
}

fn chunk_len(list: &HashList, index: usize) -> u64 {
    let start = index as u64 * list.chunk_size() as u64;
    (list.region_len().saturating_sub(start)).min(list.chunk_size() as u64)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn list(bytes: &[u8], a: Algorithm) -> HashList {
        HashList::compute(bytes, 1024, a, NonZeroUsize::MIN).unwrap()
    }

    #[test]
    fn identical_lists_send_nothing() {
        let region = vec![3u8; 5000];
        let l = list(&region, Algorithm::Crc32);
        let d = Delta::between(&l, Some(&l)).unwrap();
        assert!(d.chunks.is_empty() && !d.resizes() && d.bytes() == 0);
    }

    #[test]
    fn changed_chunks_and_growth_are_sent() {
        let old = vec![0u8; 2500]; // chunks 0, 1 and a short 2
        let mut new = vec![0u8; 4200];
        new[1500] = 1; // chunk 1
        let d = Delta::between(
            &list(&new, Algorithm::Xxh3),
            Some(&list(&old, Algorithm::Xxh3)),
        )
        .unwrap();
        // Chunk 2 held 452 zero bytes and now 1024: same prefix, new length.
        assert_eq!(d.chunks, vec![1, 2, 3, 4]);
        assert!(d.resizes());
        assert_eq!(d.range(4), 4096..4200);
        assert_eq!(d.bytes(), 3 * 1024 + 104);
    }

    #[test]
    fn truncation_sends_only_a_changed_tail() {
        let old = vec![0u8; 4096];
        let new = vec![0u8; 1500];
        let d = Delta::between(
            &list(&new, Algorithm::Sha256),
            Some(&list(&old, Algorithm::Sha256)),
        )
        .unwrap();
        assert_eq!(d.chunks, vec![1], "chunk 1 was 1024 bytes, is now 476");
        assert_eq!((d.region_len, d.peer_len), (1500, Some(4096)));
    }

    #[test]
    fn unknown_peer_gets_everything_and_mismatches_are_errors() {
        let l = list(&[1u8; 3000], Algorithm::Blake3);
        assert_eq!(Delta::between(&l, None).unwrap().chunks, vec![0, 1, 2]);
        let other = list(&[1u8; 3000], Algorithm::Crc32);
        assert!(matches!(
            Delta::between(&l, Some(&other)),
            Err(DeltaError::Algorithm { .. })
        ));
        let coarse =
            HashList::compute(&[1u8; 3000], 2048, Algorithm::Blake3, NonZeroUsize::MIN).unwrap();
        assert!(matches!(
            Delta::between(&l, Some(&coarse)),
            Err(DeltaError::ChunkSize { .. })
        ));
    }
}
