//! Byte sizes: parsing `64M`-style arguments and printing sizes for people.

/// The size suffixes [`parse_size`] accepts.
const SIZE_FORMS: &str = "an integer number of bytes with an optional suffix \
     K, M, G, T or KiB, MiB, GiB, TiB (powers of 1024), e.g. 64M";

/// A size argument that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum SizeError {
    /// Not a number with a known suffix.
    #[error("{text:?} is not a size: expected {SIZE_FORMS}")]
    Malformed { text: String },
    /// More than 2^64 - 1 bytes.
    #[error("size {text:?} is over 2^64 - 1 bytes")]
    Overflow { text: String },
}

/// Parses `4096`, `64K`, `64M`, `2GiB`, ... (units are powers of 1024, case
/// does not matter; no fractions).
pub(super) fn parse_size(text: &str) -> Result<u64, SizeError> {
    let malformed = || SizeError::Malformed {
        text: text.to_owned(),
    };
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(malformed());
    }
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(malformed()),
    };
    let overflow = || SizeError::Overflow {
        text: text.to_owned(),
    };
    // Only digits are left, so the one way `parse` fails is overflow.
    let value: u64 = digits.parse().map_err(|_| overflow())?;
    value.checked_mul(1u64 << shift).ok_or_else(overflow)
}

/// `67108864` as `64 MiB`, `1536` as `1.5 KiB`, `100` as `100 B`.
pub(super) fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        let scale = 1u64 << shift;
        if bytes >= scale {
            return if bytes.is_multiple_of(scale) {
                format!("{} {unit}", bytes >> shift)
            } else {
                format!("{:.1} {unit}", bytes as f64 / scale as f64)
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64mib"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3KiB"), Ok(3 << 10));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size(" 8 M "), Ok(8 << 20));
        assert_eq!(parse_size("16777215T"), Ok(16_777_215 << 40));
    }

    #[test]
    fn bad_sizes_are_named() {
        for bad in ["", "M", "1.5G", "-1", "64MB", "64X", "1e6", "0x10", "4 K B"] {
            let err = parse_size(bad).unwrap_err();
            assert_eq!(
                err,
                SizeError::Malformed {
                    text: bad.to_owned()
                },
                "{bad:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{bad:?}")) && msg.contains("KiB"),
                "{msg}"
            );
        }
        for big in [
            "18446744073709551616",
            "16777216T",
            "99999999999999999999999",
        ] {
            assert!(
                matches!(parse_size(big), Err(SizeError::Overflow { .. })),
                "{big}"
            );
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(3 << 40), "3 TiB");
    }
}
