//! Every backend in this crate runs the shared conformance suite.

use std::sync::Arc;

use backends::conformance::Guarded;
use backends::{DirectoryBackend, FileBackend, MemoryBackend, SharedBackend};

backends::conformance_tests!(memory, |size| async move {
    Arc::new(MemoryBackend::new(size)) as SharedBackend
});

backends::conformance_tests!(file, |size| async move {
    let dir = tempfile::tempdir().unwrap();
    let backend = FileBackend::create(dir.path().join("region"), size).unwrap();
    Guarded::shared(backend, dir)
});

backends::conformance_tests!(directory_4k, |size| async move {
    let dir = tempfile::tempdir().unwrap();
    let backend = DirectoryBackend::create(dir.path().join("chunks"), size, 4096).unwrap();
    Guarded::shared(backend, dir)
});

backends::conformance_tests!(directory_64k, |size| async move {
    let dir = tempfile::tempdir().unwrap();
    let backend = DirectoryBackend::create(dir.path().join("chunks"), size, 65536).unwrap();
    Guarded::shared(backend, dir)
});
