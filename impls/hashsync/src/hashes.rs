//! A region's chunk hashes: computing them in parallel, and the byte form
//! in which a peer sends its list.
//!
//! # Encoded form
//!
//! ```text
//! "MSHL" | version u8 = 1 | algorithm u8 | reserved u16 = 0 | chunk_size u32 LE
//! | region_len u64 LE | chunk count u64 LE | count x digest
//! ```
//!
//! [`HashList::decode`] checks the header, the count against the region
//! length and the caller's size limit, and the exact total length before it
//! allocates anything, so a hostile peer cannot make it allocate more than
//! it sent.

use std::num::NonZeroUsize;

use crate::algorithm::Algorithm;

const MAGIC: &[u8; 4] = b"MSHL";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 1 + 2 + 4 + 8 + 8;
/// Largest chunk a list may describe; a u32 in the encoded header.
pub const MAX_CHUNK_SIZE: usize = 1 << 30;

/// Why a chunk size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk size {0} is not allowed; allowed: a power of two from 512 bytes to 1 GiB")]
pub struct BadChunkSize(pub usize);

/// Checks a chunk size: a power of two from 512 B to [`MAX_CHUNK_SIZE`].
pub fn check_chunk_size(chunk_size: usize) -> Result<(), BadChunkSize> {
    if chunk_size.is_power_of_two() && (512..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(BadChunkSize(chunk_size))
    }
}

/// The hashes of every chunk of a region of `region_len` bytes; the last
/// chunk may be short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashList {
    algorithm: Algorithm,
    chunk_size: usize,
    region_len: u64,
    /// The digests back to back, `algorithm.digest_len()` bytes each.
    digests: Vec<u8>,
}

/// Why a peer's encoded hash list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("hash list of {len} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("hash list does not start with \"MSHL\"")]
    Magic,
    #[error("hash list version {0} is not supported; allowed: 1")]
    Version(u8),
    #[error(
        "hash list names algorithm code {0}; allowed: 1 (crc32), 2 (xxh3), 3 (blake3), 4 (sha256)"
    )]
    Algorithm(u8),
    #[error("hash list has reserved bits {0:#x} set")]
    Reserved(u16),
    #[error(transparent)]
    ChunkSize(#[from] BadChunkSize),
    #[error("hash list describes a region of {region_len} bytes; allowed: at most {max} bytes")]
    TooLarge { region_len: u64, max: u64 },
    #[error("hash list has {count} chunks for a region of {region_len} bytes in {chunk_size}-byte chunks, which needs {expected}")]
    Count {
        count: u64,
        region_len: u64,
        chunk_size: usize,
        expected: u64,
    },
    #[error("hash list is {len} bytes; its header promises {expected}")]
    Length { len: usize, expected: usize },
}

/// Chunks in a region of `region_len` bytes.
pub fn chunk_count(region_len: u64, chunk_size: usize) -> u64 {
    region_len.div_ceil(chunk_size as u64)
}

impl HashList {
    /// Hashes `region` chunk by chunk with `threads` threads (each takes a
    /// contiguous run of chunks, so no two write the same digest).
    ///
    /// # Errors
    ///
    /// If `chunk_size` is not allowed ([`check_chunk_size`]).
    pub fn compute(
        region: &[u8],
        chunk_size: usize,
        algorithm: Algorithm,
        threads: NonZeroUsize,
    ) -> Result<Self, BadChunkSize> {
        check_chunk_size(chunk_size)?;
        let dlen = algorithm.digest_len();
        let chunks = region.len().div_ceil(chunk_size);
        let mut digests = vec![0u8; chunks * dlen];
        let per_thread = chunks.div_ceil(threads.get()).max(1);
        if threads.get() == 1 || chunks <= 1 {
            hash_run(region, chunk_size, algorithm, &mut digests);
        } else {
            std::thread::scope(|scope| {
                for (i, out) in digests.chunks_mut(per_thread * dlen).enumerate() {
                    let start = i * per_thread * chunk_size;
                    let end = (start + per_thread * chunk_size).min(region.len());
                    let part = &region[start..end];
                    scope.spawn(move || hash_run(part, chunk_size, algorithm, out));
                }
            });
        }
        Ok(Self {
            algorithm,
            chunk_size,
            region_len: region.len() as u64,
            digests,
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Bytes per chunk (the last may be short).
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Bytes in the region the list describes.
    pub fn region_len(&self) -> u64 {
        self.region_len
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.digests.len() / self.algorithm.digest_len()
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The digest of chunk `index`, if there is one.
    pub fn digest(&self, index: usize) -> Option<&[u8]> {
        let dlen = self.algorithm.digest_len();
        self.digests.get(index * dlen..(index + 1) * dlen)
    }

    /// The byte form a peer sends (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.digests.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.algorithm.code());
        out.extend_from_slice(&0u16.to_le_bytes());
        // check_chunk_size bounds it by MAX_CHUNK_SIZE, which fits.
        out.extend_from_slice(&(self.chunk_size as u32).to_le_bytes());
        out.extend_from_slice(&self.region_len.to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.digests);
        out
    }

    /// Decodes a peer's list, refusing regions larger than `max_region_len`.
    pub fn decode(bytes: &[u8], max_region_len: u64) -> Result<Self, DecodeError> {
        let header = bytes
            .get(..HEADER_LEN)
            .ok_or(DecodeError::Short { len: bytes.len() })?;
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(w)
        };
        if &header[..4] != MAGIC {
            return Err(DecodeError::Magic);
        }
        if header[4] != VERSION {
            return Err(DecodeError::Version(header[4]));
        }
        let algorithm = Algorithm::from_code(header[5]).ok_or(DecodeError::Algorithm(header[5]))?;
        let reserved = u16::from_le_bytes([header[6], header[7]]);
        if reserved != 0 {
            return Err(DecodeError::Reserved(reserved));
        }
        let chunk_size =
            u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        check_chunk_size(chunk_size)?;
        let region_len = u64_at(12);
        if region_len > max_region_len {
            return Err(DecodeError::TooLarge {
                region_len,
                max: max_region_len,
            });
        }
        let count = u64_at(20);
        let expected = chunk_count(region_len, chunk_size);
        if count != expected {
            return Err(DecodeError::Count {
                count,
                region_len,
                chunk_size,
                expected,
            });
        }
        let body_len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(algorithm.digest_len()))
            .and_then(|b| b.checked_add(HEADER_LEN));
        match body_len {
            Some(total) if total == bytes.len() => Ok(Self {
                algorithm,
                chunk_size,
                region_len,
                digests: bytes[HEADER_LEN..].to_vec(),
            }),
            _ => Err(DecodeError::Length {
                len: bytes.len(),
                expected: body_len.unwrap_or(usize::MAX),
            }),
        }
    }
}

/// Hashes consecutive chunks of `region` into consecutive digests of `out`.
fn hash_run(region: &[u8], chunk_size: usize, algorithm: Algorithm, out: &mut [u8]) {
    let dlen = algorithm.digest_len();
    for (chunk, digest) in region.chunks(chunk_size).zip(out.chunks_mut(dlen)) {
        algorithm.digest_into(chunk, digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn parallel_hashing_equals_serial_for_every_thread_count() {
        let region: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for a in Algorithm::ALL {
            let serial = HashList::compute(&region, 4096, a, threads(1)).unwrap();
            assert_eq!(serial.len(), 25, "24 whole chunks and a short one");
            for n in [2, 3, 4, 7, 64] {
                assert_eq!(
                    HashList::compute(&region, 4096, a, threads(n)).unwrap(),
                    serial,
                    "{a} with {n} threads"
                );
            }
            let mut last = vec![0; a.digest_len()];
            a.digest_into(&region[24 * 4096..], &mut last);
            assert_eq!(serial.digest(24), Some(&last[..]), "{a}: the short chunk");
        }
    }

    #[test]
    fn refuses_bad_chunk_sizes() {
        for bad in [0, 100, 3000, 1 << 31] {
            assert_eq!(
                HashList::compute(&[], bad, Algorithm::Crc32, threads(1)),
                Err(BadChunkSize(bad))
            );
        }
        let empty = HashList::compute(&[], 4096, Algorithm::Crc32, threads(4)).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn encoding_round_trips() {
        let region = vec![9u8; 10_000];
        for a in Algorithm::ALL {
            let list = HashList::compute(&region, 1024, a, threads(2)).unwrap();
            assert_eq!(HashList::decode(&list.encode(), 10_000), Ok(list));
        }
    }

    #[test]
    fn decoding_refuses_bad_peer_input() {
        let list = HashList::compute(&[1u8; 8192], 4096, Algorithm::Xxh3, threads(1)).unwrap();
        let good = list.encode();
        let with = |at: usize, byte: u8| {
            let mut b = good.clone();
            b[at] = byte;
            b
        };
        let decode = |b: &[u8]| HashList::decode(b, 1 << 20);
        assert_eq!(decode(&good[..10]), Err(DecodeError::Short { len: 10 }));
        assert_eq!(decode(&with(0, b'X')), Err(DecodeError::Magic));
        assert_eq!(decode(&with(4, 2)), Err(DecodeError::Version(2)));
        assert_eq!(decode(&with(5, 9)), Err(DecodeError::Algorithm(9)));
        assert_eq!(decode(&with(6, 1)), Err(DecodeError::Reserved(1)));
        assert!(matches!(
            decode(&with(9, 0x11)),
            Err(DecodeError::ChunkSize(_))
        ));
        assert!(matches!(
            HashList::decode(&good, 4096),
            Err(DecodeError::TooLarge { .. })
        ));
        // A count that disagrees with the length, and one that would make a
        // naive decoder allocate petabytes.
        assert!(matches!(
            decode(&with(20, 3)),
            Err(DecodeError::Count { .. })
        ));
        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        huge[20..28].copy_from_slice(&(u64::MAX / 4096 + 1).to_le_bytes());
        assert!(HashList::decode(&huge, u64::MAX).is_err());
        // Truncated and padded bodies.
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(DecodeError::Length { .. })
        ));
        let mut padded = good.clone();
        padded.push(0);
        assert!(matches!(decode(&padded), Err(DecodeError::Length { .. })));
    }
}
