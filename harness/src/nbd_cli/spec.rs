//! `NAME=BACKEND` export arguments: parsing them and opening their backends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use backends::{DirectoryBackend, FileBackend, MemoryBackend, SharedBackend};
use nbd::Export;

use super::size::{human_size, parse_size, SizeError};

/// The backend forms, for error messages and help.
const BACKEND_FORMS: &str =
    "backends are memory:SIZE, file:PATH (an existing file, served at its size) \
     or dir:PATH:SIZE:CHUNK (one file per chunk in directory PATH)";

/// One `NAME=BACKEND` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExportSpec {
    /// The export name.
    name: String,
    /// Where its bytes live.
    backend: BackendSpec,
    /// The argument as typed after `=`, used as the export's description.
    text: String,
}

/// The backend half of an [`ExportSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum BackendSpec {
    /// `memory:SIZE`.
    Memory { size: u64 },
    /// `file:PATH`.
    File { path: PathBuf },
    /// `dir:PATH:SIZE:CHUNK`.
    Directory {
        path: PathBuf,
        size: u64,
        chunk: u64,
    },
}

/// What is wrong with a backend spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BackendProblem {
    /// No `NAME=` before the backend.
    #[error("expected NAME=BACKEND")]
    NoName,
    /// `=BACKEND`.
    #[error("the export name is empty")]
    EmptyName,
    /// Not `memory:`, `file:` or `dir:`.
    #[error("unknown backend kind {kind:?}")]
    UnknownKind { kind: String },
    /// A kind without its arguments.
    #[error("{kind}: needs {needs}")]
    Missing {
        kind: &'static str,
        needs: &'static str,
    },
    /// A size that does not parse.
    #[error("{what}: {source}")]
    Size {
        what: &'static str,
        #[source]
        source: SizeError,
    },
    /// A zero size or chunk.
    #[error("{what} must be at least 1 byte")]
    Zero { what: &'static str },
}

/// An `NAME=BACKEND` argument that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad export {spec:?}: {problem}; {BACKEND_FORMS}")]
pub(super) struct SpecError {
    /// The argument as given.
    spec: String,
    /// What is wrong with it.
    problem: BackendProblem,
}

/// Parses `NAME=memory:SIZE`, `NAME=file:PATH` or `NAME=dir:PATH:SIZE:CHUNK`.
pub(super) fn parse_export_spec(spec: &str) -> Result<ExportSpec, SpecError> {
    let fail = |problem| SpecError {
        spec: spec.to_owned(),
        problem,
    };
    let (name, text) = spec
        .split_once('=')
        .ok_or_else(|| fail(BackendProblem::NoName))?;
    if name.is_empty() {
        return Err(fail(BackendProblem::EmptyName));
    }
    let size = |what: &'static str, text: &str| -> Result<u64, SpecError> {
        let n = parse_size(text).map_err(|source| fail(BackendProblem::Size { what, source }))?;
        if n == 0 {
            return Err(fail(BackendProblem::Zero { what }));
        }
        Ok(n)
    };
    let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
    let backend = match kind {
        "memory" if !rest.is_empty() => BackendSpec::Memory {
            size: size("memory size", rest)?,
        },
        "memory" => {
            return Err(fail(BackendProblem::Missing {
                kind: "memory",
                needs: "a size, as in memory:64M",
            }))
        }
        "file" if !rest.is_empty() => BackendSpec::File {
            path: PathBuf::from(rest),
        },
        "file" => {
            return Err(fail(BackendProblem::Missing {
                kind: "file",
                needs: "a path, as in file:./disk.img",
            }))
        }
        "dir" => {
            // From the right, so the path may hold colons.
            let mut parts = rest.rsplitn(3, ':');
            let (chunk, total, path) = (parts.next(), parts.next(), parts.next());
            let (Some(chunk), Some(total), Some(path)) = (chunk, total, path) else {
                return Err(fail(BackendProblem::Missing {
                    kind: "dir",
                    needs: "PATH:SIZE:CHUNK, as in dir:/tmp/chunks:4G:64K",
                }));
            };
            if path.is_empty() {
                return Err(fail(BackendProblem::Missing {
                    kind: "dir",
                    needs: "a directory path before SIZE:CHUNK",
                }));
            }
            BackendSpec::Directory {
                path: PathBuf::from(path),
                size: size("directory size", total)?,
                chunk: size("chunk size", chunk)?,
            }
        }
        _ => {
            return Err(fail(BackendProblem::UnknownKind {
                kind: kind.to_owned(),
            }))
        }
    };
    Ok(ExportSpec {
        name: name.to_owned(),
        backend,
        text: text.to_owned(),
    })
}

/// Physical memory, when the host says.
fn physical_memory() -> Option<u64> {
    use nix::unistd::{sysconf, SysconfVar};
    let pages = sysconf(SysconfVar::_PHYS_PAGES).ok()??;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok()??;
    u64::try_from(pages)
        .ok()?
        .checked_mul(u64::try_from(page).ok()?)
}

/// Opens the backend a spec names.
fn open_backend(spec: &BackendSpec) -> anyhow::Result<SharedBackend> {
    Ok(match spec {
        BackendSpec::Memory { size } => {
            // An allocation the host cannot back aborts the process instead of
            // failing, so refuse it while an error can still be reported.
            if let Some(ram) = physical_memory() {
                anyhow::ensure!(
                    *size <= ram,
                    "memory:{size} needs {} but this host has {} of RAM",
                    human_size(*size),
                    human_size(ram)
                );
            }
            Arc::new(MemoryBackend::new(*size))
        }
        BackendSpec::File { path } => Arc::new(FileBackend::open(path)?),
        BackendSpec::Directory { path, size, chunk } => {
            Arc::new(open_directory(path, *size, *chunk)?)
        }
    })
}

/// Creates a directory backend in a missing or empty directory, and
/// reattaches to one that holds chunk files, after checking that none of
/// them lies past the end (which would mean another SIZE or CHUNK made them).
fn open_directory(path: &Path, size: u64, chunk: u64) -> anyhow::Result<DirectoryBackend> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DirectoryBackend::create(path, size, chunk)?)
        }
        Err(e) => return Err(e).with_context(|| format!("listing directory {}", path.display())),
    };
    let chunks = size.div_ceil(chunk);
    let mut any = false;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing directory {}", path.display()))?;
        any = true;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".chunk"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        anyhow::ensure!(
            index < chunks,
            "directory {} holds chunk file {} but SIZE {size} with CHUNK {chunk} makes only {chunks} \
             chunks: was it written with another SIZE or CHUNK?",
            path.display(),
            name.to_string_lossy()
        );
    }
    Ok(if any {
        DirectoryBackend::open(path, size, chunk)?
    } else {
        DirectoryBackend::create(path, size, chunk)?
    })
}

/// Turns the arguments into exports, refusing duplicate names.
pub(super) fn build_exports(specs: &[ExportSpec], read_only: bool) -> anyhow::Result<Vec<Export>> {
    let mut exports: Vec<Export> = Vec::with_capacity(specs.len());
    for spec in specs {
        anyhow::ensure!(
            !exports.iter().any(|e| e.name == spec.name),
            "export name {:?} is given twice ({}={}); export names must be unique",
            spec.name,
            spec.name,
            spec.text
        );
        let backend = open_backend(&spec.backend)
            .with_context(|| format!("opening export {:?} ({})", spec.name, spec.text))?;
        exports.push(
            Export::new(spec.name.clone(), backend)
                .description(spec.text.clone())
                .read_only(read_only),
        );
    }
    Ok(exports)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input and a check of the problem it must be rejected with.
    type Case<P> = (&'static str, fn(&P) -> bool);

    #[test]
    fn export_specs_parse() {
        assert_eq!(
            parse_export_spec("disk=memory:64M"),
            Ok(ExportSpec {
                name: "disk".into(),
                backend: BackendSpec::Memory { size: 64 << 20 },
                text: "memory:64M".into(),
            })
        );
        assert_eq!(
            parse_export_spec("img=file:/a=b/c:d.img").unwrap().backend,
            BackendSpec::File {
                path: "/a=b/c:d.img".into()
            }
        );
        assert_eq!(
            parse_export_spec("c=dir:/tmp/a:b:4G:64K").unwrap().backend,
            BackendSpec::Directory {
                path: "/tmp/a:b".into(),
                size: 4 << 30,
                chunk: 64 << 10
            }
        );
    }

    #[test]
    fn bad_export_specs_name_the_spec_and_the_forms() {
        let cases: [Case<BackendProblem>; 11] = [
            ("disk", |p| *p == BackendProblem::NoName),
            ("=memory:1M", |p| *p == BackendProblem::EmptyName),
            (
                "d=floppy:3",
                |p| matches!(p, BackendProblem::UnknownKind { kind } if kind == "floppy"),
            ),
            ("d=memory", |p| {
                matches!(p, BackendProblem::Missing { kind: "memory", .. })
            }),
            ("d=memory:", |p| {
                matches!(p, BackendProblem::Missing { kind: "memory", .. })
            }),
            ("d=memory:lots", |p| {
                matches!(p, BackendProblem::Size { .. })
            }),
            ("d=memory:0", |p| matches!(p, BackendProblem::Zero { .. })),
            ("d=file", |p| {
                matches!(p, BackendProblem::Missing { kind: "file", .. })
            }),
            ("d=dir:/tmp/x:1M", |p| {
                matches!(p, BackendProblem::Missing { kind: "dir", .. })
            }),
            ("d=dir::1M:4K", |p| {
                matches!(p, BackendProblem::Missing { kind: "dir", .. })
            }),
            ("d=dir:/x:1M:0", |p| {
                *p == BackendProblem::Zero { what: "chunk size" }
            }),
        ];
        for (spec, expected) in cases {
            let err = parse_export_spec(spec).unwrap_err();
            assert!(expected(&err.problem), "{spec}: {:?}", err.problem);
            let msg = err.to_string();
            assert!(msg.contains(&format!("{spec:?}")), "{msg}");
            assert!(msg.contains("memory:SIZE") && msg.contains("dir:PATH:SIZE:CHUNK"));
        }
    }

    #[test]
    fn duplicate_export_names_are_refused() {
        let specs = [
            parse_export_spec("a=memory:4K").unwrap(),
            parse_export_spec("a=memory:8K").unwrap(),
        ];
        let msg = format!("{:#}", build_exports(&specs, false).unwrap_err());
        assert!(msg.contains("\"a\"") && msg.contains("unique"), "{msg}");
    }

    #[test]
    fn directory_backends_are_created_or_reattached() {
        use backends::Backend as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("chunks");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = open_directory(&dir, 64 << 10, 4096).unwrap();
        rt.block_on(first.write_at(b"kept", 8192)).unwrap();
        drop(first);
        let again = open_directory(&dir, 64 << 10, 4096).unwrap();
        let mut buf = [0u8; 4];
        rt.block_on(again.read_at(&mut buf, 8192)).unwrap();
        assert_eq!(&buf, b"kept");
        // Chunk 2 exists, so a size of two chunks cannot have made it.
        let msg = open_directory(&dir, 8192, 4096).unwrap_err().to_string();
        assert!(
            msg.contains("2.chunk") && msg.contains("another SIZE"),
            "{msg}"
        );
    }

    #[test]
    fn memory_beyond_the_host_is_refused() {
        let msg = format!(
            "{:#}",
            open_backend(&BackendSpec::Memory { size: u64::MAX }).unwrap_err()
        );
        assert!(msg.contains("RAM"), "{msg}");
    }
}
