//! sealdb's storage engine.
//!
//! A data directory holds:
//! - `catalog`: the root file (tables, their segments and keys, users and
//!   grants), encrypted and authenticated, replaced atomically;
//! - `log/*.wal`: the write-ahead log, one AES-256-GCM frame per record,
//!   fsynced before a commit is acknowledged, group-committed;
//! - `tables/<id>/*.parquet`: immutable segments, Parquet with modular
//!   encryption under a fresh data key each;
//! - `keystore/`: the local master key (see `sealdb-kms`).
//!
//! Keys: the master key (key provider) wraps a key-ring key, which wraps
//! the system key and every table key version; a table key version wraps
//! the data key of each segment and derives the key of each log file. The
//! key provider is called a fixed number of times at open, whatever the
//! number of tables.
//!
//! It does not depend on DataFusion: `sealdb-sql` reads segments through
//! DataFusion's Parquet scan with the decryption properties this crate
//! gives for each file.
#![forbid(unsafe_code)]

mod audit;
mod catalog;
mod error;
mod fuzzing;
mod inventory;
mod keygate;
mod salt;
mod segment;
mod store;
mod table;
mod txn;
mod verify;
mod wal;

pub use audit::{AUDIT_DIR, AuditEvent, AuditLog, AuditRecord};
pub use catalog::{CATALOG_FILE, Encryption, JobKind, JobMeta, JobState, SegmentMeta, TableKeyProvider};
pub use error::StorageError;
pub use inventory::{KeyRecord, TableSummary};
pub use keygate::{Closed, KeyGate, RefreshOutcome};
pub use segment::{Segment, TABLES_DIR};
pub use store::{
    DEFAULT_SPILL_BYTES, MasterKeyMove, RecoveryReport, RekeyOptions, Store, StoreOptions, move_master_key,
};
pub use table::{MemChunk, Table, TableData, rowids, stored_schema, without_deleted};
pub use txn::{Pending, Transaction};
pub use verify::{VerifyReport, verify, verify_with};
pub use wal::LOG_DIR;

/// What a data directory's catalog header says of its master key, read
/// without any key (for `sealdb kms info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKeyRecord {
    /// `local` or `kmip:GROUP`.
    pub provider: String,
    /// The master key's id at its provider.
    pub master_id: String,
    /// SHA-256 (hex) of the key ring as wrapped by the master key.
    pub wrapped_ring_sha256: String,
}

/// Reads [`MasterKeyRecord`] from the catalog in `dir`.
pub fn master_key_record(dir: &std::path::Path) -> Result<MasterKeyRecord, StorageError> {
    let (header, _, _) = catalog::read_header(&dir.join(CATALOG_FILE))?;
    Ok(MasterKeyRecord {
        provider: header.provider,
        master_id: header.master_id,
        wrapped_ring_sha256: sealdb_crypto::sha256(&header.wrapped_ring)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

/// Every key of the data directory `dir`'s hierarchy with the SHA-256 of
/// its wrapped form (never a key), read from the catalog with one call to
/// `provider` (it unwraps the key ring to read the encrypted catalog).
/// Changes nothing; safe while a server runs (the catalog is replaced
/// atomically).
pub fn key_inventory(
    dir: &std::path::Path,
    provider: &dyn sealdb_kms::KeyProvider,
) -> Result<Vec<KeyRecord>, StorageError> {
    let (header, body, _, _) = store::open_catalog(&dir.join(CATALOG_FILE), provider)?;
    Ok(inventory::key_records(&inventory::Published {
        header,
        tables: body.tables.into_iter().filter(|t| !t.unpublished).collect(),
        jobs: Vec::new(),
    }))
}

/// What `sealdb status` reads of a data directory without opening it:
/// safe while a server runs (every file read is replaced atomically or
/// only appended to).
#[derive(Debug)]
pub struct Inspection {
    /// Tables as of the last catalog write (rows in memory not counted).
    pub tables: Vec<TableSummary>,
    /// Rekey jobs.
    pub jobs: Vec<JobMeta>,
    /// Sections of upper layers (`access`: users and grants).
    pub sections: std::collections::BTreeMap<String, serde_json::Value>,
    /// The audit log's chain, checked (records are not kept).
    pub audit: audit::ChainEnd,
}

/// Reads [`Inspection`] from `dir` with one call to `provider`.
pub fn inspect(dir: &std::path::Path, provider: &dyn sealdb_kms::KeyProvider) -> Result<Inspection, StorageError> {
    let (_, body, (_, ring, _), system) = store::open_catalog(&dir.join(CATALOG_FILE), provider)?;
    let systems = store::system_keys(&ring, &system, &body)?;
    let audit = audit::check(dir, &systems)?;
    Ok(Inspection {
        tables: body
            .tables
            .iter()
            .filter(|t| !t.unpublished)
            .map(inventory::summary_from_catalog)
            .collect(),
        jobs: body.jobs,
        sections: body.sections,
        audit,
    })
}

/// Test hook for crash tests: in a debug build, the process ends here at
/// once, as `kill -9` would end it at this instant, when the environment
/// variable `SEALDB_CRASH_AT` names `point`. Release builds ignore it.
pub fn crash_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("SEALDB_CRASH_AT").is_ok_and(|v| v == point) {
        // No destructors, no shutdown: what is on disk is what a crash leaves.
        std::process::exit(137);
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// Entry points for benchmarks and fuzzing; not a stable API.
#[doc(hidden)]
pub mod internal {
    use sealdb_crypto::Key256;

    pub use crate::fuzzing::*;
    pub use crate::wal::{FrameKey, FrameKind, FrameSpec};

    /// The log files of `dir`, by name.
    pub fn log_files(dir: &std::path::Path) -> Vec<String> {
        crate::wal::list_log_files(dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(seq, _)| crate::wal::log_file_name(seq))
            .collect()
    }

    /// Rewrites the audit log of `dir` with `edit` applied to its records,
    /// every record sealed correctly: what someone holding the master key
    /// could do. Tests check that `verify` still finds the change.
    pub fn rewrite_audit_log(
        dir: &std::path::Path,
        provider: &dyn sealdb_kms::KeyProvider,
        edit: impl FnOnce(&mut Vec<crate::AuditRecord>),
    ) -> Result<(), crate::StorageError> {
        let (_, _, _, system) = crate::store::open_catalog(&dir.join(crate::CATALOG_FILE), provider)?;
        crate::audit::rewrite_for_test(dir, &system, edit)
    }

    /// The plaintext JSON of the catalog of `dir`: for tests and fuzz
    /// seeds only (it holds wrapped keys and password verifiers, never a
    /// key in the clear).
    pub fn catalog_body_json(
        dir: &std::path::Path,
        provider: &dyn sealdb_kms::KeyProvider,
    ) -> Result<Vec<u8>, crate::StorageError> {
        let (_, body, _, _) = crate::store::open_catalog(&dir.join(crate::CATALOG_FILE), provider)?;
        serde_json::to_vec(&body).map_err(|e| crate::StorageError::Internal(format!("catalog encoding: {e}")))
    }

    /// Seals `frames` as one log file's frames, exactly as the log writer
    /// does, into `out` (cleared first).
    pub fn seal_log_frames(
        system: &Key256,
        frames: &[FrameSpec],
        out: &mut Vec<u8>,
    ) -> Result<(), crate::StorageError> {
        out.clear();
        let mut keys = std::collections::HashMap::new();
        let file = crate::wal::FileId::for_benchmarks(1);
        for (i, frame) in frames.iter().enumerate() {
            crate::wal::seal_frame(&mut keys, system, file, out, i as u64 + 1, frame, true)?;
        }
        Ok(())
    }
}

/// The internal row-id column every stored batch ends with.
pub const ROWID_COLUMN: &str = "__sealdb_rowid";
