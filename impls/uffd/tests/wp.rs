//! Write-protect dirty tracking against the running kernel: exactly the
//! pages written between two collections are reported, in both modes,
//! whichever thread (or the kernel) wrote them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
// Page runs are written as ranges, one run included.
#![allow(clippy::single_range_in_vec_init)]

use std::ops::Range;

use uffd::{DirtyTracker, WpChoice, WpMode};

/// The modes this host must support, from `probe()` (what `harness
/// doctor` reports): a mode the probe says works and that fails here is a
/// failed test, not a skip.
fn modes() -> Vec<WpMode> {
    let caps = uffd::probe();
    let has = |f: &str| caps.available() && caps.features.iter().any(|x| x == f);
    let mut modes = Vec::new();
    if has("WP_ASYNC") && has("WP_UNPOPULATED") && caps.pagemap_scan.works() {
        modes.push(WpMode::Async);
    } else {
        eprintln!("async write-protect not offered here: {caps}");
    }
    if has("PAGEFAULT_FLAG_WP") {
        modes.push(WpMode::Sync);
    } else {
        eprintln!("sync write-protect not offered here: {caps}");
    }
    modes
}

fn pages(page: usize, runs: &[Range<usize>]) -> Vec<Range<usize>> {
    runs.iter().map(|r| r.start * page..r.end * page).collect()
}

/// Writes one byte into page `index` (its middle), from this thread.
fn touch(t: &mut DirtyTracker, index: usize, value: u8) {
    let page = t.page_size();
    t.as_mut_slice()[index * page + page / 2] = value;
}

#[test]
fn reports_exactly_the_pages_written_since_the_last_collect() {
    for mode in modes() {
        let mut t = DirtyTracker::anonymous(256 * 4096, WpChoice::Only(mode)).unwrap();
        assert_eq!(t.mode(), mode);
        let page = t.page_size();
        assert!(
            t.collect().unwrap().is_empty(),
            "{mode:?}: nothing written yet"
        );

        for i in [0, 3, 4, 5, 100, 255] {
            touch(&mut t, i, 1);
        }
        assert_eq!(
            t.collect().unwrap(),
            pages(page, &[0..1, 3..6, 100..101, 255..256]),
            "{mode:?}"
        );
        assert!(t.collect().unwrap().is_empty(), "{mode:?}: re-armed");

        // Written again: reported again, and only it.
        touch(&mut t, 4, 2);
        touch(&mut t, 4, 3);
        assert_eq!(t.collect().unwrap(), pages(page, &[4..5]), "{mode:?}");

        // Reads, of touched and untouched pages, dirty nothing.
        let sum: u64 = t.as_slice()[..64 * page]
            .iter()
            .map(|&b| u64::from(b))
            .sum();
        assert_eq!(sum, 1 + 3 + 1 + 1, "{mode:?}: the bytes written are there");
        assert!(
            t.collect().unwrap().is_empty(),
            "{mode:?}: reads are not writes"
        );
    }
}

#[test]
fn writes_from_other_threads_and_the_kernel_are_reported() {
    for mode in modes() {
        let mut t = DirtyTracker::anonymous(512 * 4096, WpChoice::Only(mode)).unwrap();
        let page = t.page_size();
        let base = t.as_ptr() as usize;
        let writers: Vec<_> = [(7usize, 200usize), (300, 511)]
            .into_iter()
            .map(|(a, b)| {
                std::thread::spawn(move || {
                    for i in [a, b] {
                        // SAFETY: page `i` lies inside the tracker, which
                        // outlives this thread (joined below); no other
                        // thread touches this byte.
                        unsafe { ((base + i * page) as *mut u8).write_volatile(9) };
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(
            t.collect().unwrap(),
            pages(page, &[7..8, 200..201, 300..301, 511..512]),
            "{mode:?}"
        );

        // The kernel writes page 50 on our behalf: read(2) from a pipe.
        if mode == WpMode::Sync && !t.opened_via().handles_kernel_faults() {
            eprintln!(
                "skipping the kernel-write check: {} cannot serve it",
                t.opened_via()
            );
        } else {
            let (rx, tx) = nix::unistd::pipe().unwrap();
            nix::unistd::write(&tx, &[5u8; 16]).unwrap();
            let dst = &mut t.as_mut_slice()[50 * page..50 * page + 16];
            assert_eq!(
                nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&rx), dst).unwrap(),
                16,
                "{mode:?}"
            );
            assert_eq!(t.collect().unwrap(), pages(page, &[50..51]), "{mode:?}");
        }
    }
}

#[test]
fn a_large_sparse_region_reports_a_few_pages_exactly() {
    for mode in modes() {
        let len = 1 << 30;
        let mut t = DirtyTracker::anonymous(len, WpChoice::Only(mode)).unwrap();
        let page = t.page_size();
        let last = len / page - 1;
        for round in 1..=3u8 {
            let written = [round as usize * 1000, 131_072, last - round as usize];
            for &i in &written {
                touch(&mut t, i, round);
            }
            let mut want: Vec<_> = written.iter().map(|&i| i..i + 1).collect();
            want.sort_by_key(|r| r.start);
            assert_eq!(
                t.collect().unwrap(),
                pages(page, &want),
                "{mode:?} round {round}"
            );
        }
    }
}

#[test]
fn auto_prefers_async_and_bad_lengths_are_refused() {
    let modes = modes();
    if let Some(&first) = modes.first() {
        let t = DirtyTracker::anonymous(4096, WpChoice::Auto).unwrap();
        assert_eq!(t.mode(), first);
    }
    for len in [0, 4095, 4097] {
        let err = DirtyTracker::anonymous(len, WpChoice::Auto).unwrap_err();
        assert!(err.to_string().contains(&len.to_string()), "{err}");
    }
}

/// The pre-copy source: each cycle ships only the dirty pages, and the
/// remote (a backend service over frpc) ends identical to the region.
#[test]
fn push_dirty_ships_only_written_pages_over_a_transport() {
    use std::sync::Arc;

    use backends::{BlockingBackend, MemoryBackend};
    use rand::{Rng, SeedableRng};
    use transports::{Services, TransportConfig, TransportKind};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for mode in modes() {
        let len = 1024 * 4096;
        let remote = Arc::new(MemoryBackend::new(len as u64));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (server, client) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(TransportKind::Frpc.serve(
                listener,
                Services::backend(remote.clone()),
                TransportConfig::default(),
                shutdown.clone(),
            ));
            let client = TransportKind::Frpc
                .connect(addr, &TransportConfig::default())
                .await
                .unwrap();
            (server, client)
        });
        let peer = BlockingBackend::new(client.backend(), runtime.handle().clone());
        let mut t = DirtyTracker::anonymous(len, WpChoice::Only(mode)).unwrap();
        let page = t.page_size();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for cycle in 0..4 {
            let mut written = std::collections::BTreeSet::new();
            for _ in 0..50 {
                let at = rng.random_range(0..len);
                t.as_mut_slice()[at] = rng.random_range(1..=255);
                written.insert(at / page);
            }
            let report = t.push_dirty(&peer).unwrap();
            assert_eq!(
                report.bytes,
                (written.len() * page) as u64,
                "{mode:?} cycle {cycle}"
            );
            assert!(remote.snapshot() == t.as_slice(), "{mode:?} cycle {cycle}");
        }
        assert_eq!(
            t.push_dirty(&peer).unwrap().bytes,
            0,
            "{mode:?}: nothing written"
        );
        drop(peer);
        drop(client);
        shutdown.cancel();
        runtime.block_on(server).unwrap().unwrap();
    }
}
