//! Dropping a dirty tracker gives back everything it took. Alone in its
//! binary so no other test opens descriptors, maps memory or starts
//! threads meanwhile.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use uffd::wp::WP_THREAD_NAME;
use uffd::{DirtyTracker, WpChoice, WpMode};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn handler_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == WP_THREAD_NAME)
        .count()
}

fn mapped(start: usize, end: usize) -> bool {
    let prefix = format!("{start:x}-{end:x} ");
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|line| line.starts_with(&prefix))
}

#[test]
fn drop_releases_fds_mapping_and_thread_in_both_modes() {
    let caps = uffd::probe();
    let has = |f: &str| caps.available() && caps.features.iter().any(|x| x == f);
    let mut modes = Vec::new();
    if has("WP_ASYNC") && has("WP_UNPOPULATED") && caps.pagemap_scan.works() {
        modes.push((WpMode::Async, 2, 0)); // the userfaultfd and pagemap
    }
    if has("PAGEFAULT_FLAG_WP") {
        modes.push((WpMode::Sync, 2, 1)); // the userfaultfd and an eventfd
    }
    if modes.is_empty() {
        eprintln!("no write-protect mode offered here: {caps}");
    }
    for (mode, fds, threads) in modes {
        let fds_before = open_fds();
        let len = 64 << 20;
        let mut t = DirtyTracker::anonymous(len, WpChoice::Only(mode)).unwrap();
        t.as_mut_slice()[12_345] = 1;
        assert_eq!(t.collect().unwrap().len(), 1, "{mode:?}");
        let start = t.as_ptr() as usize;
        assert!(
            mapped(start, start + len),
            "{mode:?}: mapped while tracking"
        );
        assert_eq!(open_fds(), fds_before + fds, "{mode:?}");
        assert_eq!(handler_threads(), threads, "{mode:?}");

        drop(t);

        assert_eq!(open_fds(), fds_before, "{mode:?}");
        assert!(!mapped(start, start + len), "{mode:?}: unmapped after drop");
        let deadline = Instant::now() + Duration::from_secs(10);
        while handler_threads() != 0 {
            assert!(Instant::now() < deadline, "{mode:?}: handler still alive");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
