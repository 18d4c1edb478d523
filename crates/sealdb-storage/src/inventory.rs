//! What the store tells about its tables and keys, for `sys.tables` and
//! `sys.encryption_keys`: never a key, only wrapped-key checksums.

use std::sync::Arc;

use sealdb_crypto::sha256;

use crate::catalog::{CatalogHeader, TableMeta};
use crate::{Encryption, Table};

/// The catalog as last written, kept for readers that must not wait for
/// a catalog change in progress.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub(crate) header: CatalogHeader,
    pub(crate) tables: Vec<TableMeta>,
    pub(crate) jobs: Vec<crate::catalog::JobMeta>,
}

/// One key of the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// `master`, `key ring`, `system` or `table NAME`.
    pub scope: String,
    /// The master key's id at its provider; for others `SCOPE/vVERSION`.
    pub id: String,
    /// `local` or `kmip:GROUP`: the provider of the master key that
    /// (directly or through the key ring) protects this key.
    pub provider: String,
    /// 1, 2, ...
    pub version: u32,
    /// `active` (used for new data) or `deactivated` (read only).
    pub state: &'static str,
    /// Creation time, Unix seconds, when the catalog records it.
    pub created_unix: Option<u64>,
    /// SHA-256 of the wrapped key as stored, hex; `None` for the master
    /// key, which never leaves its provider.
    pub wrapped_sha256: Option<String>,
}

/// One table, as `sys.tables` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSummary {
    /// Name.
    pub name: String,
    /// Encryption of its segments.
    pub encryption: Encryption,
    /// Current table-key version.
    pub key_version: u32,
    /// When that version was created, Unix seconds.
    pub key_created_unix: u64,
    /// Creation time, Unix seconds.
    pub created_unix: u64,
    /// Rows, less deleted ones (an estimate while deletions are pending).
    pub rows: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes of its segment files.
    pub bytes_on_disk: u64,
    /// Bytes of rows not yet flushed to a segment (held in memory and in
    /// the log).
    pub bytes_in_memory: u64,
    /// Share of segment bytes whose data keys are wrapped by the current
    /// table-key version (1 when there are none).
    pub current_key_share: f64,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn key_records(published: &Published) -> Vec<KeyRecord> {
    let header = &published.header;
    let provider = header.provider.clone();
    let mut out = vec![
        KeyRecord {
            scope: "master".into(),
            id: header.master_id.clone(),
            provider: provider.clone(),
            version: 1,
            state: "active",
            created_unix: None,
            wrapped_sha256: None,
        },
        KeyRecord {
            scope: "key ring".into(),
            id: "key-ring/v1".into(),
            provider: provider.clone(),
            version: 1,
            state: "active",
            created_unix: None,
            wrapped_sha256: Some(hex(&sha256(&header.wrapped_ring))),
        },
        KeyRecord {
            scope: "system".into(),
            id: "system/v1".into(),
            provider: provider.clone(),
            version: 1,
            state: "active",
            created_unix: None,
            wrapped_sha256: Some(hex(&sha256(&header.wrapped_system))),
        },
    ];
    for table in &published.tables {
        let current = table.keys.last().map(|k| k.version);
        let table_provider = table
            .key_provider
            .as_ref()
            .map_or_else(|| provider.clone(), |kp| kp.provider.clone());
        // A table whose keys live on a key server: the key there that
        // wraps its versions (by its id on the server).
        if let (Some(kp), Some(last)) = (&table.key_provider, table.keys.last())
            && let Some(kek) = &last.kek
        {
            out.push(KeyRecord {
                scope: format!("table {} key-encryption key ({})", table.name, kp.namespace),
                id: kek.clone(),
                provider: kp.provider.clone(),
                version: 1,
                state: "active",
                created_unix: Some(last.created_unix),
                wrapped_sha256: None,
            });
        }
        for key in &table.keys {
            out.push(KeyRecord {
                scope: format!("table {}", table.name),
                id: format!("table/{}/v{}", table.id, key.version),
                provider: table_provider.clone(),
                version: key.version,
                state: if Some(key.version) == current {
                    "active"
                } else {
                    "deactivated"
                },
                created_unix: Some(key.created_unix),
                wrapped_sha256: Some(hex(&sha256(&key.wrapped))),
            });
        }
    }
    out
}

pub(crate) fn table_summary(meta: &TableMeta, table: &Arc<Table>) -> TableSummary {
    let data = table.snapshot();
    let key_version = table.key_version();
    let bytes_on_disk = data.bytes_on_disk();
    let current: u64 = data
        .segments
        .iter()
        .filter(|s| !table.is_stale(s))
        .map(|s| s.meta.bytes)
        .sum();
    TableSummary {
        name: meta.name.clone(),
        encryption: table.encryption(),
        key_version,
        key_created_unix: meta.keys.last().map(|k| k.created_unix).unwrap_or(meta.created_unix),
        created_unix: meta.created_unix,
        rows: data.live_rows(),
        segments: data.segments.len(),
        bytes_on_disk,
        bytes_in_memory: data.chunks.iter().map(|c| c.batch.get_array_memory_size() as u64).sum(),
        current_key_share: if bytes_on_disk == 0 {
            1.0
        } else {
            current as f64 / bytes_on_disk as f64
        },
    }
}

/// A table's summary from its catalog entry alone (no rows in memory
/// counted): for `sealdb status` on a directory it does not open.
pub(crate) fn summary_from_catalog(meta: &TableMeta) -> TableSummary {
    let key_version = meta.keys.last().map(|k| k.version).unwrap_or(0);
    let bytes_on_disk: u64 = meta.segments.iter().map(|s| s.bytes).sum();
    let current: u64 = meta
        .segments
        .iter()
        .filter(|s| match meta.encryption {
            Encryption::None => s.key_version == 0,
            Encryption::Aes256Gcm => s.key_version == key_version,
        })
        .map(|s| s.bytes)
        .sum();
    let deleted = crate::store::deleted_rows(meta).map(|d| d.len()).unwrap_or(0);
    TableSummary {
        name: meta.name.clone(),
        encryption: meta.encryption,
        key_version,
        key_created_unix: meta.keys.last().map(|k| k.created_unix).unwrap_or(meta.created_unix),
        created_unix: meta.created_unix,
        rows: meta
            .segments
            .iter()
            .map(|s| s.rows)
            .sum::<u64>()
            .saturating_sub(deleted),
        segments: meta.segments.len(),
        bytes_on_disk,
        bytes_in_memory: 0,
        current_key_share: if bytes_on_disk == 0 {
            1.0
        } else {
            current as f64 / bytes_on_disk as f64
        },
    }
}
