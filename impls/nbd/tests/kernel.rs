//! The kernel NBD client: where `/dev/nbd*` is usable, our server's export
//! is attached and read and written through the block device; elsewhere the
//! test checks that the absence is reported with its reason, by both
//! `available()` and `attach()`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;

use backends::SharedBackend;
use nbd::{AttachOptions, Export, KernelError, KernelNbd, Server, ServerLimits};

const SIZE: usize = 4 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_attached_to_the_kernel_reads_and_writes_through_dev_nbd() {
    let disk = common::patterned(21, SIZE);
    let server = Server::new(
        vec![Export::new("k", disk.clone() as SharedBackend)],
        ServerLimits::default(),
    )
    .unwrap();
    let (kernel_side, server_side) = std::os::unix::net::UnixStream::pair().unwrap();
    server_side.set_nonblocking(true).unwrap();
    kernel_side.set_nonblocking(true).unwrap();
    let serving = tokio::spawn({
        let stream = tokio::net::UnixStream::from_std(server_side).unwrap();
        async move { server.serve(stream).await }
    });
    let stream = tokio::net::UnixStream::from_std(kernel_side).unwrap();
    let (stream, info) = nbd::handshake(stream, "k").await.unwrap();
    let fd: OwnedFd = stream.into_std().unwrap().into();

    if let Err(reason) = KernelNbd::available() {
        eprintln!("skipped: kernel NBD client not usable here: {reason}");
        // attach() must refuse with the same reason, not fail some other way.
        let err = tokio::task::spawn_blocking(move || {
            KernelNbd::attach(fd, &info, &AttachOptions::default())
        })
        .await
        .unwrap()
        .unwrap_err();
        match err {
            KernelError::Unavailable(r) => assert_eq!(r, reason),
            other => panic!("expected Unavailable, got {other}"),
        }
        serving.abort();
        return;
    }

    let original = disk.snapshot();
    let (device_path, sys) = tokio::task::spawn_blocking(move || {
        let device = KernelNbd::attach(fd, &info, &AttachOptions::default()).unwrap();
        let path = device.path().to_owned();
        let sys = format!("/sys/block/nbd{}", device.index());
        let mut dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut all = vec![0u8; SIZE];
        dev.read_exact(&mut all).unwrap();
        assert!(
            all == original,
            "the block device shows other bytes than the export"
        );
        dev.seek(SeekFrom::Start(8192)).unwrap();
        dev.write_all(&[0x5a; 4096]).unwrap();
        dev.sync_all().unwrap();
        drop(dev);
        assert!(std::path::Path::new(&sys).join("pid").exists());
        device.detach().unwrap();
        (path, sys)
    })
    .await
    .unwrap();
    assert!(disk.snapshot()[8192..12288].iter().all(|&b| b == 0x5a));
    assert!(
        !std::path::Path::new(&sys).join("pid").exists(),
        "{} is still attached after detach",
        device_path.display()
    );
    let stats = serving.await.unwrap().unwrap();
    assert!(stats.reads > 0 && stats.writes > 0, "{stats:?}");
}
