//! Sequential throughput of a `fusefs` file against `nbdfuse` serving
//! `nbdkit memory` of the same size, printed as one JSON object.
//!
//! For each file system: write the whole file with 1 MiB `pwrite`s and
//! fsync, read it back with 1 MiB `pread`s from a fresh open (no
//! `keep_cache` on either side, so the open drops the page cache and the
//! reads reach the server), then map it and read every byte through the
//! mapping from another fresh open. Bytes are checked after each pass.
//!
//! ```text
//! cargo run --release -p fusefs --example read_throughput -- \
//!     [--size-mib 256] [--threads 1] [--max-readahead-kib K] [--blocking] [--skip-nbdfuse]
//! ```
//!
//! Needs root (mount(2)) and `/dev/fuse`; `nbdfuse` and `nbdkit` for the
//! comparison. One run is one sample: repeat it for a distribution.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::MemoryBackend;
use fusefs::nbdfuse::{NbdFuse, NbdFuseOptions, NBDFUSE};
use fusefs::{FuseFile, FuseFileOptions, ReplyMode};
use memmap2::MmapOptions;
use serde_json::{json, Value};

const CHUNK: usize = 1 << 20;

type Error = Box<dyn std::error::Error>;

struct Args {
    size_mib: usize,
    threads: usize,
    max_readahead_kib: Option<u32>,
    blocking: bool,
    skip_nbdfuse: bool,
}

fn parse_args() -> Result<Args, Error> {
    let mut args = Args {
        size_mib: 256,
        threads: 1,
        max_readahead_kib: None,
        blocking: false,
        skip_nbdfuse: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--size-mib" => args.size_mib = value()?.parse()?,
            "--threads" => args.threads = value()?.parse()?,
            "--max-readahead-kib" => args.max_readahead_kib = Some(value()?.parse()?),
            "--blocking" => args.blocking = true,
            "--skip-nbdfuse" => args.skip_nbdfuse = true,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; expected --size-mib N, --threads N, \
                     --max-readahead-kib K, --blocking or --skip-nbdfuse"
                )
                .into())
            }
        }
    }
    if args.size_mib == 0 {
        return Err("--size-mib must be at least 1".into());
    }
    Ok(args)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + i / 4096 * 13) % 251) as u8)
        .collect()
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

/// The three passes over one file; returns MiB/s for each.
fn measure(path: &Path, expected: &[u8]) -> Result<Value, Error> {
    let size = expected.len();
    let f = File::options().read(true).write(true).open(path)?;
    let start = Instant::now();
    for (i, chunk) in expected.chunks(CHUNK).enumerate() {
        f.write_all_at(chunk, (i * CHUNK) as u64)?;
    }
    f.sync_all()?;
    let write = mib_per_s(size, start.elapsed());
    drop(f);

    let f = File::open(path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut same = true;
    let start = Instant::now();
    for (i, chunk) in expected.chunks(CHUNK).enumerate() {
        let got = &mut buf[..chunk.len()];
        f.read_exact_at(got, (i * CHUNK) as u64)?;
        same &= got == chunk;
    }
    let read = mib_per_s(size, start.elapsed());
    drop(f);
    if !same {
        return Err(format!("{} read back different bytes", path.display()).into());
    }

    let f = File::open(path)?;
    // SAFETY: nothing else writes or truncates the file during the pass;
    // both file systems refuse size changes or are not resized here.
    let map = unsafe { MmapOptions::new().len(size).map(&f) }?;
    let start = Instant::now();
    // Every byte goes through the mapping; the comparison is the read.
    let same = map[..] == expected[..];
    let mmap_read = mib_per_s(size, start.elapsed());
    drop(map);
    if !same {
        return Err(format!("{} mapped different bytes", path.display()).into());
    }
    Ok(json!({
        "write_mib_s": write,
        "read_mib_s": read,
        "mmap_read_mib_s": mmap_read,
    }))
}

fn run_fusefs(args: &Args, dir: &Path, expected: &[u8]) -> Result<Value, Error> {
    let runtime = tokio::runtime::Runtime::new()?;
    let backend = Arc::new(MemoryBackend::new(expected.len() as u64));
    let mut options = FuseFileOptions::new(
        dir.join("fusefs"),
        backend,
        expected.len() as u64,
        runtime.handle().clone(),
    );
    options.threads = args.threads;
    options.max_readahead = args.max_readahead_kib.map(|k| k * 1024);
    if args.blocking {
        options.reply_mode = ReplyMode::Blocking;
    }
    let file = FuseFile::mount(options)?;
    let result = measure(file.path(), expected);
    let details = json!({
        "mount_method": file.mount_method(),
        "kernel": file.kernel_settings(),
        "read_ahead_kb": file.read_ahead_kb(),
        "stats": file.stats(),
    });
    file.unmount()?;
    let mut result = result?;
    result["details"] = details;
    Ok(result)
}

/// `nbdkit memory` on a Unix socket; stopped when dropped.
struct Nbdkit(Child);

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_nbdfuse(dir: &Path, expected: &[u8]) -> Result<Value, Error> {
    let socket = dir.join("nbdkit.sock");
    let server = Nbdkit(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(&socket)
            .arg("memory")
            .arg(expected.len().to_string())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("running nbdkit: {e}"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err("nbdkit did not listen within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let options = NbdFuseOptions {
        read_only: false,
        ..NbdFuseOptions::default()
    };
    let fuse = NbdFuse::mount(Command::new(NBDFUSE), &dir.join("nbdfuse"), &uri, &options)?;
    let result = measure(&fuse.path(), expected);
    fuse.unmount()?;
    drop(server);
    result
}

fn ratio(ours: &Value, theirs: &Value, key: &str) -> Value {
    match (ours[key].as_f64(), theirs[key].as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    }
}

fn main() -> Result<(), Error> {
    let args = parse_args()?;
    let dir = std::env::temp_dir().join(format!("msb-fusefs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let expected = pattern(args.size_mib << 20);

    let ours = run_fusefs(&args, &dir, &expected);
    let theirs = if args.skip_nbdfuse {
        None
    } else {
        Some(run_nbdfuse(&dir, &expected))
    };
    let _ = std::fs::remove_dir(&dir);

    let ours = ours?;
    let mut out = json!({
        "size_mib": args.size_mib,
        "chunk_bytes": CHUNK,
        "threads": args.threads,
        "reply_mode": if args.blocking { "blocking" } else { "async" },
        "fusefs": ours,
    });
    if let Some(theirs) = theirs {
        let theirs = theirs?;
        out["ratio_fusefs_over_nbdfuse"] = json!({
            "write": ratio(&out["fusefs"], &theirs, "write_mib_s"),
            "read": ratio(&out["fusefs"], &theirs, "read_mib_s"),
            "mmap_read": ratio(&out["fusefs"], &theirs, "mmap_read_mib_s"),
        });
        out["nbdfuse"] = theirs;
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
