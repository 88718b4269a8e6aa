//! The `sqlite` workload: a real application's access pattern on the region.
//!
//! The source region holds a SQLite database (a table of rows with blobs
//! and an index on a random key), padded with the seeded pattern to the
//! region's size. The destination opens the database where it lies, in the
//! mapped region, with `sqlite3_deserialize` in read-only mode: SQLite's
//! in-memory VFS reads the caller's buffer in place, so every page the
//! query engine touches is a read of the region (a fault under `uffd`, a
//! FUSE or NBD read under the mounts). It then runs seeded lookups through
//! the index, each one an access of the workload, and hashes the rows it
//! got: the same lookups on the source's bytes must give the same hash.
//!
//! The in-memory VFS rather than a file path: the region is memory in every
//! implementation, while a path exists only for the mounts (and a kernel
//! NBD device reports size 0 to `stat`, which SQLite takes for empty).

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rusqlite::{ffi, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::workload::{timed_accesses, WorkloadOutcome};

/// The share of the region the database fills; the rest is the seeded
/// pattern, which SQLite never reads.
const FILL: f64 = 0.85;
/// Bytes of one row's blob, drawn uniformly.
const BLOB_BYTES: std::ops::RangeInclusive<usize> = 200..=800;
/// SQLite's page size here (its default).
const PAGE_BYTES: u64 = 4096;
/// The smallest region that holds a useful database.
pub const MIN_REGION_BYTES: u64 = 256 * 1024;
/// One lookup per this many access slots of the region: with 4 KiB
/// accesses, 1024 lookups in 64 MiB, which touch a working set of some
/// thousands of pages, as an application's queries do, not the whole file.
pub const SLOTS_PER_LOOKUP: u64 = 16;
/// How often the query loop samples which CPU it runs on.
const CPU_SAMPLE_EVERY: usize = 16;

const LOOKUP: &str = "SELECT id, v FROM items WHERE k >= ?1 ORDER BY k LIMIT 1";

/// Why the database could not be built, opened or queried.
#[derive(Debug, thiserror::Error)]
pub enum SqliteAppError {
    #[error("the sqlite workload needs a region of at least {MIN_REGION_BYTES} bytes, not {0}")]
    RegionTooSmall(u64),
    #[error("building the database: {0}")]
    Build(#[source] rusqlite::Error),
    #[error("the database of {db} bytes does not fit the region of {region} bytes")]
    Overflow { db: u64, region: u64 },
    #[error("the region does not hold a SQLite database: {0}")]
    Header(String),
    #[error("opening the database in the region: {0}")]
    Open(String),
    #[error("lookup {index} (key {key}): {source}")]
    Query {
        index: usize,
        key: u64,
        #[source]
        source: rusqlite::Error,
    },
}

/// A region of `size` bytes holding a SQLite database made from `seed`,
/// then the seeded pattern. The same arguments give the same bytes in any
/// process (the remote backend role rebuilds it and both sides compare
/// SHA-256s).
pub fn build_image(size: u64, seed: u64) -> Result<Vec<u8>, SqliteAppError> {
    if size < MIN_REGION_BYTES {
        return Err(SqliteAppError::RegionTooSmall(size));
    }
    let mut conn = Connection::open_in_memory().map_err(SqliteAppError::Build)?;
    conn.execute_batch(
        "PRAGMA page_size = 4096;
         CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB NOT NULL);
         CREATE INDEX items_k ON items (k);
         BEGIN;",
    )
    .map_err(SqliteAppError::Build)?;
    let target_pages = (size as f64 * FILL) as u64 / PAGE_BYTES;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut blob = vec![0u8; *BLOB_BYTES.end()];
    {
        let mut insert = conn
            .prepare("INSERT INTO items (id, k, v) VALUES (?1, ?2, ?3)")
            .map_err(SqliteAppError::Build)?;
        let mut id: i64 = 0;
        loop {
            // Checking the size every 64 rows overshoots by a few pages
            // at most, which FILL leaves room for.
            if id % 64 == 0 && page_count(&conn)? >= target_pages {
                break;
            }
            let len = rng.random_range(BLOB_BYTES);
            rng.fill(&mut blob[..len]);
            let key = i64::from(rng.random::<u32>());
            insert
                .execute(rusqlite::params![id, key, &blob[..len]])
                .map_err(SqliteAppError::Build)?;
            id += 1;
        }
    }
    conn.execute_batch("COMMIT;")
        .map_err(SqliteAppError::Build)?;
    let db = conn.serialize("main").map_err(SqliteAppError::Build)?;
    let db_len = db.len() as u64;
    if db_len > size {
        return Err(SqliteAppError::Overflow {
            db: db_len,
            region: size,
        });
    }
    let mut image = vec![0u8; size as usize];
    image[..db.len()].copy_from_slice(&db);
    crate::workload::fill_pattern(&mut image[db.len()..], seed);
    Ok(image)
}

fn page_count(conn: &Connection) -> Result<u64, SqliteAppError> {
    conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
        .map_err(SqliteAppError::Build)
}

/// The lookups of a cell: `count` seeded keys in the key space of the
/// rows (`0..2^32`).
pub fn lookup_keys(count: u64, seed: u64) -> Vec<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count).map(|_| u64::from(rng.random::<u32>())).collect()
}

/// The database's length from its header (page size x page count).
pub fn database_bytes(region: &[u8]) -> Result<u64, SqliteAppError> {
    let header = region
        .get(..100)
        .ok_or_else(|| SqliteAppError::Header(format!("{} bytes is no header", region.len())))?;
    if &header[..16] != b"SQLite format 3\0" {
        return Err(SqliteAppError::Header("no `SQLite format 3` magic".into()));
    }
    let page = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        p if p >= 512 && p.is_power_of_two() => u64::from(p),
        p => return Err(SqliteAppError::Header(format!("page size {p}"))),
    };
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    // The page count is only valid when the change counter matches the
    // version it was written at; SQLite writes both when it commits.
    if be32(24) != be32(92) {
        return Err(SqliteAppError::Header(
            "the in-header page count is stale".into(),
        ));
    }
    let bytes = page * u64::from(be32(28));
    if bytes == 0 || bytes > region.len() as u64 {
        return Err(SqliteAppError::Header(format!(
            "{bytes} bytes of database in a region of {}",
            region.len()
        )));
    }
    Ok(bytes)
}

/// A read-only connection to the database in `region`, reading it in place.
struct InPlace<'region> {
    conn: Connection,
    _region: std::marker::PhantomData<&'region [u8]>,
}

impl<'region> InPlace<'region> {
    fn open(region: &'region [u8]) -> Result<Self, SqliteAppError> {
        let db_bytes = database_bytes(region)?;
        let conn = Connection::open_in_memory().map_err(|e| SqliteAppError::Open(e.to_string()))?;
        let size = db_bytes as i64;
        // SAFETY: `conn` is a live connection. With READONLY and without
        // FREEONCLOSE, SQLite reads `region` in place, never writes to it,
        // never frees it, and stops using it when the connection closes;
        // the connection is dropped with `Self`, which cannot outlive
        // `'region`. The pointer is `*mut` only in the C signature.
        let rc = unsafe {
            ffi::sqlite3_deserialize(
                conn.handle(),
                c"main".as_ptr(),
                region.as_ptr().cast_mut(),
                size,
                size,
                ffi::SQLITE_DESERIALIZE_READONLY as _,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(SqliteAppError::Open(format!(
                "sqlite3_deserialize returned {rc} ({})",
                ffi::code_to_str(rc)
            )));
        }
        Ok(Self {
            conn,
            _region: std::marker::PhantomData,
        })
    }
}

/// What the lookups did, and the hash of what they found.
#[derive(Debug)]
pub struct QueryOutcome {
    /// `accesses` are lookups; `bytes_read` the blob bytes they returned;
    /// `first_access` is the time to useful work: from opening the
    /// database to the first answer.
    pub workload: WorkloadOutcome,
    /// SHA-256 over every answer, in order (hex).
    pub answers_sha256: String,
}

/// Opens the database in `region` and runs `keys` as lookups until done
/// or `deadline`.
pub fn run_lookups(
    region: &[u8],
    keys: &[u64],
    deadline: Instant,
) -> Result<QueryOutcome, SqliteAppError> {
    let start = Instant::now();
    let db = InPlace::open(region)?;
    let mut lookup = db
        .conn
        .prepare(LOOKUP)
        .map_err(|e| SqliteAppError::Open(e.to_string()))?;
    let mut answers = Sha256::new();
    let mut bytes_read = 0u64;
    let mut index = 0;
    let opened = start.elapsed();
    let timed = timed_accesses(keys, deadline, CPU_SAMPLE_EVERY, |key| {
        let row = lookup
            .query_row([key as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()
            .map_err(|source| SqliteAppError::Query { index, key, source })?;
        index += 1;
        match &row {
            Some((id, blob)) => {
                answers.update(id.to_le_bytes());
                answers.update((blob.len() as u64).to_le_bytes());
                answers.update(blob);
                bytes_read += blob.len() as u64;
            }
            // Past the largest key: an answer too, and a distinct one.
            None => answers.update(u64::MAX.to_le_bytes()),
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();
    drop(lookup);
    drop(db);
    Ok(QueryOutcome {
        workload: WorkloadOutcome {
            accesses: timed.done,
            bytes_read,
            bytes_written: 0,
            elapsed,
            flush: None,
            // The time to useful work: opening the database counts.
            first_access: timed.first_access.map(|first| opened + first),
            latency: timed.latency,
            truncated: timed.truncated,
            cpus: timed.cpus,
        },
        answers_sha256: crate::source::hex(&answers.finalize()),
    })
}

/// The answers the source's bytes give to the first `done` of `keys`: what
/// the destination's must equal.
pub fn expected_answers(source: &[u8], keys: &[u64]) -> Result<String, SqliteAppError> {
    let far = Instant::now() + Duration::from_secs(86_400);
    run_lookups(source, keys, far).map(|o| o.answers_sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    #[test]
    fn the_image_is_a_database_filling_most_of_the_region_and_reproducible() {
        let size = 2 << 20;
        let image = build_image(size, 5).unwrap();
        assert_eq!(image.len() as u64, size);
        let db = database_bytes(&image).unwrap();
        assert!(db <= size && db as f64 >= size as f64 * 0.8, "{db}");
        assert_eq!(image, build_image(size, 5).unwrap());
        assert_ne!(image, build_image(size, 6).unwrap());
    }

    #[test]
    fn lookups_find_rows_and_answer_the_same_on_equal_bytes() {
        let image = build_image(1 << 20, 1).unwrap();
        let keys = lookup_keys(50, 2);
        let outcome = run_lookups(&image, &keys, far()).unwrap();
        assert_eq!(outcome.workload.accesses, 50);
        assert!(!outcome.workload.truncated);
        assert!(outcome.workload.bytes_read >= 50 * *BLOB_BYTES.start() as u64 / 2);
        assert!(outcome.workload.first_access.is_some());
        let copy = image.clone();
        assert_eq!(
            outcome.answers_sha256,
            expected_answers(&copy, &keys).unwrap()
        );
    }

    #[test]
    fn a_changed_row_changes_the_answers() {
        let image = build_image(1 << 20, 1).unwrap();
        let db = database_bytes(&image).unwrap() as usize;
        let keys = lookup_keys(400, 3);
        let good = expected_answers(&image, &keys).unwrap();
        // Flip one byte in every page past the schema: blobs are most of
        // each page, so some answer must differ (or the page be refused
        // as corrupt, which is an error, not a silent pass).
        let mut bad = image.clone();
        for page in (2 * PAGE_BYTES as usize..db).step_by(PAGE_BYTES as usize) {
            bad[page + PAGE_BYTES as usize - 7] ^= 0x5a;
        }
        match expected_answers(&bad, &keys) {
            Ok(answers) => assert_ne!(answers, good),
            Err(SqliteAppError::Query { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    #[test]
    fn garbage_and_short_regions_are_refused_by_name() {
        assert!(matches!(
            build_image(4096, 1),
            Err(SqliteAppError::RegionTooSmall(4096))
        ));
        let garbage = vec![0xa5u8; 1 << 16];
        let err = run_lookups(&garbage, &[1], far()).unwrap_err();
        assert!(err.to_string().contains("SQLite"), "{err}");
        let mut truncated = build_image(1 << 20, 1).unwrap();
        truncated.truncate(8192);
        let err = database_bytes(&truncated).unwrap_err();
        assert!(err.to_string().contains("bytes of database"), "{err}");
        assert!(database_bytes(&[0u8; 10]).is_err());
    }

    #[test]
    fn an_expired_deadline_truncates_before_the_first_lookup() {
        let image = build_image(1 << 20, 1).unwrap();
        let outcome = run_lookups(&image, &lookup_keys(10, 1), Instant::now()).unwrap();
        assert!(outcome.workload.truncated);
        assert_eq!(outcome.workload.accesses, 0);
    }
}
