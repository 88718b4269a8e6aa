//! A backend stored as one file per chunk in a directory.
//!
//! Chunk `i` covers bytes `[i * chunk_size, (i + 1) * chunk_size)` of the
//! backend (the last chunk is short when the size is not a multiple of the
//! chunk size) and lives in the file [`DirectoryBackend::chunk_path`]`(i)`,
//! named `<i>.chunk` with `i` in decimal.
//!
//! # Behavior
//!
//! - A chunk file is created by the first write that touches the chunk, so a
//!   region that is mostly untouched costs few files. A missing chunk file,
//!   and any bytes past the end of a chunk file, read as zeros.
//! - Accesses that span chunks are split into one positional I/O per chunk.
//! - Every access opens the chunk files it touches and closes them again, so
//!   the number of open descriptors is bounded by the number of accesses in
//!   flight, not by the size of the region.
//! - [`Backend::sync`] `fdatasync`s every chunk file written since the last
//!   successful sync, then `fsync`s the directory so new chunk files' names
//!   are durable too.
//!
//! # Limitations
//!
//! Chunk files are trusted: a chunk file longer than its chunk is not
//! detected, and its extra bytes are never read.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::positional::{read_full_at, with_context, write_full_at};
use crate::{check_range, Backend, Result};

/// Errors from creating or opening a [`DirectoryBackend`].
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// A chunk size of zero cannot cover any bytes.
    #[error(
        "chunk size 0 is invalid for a directory backend of {size} bytes: it must be at least 1"
    )]
    ZeroChunkSize { size: u64 },
    /// The directory could not be created or listed.
    #[error("cannot prepare backend directory {dir:?}: {source}")]
    Prepare { dir: PathBuf, source: io::Error },
    /// `create` was given a directory that already holds files, which would
    /// make a fresh backend read something other than zeros.
    #[error("backend directory {dir:?} is not empty; create needs an empty or missing directory (use open to reuse chunk files)")]
    NotEmpty { dir: PathBuf },
    /// The path exists but is not a directory.
    #[error("backend path {dir:?} is not a directory")]
    NotADirectory { dir: PathBuf },
}

/// A backend stored as one file per chunk, created on first write.
#[derive(Debug)]
pub struct DirectoryBackend {
    dir: PathBuf,
    size: u64,
    chunk_size: u64,
    /// Chunks written since the last successful sync. Indices are recorded
    /// after their write completes, so a sync that starts after a write
    /// returned always sees that write's chunks.
    dirty: Mutex<BTreeSet<u64>>,
}

/// The part of one access that falls into one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    index: u64,
    /// Offset inside the chunk file.
    offset_in_chunk: u64,
    /// Range inside the caller's buffer.
    buf_start: usize,
    len: usize,
}

impl DirectoryBackend {
    /// A zero-filled backend of `size` bytes in `dir`, which is created if
    /// missing and must otherwise be empty.
    pub fn create(
        dir: impl AsRef<Path>,
        size: u64,
        chunk_size: u64,
    ) -> Result<Self, DirectoryError> {
        let dir = dir.as_ref().to_path_buf();
        if chunk_size == 0 {
            return Err(DirectoryError::ZeroChunkSize { size });
        }
        let prepare_err = |source| DirectoryError::Prepare {
            dir: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(|e| {
            if dir.exists() && !dir.is_dir() {
                DirectoryError::NotADirectory { dir: dir.clone() }
            } else {
                prepare_err(e)
            }
        })?;
        if fs::read_dir(&dir).map_err(prepare_err)?.next().is_some() {
            return Err(DirectoryError::NotEmpty { dir });
        }
        Ok(Self::new_unchecked(dir, size, chunk_size))
    }

    /// Reattaches to chunk files an earlier backend with the same `size` and
    /// `chunk_size` left in `dir`. Chunks without a file read as zeros.
    pub fn open(dir: impl AsRef<Path>, size: u64, chunk_size: u64) -> Result<Self, DirectoryError> {
        let dir = dir.as_ref().to_path_buf();
        if chunk_size == 0 {
            return Err(DirectoryError::ZeroChunkSize { size });
        }
        let metadata = fs::metadata(&dir).map_err(|source| DirectoryError::Prepare {
            dir: dir.clone(),
            source,
        })?;
        if !metadata.is_dir() {
            return Err(DirectoryError::NotADirectory { dir });
        }
        Ok(Self::new_unchecked(dir, size, chunk_size))
    }

    fn new_unchecked(dir: PathBuf, size: u64, chunk_size: u64) -> Self {
        Self {
            dir,
            size,
            chunk_size,
            dirty: Mutex::new(BTreeSet::new()),
        }
    }

    /// The directory holding the chunk files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size of every chunk but possibly the last.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Where chunk `index` is stored (the file may not exist yet).
    pub fn chunk_path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index}.chunk"))
    }

    /// Splits `len` bytes at `offset` (already checked against the size) into
    /// per-chunk pieces.
    fn pieces(&self, offset: u64, len: usize) -> impl Iterator<Item = Piece> + '_ {
        let end = offset + len as u64;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let index = pos / self.chunk_size;
            let chunk_start = index * self.chunk_size;
            // `chunk_start <= pos < size`, so neither this subtraction nor the
            // addition can overflow, even for a chunk size near u64::MAX.
            let chunk_end = chunk_start + (self.size - chunk_start).min(self.chunk_size);
            let piece_end = end.min(chunk_end);
            let piece = Piece {
                index,
                offset_in_chunk: pos - chunk_start,
                buf_start: (pos - offset) as usize,
                len: (piece_end - pos) as usize,
            };
            pos = piece_end;
            Some(piece)
        })
    }

    fn read_piece(&self, piece: Piece, buf: &mut [u8]) -> io::Result<()> {
        let path = self.chunk_path(piece.index);
        let got = match File::open(&path) {
            Ok(file) => read_full_at(&file, buf, piece.offset_in_chunk).map_err(|e| {
                with_context(
                    e,
                    format_args!(
                        "reading {} bytes at {} from chunk file {path:?}",
                        buf.len(),
                        piece.offset_in_chunk
                    ),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(with_context(e, format_args!("opening chunk file {path:?}"))),
        };
        // Bytes never written are zeros, whether the chunk file is missing or
        // just shorter than the chunk.
        buf[got..].fill(0);
        Ok(())
    }

    fn write_piece(&self, piece: Piece, data: &[u8]) -> io::Result<()> {
        let path = self.chunk_path(piece.index);
        // No truncate: concurrent first writes to one chunk may both create
        // the file, and neither may wipe what the other wrote.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| with_context(e, format_args!("creating chunk file {path:?}")))?;
        write_full_at(&file, data, piece.offset_in_chunk).map_err(|e| {
            with_context(
                e,
                format_args!(
                    "writing {} bytes at {} to chunk file {path:?}",
                    data.len(),
                    piece.offset_in_chunk
                ),
            )
        })
    }

    fn sync_chunks(&self, chunks: &[u64]) -> std::result::Result<(), (usize, io::Error)> {
        for (i, &index) in chunks.iter().enumerate() {
            let path = self.chunk_path(index);
            // Linux flushes a file's data through any descriptor, read-only
            // included, so there is no need to ask for write access here.
            File::open(&path)
                .and_then(|file| file.sync_data())
                .map_err(|e| {
                    (
                        i,
                        with_context(e, format_args!("syncing chunk file {path:?}")),
                    )
                })?;
        }
        Ok(())
    }
}

// Like the file backend, this does its file system calls directly inside the
// async fns: opens and positional I/O on page-cached files take microseconds,
// less than a hand-off to a blocking thread. Files are opened per access
// rather than cached because a region of many chunks (64 GiB of 64 KiB chunks
// is a million files) would otherwise exhaust the descriptor limit, and a
// bounded cache would add eviction and locking for a cost (an open of a
// dentry-cached file) that is already small.
#[async_trait]
impl Backend for DirectoryBackend {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let n = check_range(offset, buf.len() as u64, self.size, false)? as usize;
        for piece in self.pieces(offset, n) {
            self.read_piece(
                piece,
                &mut buf[piece.buf_start..piece.buf_start + piece.len],
            )?;
        }
        Ok(n)
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        check_range(offset, data.len() as u64, self.size, true)?;
        for piece in self.pieces(offset, data.len()) {
            self.write_piece(piece, &data[piece.buf_start..piece.buf_start + piece.len])?;
            self.dirty.lock().insert(piece.index);
        }
        Ok(())
    }

    async fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    async fn sync(&self) -> Result<()> {
        // Take the set so writes that land while we fsync start a new one and
        // are synced next time; the lock is not held across syscalls.
        let chunks: Vec<u64> = std::mem::take(&mut *self.dirty.lock())
            .into_iter()
            .collect();
        if let Err((failed_at, e)) = self.sync_chunks(&chunks) {
            // Put back what was not synced so the next sync retries it.
            self.dirty.lock().extend(&chunks[failed_at..]);
            return Err(e.into());
        }
        let dir_result = File::open(&self.dir).and_then(|dir| dir.sync_all());
        if let Err(e) = dir_result {
            // The chunk data is durable but new chunk files' names may not
            // be: keep them all dirty so the next sync repeats the whole step.
            self.dirty.lock().extend(&chunks);
            return Err(with_context(e, format_args!("syncing directory {:?}", self.dir)).into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendError;

    fn chunk_files(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    #[test]
    fn zero_chunk_size_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = DirectoryBackend::create(dir.path(), 4096, 0).unwrap_err();
        assert!(
            matches!(err, DirectoryError::ZeroChunkSize { size: 4096 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("chunk size 0"), "{err}");
        let err = DirectoryBackend::open(dir.path(), 4096, 0).unwrap_err();
        assert!(
            matches!(err, DirectoryError::ZeroChunkSize { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn files_exist_only_for_written_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DirectoryBackend::create(dir.path(), 10 * 4096 + 100, 4096).unwrap();
        assert!(
            chunk_files(dir.path()).is_empty(),
            "create must not make chunk files"
        );

        // Reads, even of every chunk, create nothing.
        let mut buf = vec![0xFF; 10 * 4096 + 100];
        backend.read_exact_at(&mut buf, 0).await.unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert!(
            chunk_files(dir.path()).is_empty(),
            "reads must not make chunk files"
        );

        // One write inside chunk 2, one spanning chunks 4 and 5, one into the
        // short last chunk 10.
        backend.write_at(&[1; 10], 2 * 4096 + 7).await.unwrap();
        backend.write_at(&[2; 20], 5 * 4096 - 10).await.unwrap();
        backend.write_at(&[3; 100], 10 * 4096).await.unwrap();
        let expected: BTreeSet<String> =
            [2, 4, 5, 10].iter().map(|i| format!("{i}.chunk")).collect();
        assert_eq!(chunk_files(dir.path()), expected);
        assert!(backend.chunk_path(4).exists());

        // The spanning write was split at the boundary, not written whole
        // into one file.
        assert_eq!(fs::read(backend.chunk_path(4)).unwrap().len(), 4096);
        assert_eq!(fs::read(backend.chunk_path(5)).unwrap(), vec![2; 10]);
        assert_eq!(fs::read(backend.chunk_path(10)).unwrap(), vec![3; 100]);
    }

    #[tokio::test]
    async fn sync_clears_the_dirty_set_and_content_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DirectoryBackend::create(dir.path(), 3 * 65536, 65536).unwrap();
        backend.write_at(&[7; 80_000], 60_000).await.unwrap();
        assert_eq!(*backend.dirty.lock(), BTreeSet::from([0, 1, 2]));
        backend.sync().await.unwrap();
        assert!(backend.dirty.lock().is_empty());
        drop(backend);

        let reopened = DirectoryBackend::open(dir.path(), 3 * 65536, 65536).unwrap();
        let mut buf = vec![0; 3 * 65536];
        reopened.read_exact_at(&mut buf, 0).await.unwrap();
        assert!(buf[..60_000].iter().all(|&b| b == 0));
        assert!(buf[60_000..140_000].iter().all(|&b| b == 7));
        assert!(buf[140_000..].iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn failed_sync_keeps_chunks_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DirectoryBackend::create(dir.path(), 4 * 4096, 4096).unwrap();
        backend.write_at(&[1; 4096 * 2], 4096).await.unwrap();
        // Removing a written chunk file makes its sync fail with NotFound.
        fs::remove_file(backend.chunk_path(1)).unwrap();
        match backend.sync().await {
            Err(BackendError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert_eq!(*backend.dirty.lock(), BTreeSet::from([1, 2]));
    }

    #[test]
    fn create_refuses_a_non_empty_directory_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("0.chunk"), b"stale").unwrap();
        let err = DirectoryBackend::create(dir.path(), 4096, 4096).unwrap_err();
        assert!(matches!(err, DirectoryError::NotEmpty { .. }), "{err:?}");

        let file = dir.path().join("0.chunk");
        let err = DirectoryBackend::create(&file, 4096, 4096).unwrap_err();
        assert!(
            matches!(err, DirectoryError::NotADirectory { .. }),
            "{err:?}"
        );
        let err = DirectoryBackend::open(&file, 4096, 4096).unwrap_err();
        assert!(
            matches!(err, DirectoryError::NotADirectory { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn create_makes_missing_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        let backend = DirectoryBackend::create(&nested, 1, 1).unwrap();
        assert!(nested.is_dir());
        assert_eq!(backend.dir(), nested);
    }

    #[test]
    fn pieces_split_at_chunk_boundaries_and_the_short_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DirectoryBackend::create(dir.path(), 250, 100).unwrap();
        let pieces: Vec<Piece> = backend.pieces(90, 160).collect();
        assert_eq!(
            pieces,
            vec![
                Piece {
                    index: 0,
                    offset_in_chunk: 90,
                    buf_start: 0,
                    len: 10
                },
                Piece {
                    index: 1,
                    offset_in_chunk: 0,
                    buf_start: 10,
                    len: 100
                },
                Piece {
                    index: 2,
                    offset_in_chunk: 0,
                    buf_start: 110,
                    len: 50
                },
            ]
        );
        // A chunk size larger than the backend gives one short chunk.
        let huge = DirectoryBackend::open(dir.path(), 250, u64::MAX).unwrap();
        let pieces: Vec<Piece> = huge.pieces(5, 245).collect();
        assert_eq!(
            pieces,
            vec![Piece {
                index: 0,
                offset_in_chunk: 5,
                buf_start: 0,
                len: 245
            }]
        );
    }
}
