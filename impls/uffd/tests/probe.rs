//! `probe()` against the running kernel.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use uffd::{probe, Features, OpenedVia, PagemapScan};

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let uts = nix::sys::utsname::uname().unwrap();
    let release = uts.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn probe_reports_what_this_kernel_offers() {
    let caps = probe();
    println!("{caps}");
    assert_eq!(caps.attempts.len(), 3, "every way is tried and reported");
    let Some(best) = caps.mode else {
        println!("skipping: {}", caps.error.unwrap());
        assert!(caps.features.is_empty());
        return;
    };
    assert!(caps.error.is_none());
    let features = caps.feature_bits;
    let names = &caps.features;
    println!("features: {names:?}");

    // Write-protect is in every kernel this project targets (5.7+).
    assert!(features.contains(Features::PAGEFAULT_FLAG_WP), "{names:?}");
    assert!(names.iter().any(|n| n == "PAGEFAULT_FLAG_WP"));
    assert!(caps.ioctls != 0);

    let version = kernel_version();
    if version >= (6, 7) {
        assert!(features.contains(Features::WP_UNPOPULATED), "{names:?}");
        assert!(features.contains(Features::WP_ASYNC), "{names:?}");
        assert!(names.iter().any(|n| n == "WP_ASYNC"));
        assert_eq!(caps.pagemap_scan, PagemapScan::Works);
    } else {
        assert!(
            !matches!(caps.pagemap_scan, PagemapScan::Failed { .. }),
            "{:?}",
            caps.pagemap_scan
        );
    }

    // As root every way works, and the device wins.
    if nix::unistd::geteuid().is_root() && std::path::Path::new("/dev/userfaultfd").exists() {
        assert_eq!(best, OpenedVia::Device);
        assert!(caps.attempts.iter().all(|a| a.error.is_none()), "{caps}");
    }
}
