//! Whole-buffer positional I/O on a file, shared by the file and directory
//! backends.
//!
//! `pread`/`pwrite` may transfer fewer bytes than asked (signals, large
//! requests) and may fail with `EINTR`; these helpers loop until the buffer is
//! done, the file ends, or a real error occurs.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Reads into `buf` at `offset` until it is full or the file ends; returns
/// how many bytes were read.
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes all of `data` at `offset`.
pub(crate) fn write_full_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        match file.write_at(&data[done..], offset + done as u64) {
            // A regular file only reports 0 for a non-empty buffer if it
            // cannot take more (e.g. a file size limit); looping would spin.
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "write stopped after {done} of {} bytes at offset {offset}",
                        data.len()
                    ),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Adds the path (and what was being done) to an I/O error so a failure in a
/// deep stack still says which file it was.
pub(crate) fn with_context(e: io::Error, what: std::fmt::Arguments<'_>) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
