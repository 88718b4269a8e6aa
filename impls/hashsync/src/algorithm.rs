//! The chunk hash algorithms the study compares.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A chunk hash algorithm. Each produces a fixed-length digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    /// CRC-32 (IEEE), the study's choice (`hash/crc32` in the Go reference):
    /// fast, 4 bytes, and not collision resistant.
    Crc32,
    /// XXH3, 64-bit: a non-cryptographic hash built for throughput.
    Xxh3,
    /// BLAKE3 (one thread per chunk; parallelism comes from hashing many
    /// chunks at once): cryptographic, 32 bytes.
    Blake3,
    /// SHA-256: cryptographic, 32 bytes; uses the CPU's SHA extensions
    /// where `sha2` detects them.
    Sha256,
}

impl Algorithm {
    /// Every algorithm, in the order figures list them.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Crc32,
        Algorithm::Xxh3,
        Algorithm::Blake3,
        Algorithm::Sha256,
    ];

    /// The name used in scenario files and records.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "crc32",
            Algorithm::Xxh3 => "xxh3",
            Algorithm::Blake3 => "blake3",
            Algorithm::Sha256 => "sha256",
        }
    }

    /// Bytes in one digest.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Crc32 => 4,
            Algorithm::Xxh3 => 8,
            Algorithm::Blake3 | Algorithm::Sha256 => 32,
        }
    }

    /// The code that stands for the algorithm in an encoded hash list.
    pub(crate) fn code(self) -> u8 {
        match self {
            Algorithm::Crc32 => 1,
            Algorithm::Xxh3 => 2,
            Algorithm::Blake3 => 3,
            Algorithm::Sha256 => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.code() == code)
    }

    /// Hashes `data` into `out`, which must be [`Self::digest_len`] bytes.
    ///
    /// # Panics
    ///
    /// If `out` has another length: callers size it from `digest_len`.
    pub fn digest_into(self, data: &[u8], out: &mut [u8]) {
        match self {
            Algorithm::Crc32 => out.copy_from_slice(&crc32fast::hash(data).to_le_bytes()),
            Algorithm::Xxh3 => out.copy_from_slice(&xxhash_rust::xxh3::xxh3_64(data).to_le_bytes()),
            Algorithm::Blake3 => out.copy_from_slice(blake3::hash(data).as_bytes()),
            Algorithm::Sha256 => out.copy_from_slice(&sha2::Sha256::digest(data)),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not an algorithm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hash algorithm \"{0}\"; allowed: crc32, xxh3, blake3, sha256")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAlgorithm(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
            assert_eq!(Algorithm::from_code(a.code()), Some(a));
        }
        let err = "md5".parse::<Algorithm>().unwrap_err().to_string();
        assert!(err.contains("md5") && err.contains("xxh3"), "{err}");
        assert_eq!(Algorithm::from_code(0), None);
    }

    #[test]
    fn digests_match_published_vectors() {
        let mut crc = [0; 4];
        Algorithm::Crc32.digest_into(b"123456789", &mut crc);
        // The CRC-32/IEEE check value.
        assert_eq!(u32::from_le_bytes(crc), 0xCBF4_3926);
        let mut sha = [0; 32];
        Algorithm::Sha256.digest_into(b"abc", &mut sha);
        assert_eq!(sha[..4], [0xba, 0x78, 0x16, 0xbf]);
        let mut xxh = [0; 8];
        Algorithm::Xxh3.digest_into(b"", &mut xxh);
        // XXH3_64bits of the empty input with seed 0.
        assert_eq!(u64::from_le_bytes(xxh), 0x2D06_8005_38D3_94C2);
        let mut b3 = [0; 32];
        Algorithm::Blake3.digest_into(b"", &mut b3);
        assert_eq!(b3[..4], [0xaf, 0x13, 0x49, 0xb9]);
    }
}
