//! One regular file of fixed size, accessed with positional I/O.
//!
//! The file plays the role of a block device: byte `i` of the backend is byte
//! `i` of the file. [`FileBackend::create`] makes a sparse file, so a fresh
//! backend reads zeros without writing them.
//!
//! # Behavior
//!
//! - Reads and writes are `pread`/`pwrite` on one shared descriptor, so they
//!   need no lock and may run concurrently. Overlapping concurrent writes are
//!   not ordered against each other (the trait promises nothing there).
//! - [`Backend::sync`] is `fdatasync`.
//!
//! # Limitations
//!
//! The size is read once. If something else truncates the file afterwards,
//! reads of the missing tail fail with an `UnexpectedEof` I/O error rather
//! than inventing zeros.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::positional::{read_full_at, with_context, write_full_at};
use crate::{check_range, Backend, Result};

/// Errors from creating or opening a [`FileBackend`].
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be created or sized.
    #[error("cannot create backend file {path:?} of {size} bytes: {source}")]
    Create {
        path: PathBuf,
        size: u64,
        source: io::Error,
    },
    /// The file could not be opened for reading and writing, or inspected.
    #[error("cannot open backend file {path:?} for reading and writing: {source}")]
    Open { path: PathBuf, source: io::Error },
    /// The path names something other than a regular file.
    #[error("backend path {path:?} is a {kind}, only a regular file is allowed")]
    NotRegularFile { path: PathBuf, kind: &'static str },
}

/// A backend stored in one regular file.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    size: u64,
}

impl FileBackend {
    /// Creates (or truncates) the file at `path` and sizes it to `size` zero
    /// bytes.
    pub fn create(path: impl AsRef<Path>, size: u64) -> Result<Self, FileError> {
        let path = path.as_ref().to_path_buf();
        let create_err = |source| FileError::Create {
            path: path.clone(),
            size,
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(create_err)?;
        // Truncating to 0 first and then growing leaves a sparse file: no
        // data blocks are written, yet every byte reads as zero.
        file.set_len(size).map_err(create_err)?;
        Ok(Self { file, path, size })
    }

    /// Opens an existing regular file; the backend's size is the file's size.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| FileError::Open {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(open_err)?;
        let metadata = file.metadata().map_err(open_err)?;
        let file_type = metadata.file_type();
        if !file_type.is_file() {
            let kind = if file_type.is_dir() {
                "directory"
            } else if file_type.is_char_device() {
                "character device"
            } else if file_type.is_block_device() {
                "block device"
            } else if file_type.is_fifo() {
                "FIFO"
            } else {
                "special file"
            };
            return Err(FileError::NotRegularFile { path, kind });
        }
        Ok(Self {
            file,
            path,
            size: metadata.len(),
        })
    }

    /// The file this backend stores its bytes in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

// The syscalls below run directly inside the async fns instead of going
// through `spawn_blocking`: on a file in the page cache a `pread`/`pwrite` is a
// memory copy of a few microseconds, less than the hand-off to a blocking
// thread would cost, and the thesis's file backend makes the same trade. Only
// `sync` can block for long, and callers issue it rarely.
#[async_trait]
impl Backend for FileBackend {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let n = check_range(offset, buf.len() as u64, self.size, false)? as usize;
        let got = read_full_at(&self.file, &mut buf[..n], offset).map_err(|e| {
            with_context(
                e,
                format_args!("reading {n} bytes at {offset} from {:?}", self.path),
            )
        })?;
        if got < n {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "file {:?} ends at {}, before the backend size {}; was it truncated?",
                    self.path,
                    offset + got as u64,
                    self.size
                ),
            );
            return Err(e.into());
        }
        Ok(n)
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        check_range(offset, data.len() as u64, self.size, true)?;
        write_full_at(&self.file, data, offset).map_err(|e| {
            with_context(
                e,
                format_args!(
                    "writing {} bytes at {offset} to {:?}",
                    data.len(),
                    self.path
                ),
            )
        })?;
        Ok(())
    }

    async fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    async fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| with_context(e, format_args!("syncing {:?}", self.path)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendError;

    #[tokio::test]
    async fn open_takes_size_and_content_of_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("existing");
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();

        let backend = FileBackend::open(&path).unwrap();
        assert_eq!(backend.size().await.unwrap(), content.len() as u64);
        let mut buf = vec![0; content.len()];
        assert_eq!(backend.read_at(&mut buf, 0).await.unwrap(), content.len());
        assert_eq!(buf, content);

        backend.write_at(b"hello", 100).await.unwrap();
        backend.sync().await.unwrap();
        drop(backend);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(
            on_disk.len(),
            content.len(),
            "a write must not resize the file"
        );
        assert_eq!(&on_disk[100..105], b"hello");
        assert_eq!(&on_disk[..100], &content[..100]);
        assert_eq!(&on_disk[105..], &content[105..]);
    }

    #[tokio::test]
    async fn create_truncates_an_existing_file_to_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old");
        std::fs::write(&path, vec![0xAB; 50_000]).unwrap();

        let backend = FileBackend::create(&path, 4096).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        let mut buf = vec![0xFF; 4096];
        backend.read_exact_at(&mut buf, 0).await.unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn open_of_a_missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let err = FileBackend::open(&path).unwrap_err();
        assert!(matches!(err, FileError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn open_of_a_device_is_rejected() {
        // /dev/null opens read-write like a file would, so only the type check
        // stands between it and a backend of size 0 that drops every write.
        match FileBackend::open("/dev/null") {
            Err(FileError::NotRegularFile { kind, .. }) => assert_eq!(kind, "character device"),
            other => panic!("expected NotRegularFile, got {other:?}"),
        }
    }

    #[test]
    fn open_of_a_directory_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        // Opening a directory for writing already fails with EISDIR on Linux;
        // either error is acceptable as long as no backend comes out.
        match FileBackend::open(dir.path()) {
            Err(FileError::Open { .. } | FileError::NotRegularFile { .. }) => {}
            other => panic!("expected an error for a directory, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_file_truncated_behind_the_backend_reports_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shrinks");
        let backend = FileBackend::create(&path, 8192).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let mut buf = vec![0; 8192];
        match backend.read_at(&mut buf, 0).await {
            Err(BackendError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected UnexpectedEof, got {other:?}"),
        }
    }
}
