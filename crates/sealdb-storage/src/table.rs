//! A table's in-memory state: committed data as an immutable snapshot,
//! swapped atomically by commits, flushes and compactions.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use arrow::array::{Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use roaring::RoaringTreemap;
use sealdb_crypto::Key256;

use crate::catalog::{Encryption, SegmentMeta};
use crate::segment::{self, Segment};
use crate::{ROWID_COLUMN, StorageError};

/// Rows committed since the last flush, as they were logged.
#[derive(Debug)]
pub struct MemChunk {
    /// Rows with the row-id column last.
    pub batch: RecordBatch,
    /// The commit's log sequence number.
    pub lsn: u64,
}

/// What a reader sees of a table: committed rows only.
#[derive(Debug, Default)]
pub struct TableData {
    /// Rows not yet flushed.
    pub chunks: Vec<Arc<MemChunk>>,
    /// Segment files.
    pub segments: Vec<Arc<Segment>>,
    /// Deleted row ids.
    pub deleted: Arc<RoaringTreemap>,
}

impl TableData {
    /// Bytes of segment files.
    pub fn bytes_on_disk(&self) -> u64 {
        self.segments.iter().map(|s| s.meta.bytes).sum()
    }

    /// Rows stored (in memory and in segments) less those deleted: an
    /// estimate for planning and `sys.tables`.
    pub fn live_rows(&self) -> u64 {
        let in_memory: u64 = self.chunks.iter().map(|c| c.batch.num_rows() as u64).sum();
        let in_segments: u64 = self.segments.iter().map(|s| s.meta.rows).sum();
        (in_memory + in_segments).saturating_sub(self.deleted.len())
    }
}

/// One table.
#[derive(Debug)]
pub struct Table {
    pub(crate) id: u64,
    pub(crate) name: String,
    schema: SchemaRef,
    stored_schema: SchemaRef,
    /// Whether new segments are encrypted (`ALTER TABLE t SET (encryption
    /// = ...)` changes it; older segments say for themselves).
    encrypted: std::sync::atomic::AtomicBool,
    /// Unwrapped table key versions, oldest first.
    pub(crate) keys: Mutex<Vec<(u32, Arc<Key256>)>>,
    pub(crate) data: ArcSwap<TableData>,
    /// Serializes changes of `data`.
    pub(crate) apply: Mutex<()>,
    /// Held by the transaction writing the table, until it ends.
    pub(crate) write_lock: Arc<tokio::sync::Mutex<()>>,
    pub(crate) next_rowid: AtomicU64,
    /// Set by DROP TABLE (under the write lock): writers holding an old
    /// handle are refused instead of writing into a table that is gone.
    pub(crate) dropped: std::sync::atomic::AtomicBool,
    data_keys: Mutex<HashMap<u64, Arc<Key256>>>,
    /// Segments whose length and magic (or SHA-256, unencrypted) this process checked.
    checked: Mutex<std::collections::HashSet<u64>>,
    /// Closed when the table's own key (on a key server) is destroyed or
    /// unconfirmed too long; always open for keys wrapped by the key ring.
    pub(crate) key_gate: crate::KeyGate,
}

impl Table {
    pub(crate) fn new(id: u64, name: String, schema: Schema, encryption: Encryption, next_rowid: u64) -> Self {
        let schema = Arc::new(schema);
        let stored_schema = stored_schema(&schema);
        Self {
            id,
            name,
            schema,
            stored_schema,
            encrypted: std::sync::atomic::AtomicBool::new(encryption == Encryption::Aes256Gcm),
            keys: Mutex::new(Vec::new()),
            data: ArcSwap::from_pointee(TableData::default()),
            apply: Mutex::new(()),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            next_rowid: AtomicU64::new(next_rowid),
            dropped: std::sync::atomic::AtomicBool::new(false),
            data_keys: Mutex::new(HashMap::new()),
            checked: Mutex::new(std::collections::HashSet::new()),
            key_gate: crate::KeyGate::default(),
        }
    }

    /// Its id, unique and never reused.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `schema.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether statements may use this table's own key (see [`crate::KeyGate`]).
    pub fn check_keys(&self) -> Result<(), StorageError> {
        self.key_gate.check(&self.name)
    }

    /// Its columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Its columns and the row id last, as stored.
    pub fn stored_schema(&self) -> &SchemaRef {
        &self.stored_schema
    }

    /// How its segments are encrypted.
    pub fn encryption(&self) -> Encryption {
        if self.encrypted.load(std::sync::atomic::Ordering::Acquire) {
            Encryption::Aes256Gcm
        } else {
            Encryption::None
        }
    }

    pub(crate) fn set_encryption(&self, encryption: Encryption) {
        self.encrypted.store(
            encryption == Encryption::Aes256Gcm,
            std::sync::atomic::Ordering::Release,
        );
    }

    /// Whether `segment` is stored otherwise than new segments would be:
    /// under an older key version, or encrypted when the table is not (or
    /// the reverse). `ALTER TABLE t REKEY` rewrites these.
    pub fn is_stale(&self, segment: &Segment) -> bool {
        match self.encryption() {
            Encryption::None => segment.meta.key_version != 0,
            Encryption::Aes256Gcm => segment.meta.key_version != self.key_version(),
        }
    }

    /// The committed data now.
    pub fn snapshot(&self) -> Arc<TableData> {
        self.data.load_full()
    }

    /// The current table key version.
    pub fn key_version(&self) -> u32 {
        lock(&self.keys).last().map(|(v, _)| *v).unwrap_or(0)
    }

    /// The current table key version, which new log records and segments use.
    pub(crate) fn writing_key(&self) -> Result<(u32, Arc<Key256>), StorageError> {
        lock(&self.keys)
            .last()
            .cloned()
            .ok_or_else(|| StorageError::KeyDestroyed {
                key: format!("table key of {}", self.name),
                detail: "no key to write with".into(),
            })
    }

    pub(crate) fn key(&self, version: u32) -> Option<Arc<Key256>> {
        lock(&self.keys)
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, k)| k.clone())
    }

    /// How a query opens `segment`: the Parquet decryption properties for an
    /// encrypted one (its data key is unwrapped once and cached in memory),
    /// or `None` for an unencrypted one, whose bytes are checked against the
    /// catalog's SHA-256 the first time this process opens it.
    pub fn open_segment(
        &self,
        segment: &Segment,
    ) -> Result<Option<Arc<parquet::encryption::decrypt::FileDecryptionProperties>>, StorageError> {
        if !lock(&self.checked).contains(&segment.meta.id) {
            segment::check_first_open(&segment.path, &segment.display, &segment.meta)?;
            lock(&self.checked).insert(segment.meta.id);
        }
        if segment.meta.key_version == 0 {
            return Ok(None);
        }
        let key = self.data_key(segment)?;
        Ok(Some(segment::decryption_properties(self.id, &segment.meta, &key)?))
    }

    pub(crate) fn data_key(&self, segment: &Segment) -> Result<Arc<Key256>, StorageError> {
        if let Some(k) = lock(&self.data_keys).get(&segment.meta.id) {
            return Ok(k.clone());
        }
        let tk = self
            .key(segment.meta.key_version)
            .ok_or_else(|| StorageError::KeyDestroyed {
                key: format!("table key {} version {}", self.name, segment.meta.key_version),
                detail: format!("{} cannot be read", segment.display),
            })?;
        let key = Arc::new(segment::unwrap_data_key(self.id, &segment.meta, &tk)?);
        lock(&self.data_keys).insert(segment.meta.id, key.clone());
        Ok(key)
    }

    pub(crate) fn forget_keys(&self) {
        lock(&self.keys).clear();
        lock(&self.data_keys).clear();
    }

    /// Applies committed changes to the snapshot readers see.
    pub(crate) fn apply(&self, inserts: Vec<Arc<MemChunk>>, deleted: Option<RoaringTreemap>) {
        let _guard = lock(&self.apply);
        let current = self.data.load_full();
        let mut chunks = current.chunks.clone();
        chunks.extend(inserts);
        let deleted = match deleted {
            Some(d) if !d.is_empty() => Arc::new(&*current.deleted | &d),
            _ => current.deleted.clone(),
        };
        self.data.store(Arc::new(TableData {
            chunks,
            segments: current.segments.clone(),
            deleted,
        }));
    }

    /// Replaces flushed chunks and merged segments by new segments.
    pub(crate) fn install(
        &self,
        flushed: &[Arc<MemChunk>],
        replaced: &[Arc<Segment>],
        added: Vec<Arc<Segment>>,
        forget_deleted: Option<&RoaringTreemap>,
    ) {
        let _guard = lock(&self.apply);
        let current = self.data.load_full();
        let chunks = current
            .chunks
            .iter()
            .filter(|c| !flushed.iter().any(|f| Arc::ptr_eq(f, c)))
            .cloned()
            .collect();
        let mut segments: Vec<Arc<Segment>> = current
            .segments
            .iter()
            .filter(|s| !replaced.iter().any(|r| Arc::ptr_eq(r, s)))
            .cloned()
            .collect();
        segments.extend(added);
        let deleted = match forget_deleted {
            Some(gone) if !gone.is_empty() => Arc::new(&*current.deleted - gone),
            _ => current.deleted.clone(),
        };
        self.data.store(Arc::new(TableData {
            chunks,
            segments,
            deleted,
        }));
    }

    pub(crate) fn segment_metas(&self) -> Vec<SegmentMeta> {
        self.data.load().segments.iter().map(|s| s.meta.clone()).collect()
    }
}

/// The row ids of a stored batch.
pub fn rowids(batch: &RecordBatch) -> Option<&UInt64Array> {
    batch
        .column_by_name(ROWID_COLUMN)?
        .as_any()
        .downcast_ref::<UInt64Array>()
}

/// `schema` with the row-id column appended.
pub fn stored_schema(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(ROWID_COLUMN, DataType::UInt64, false)));
    Arc::new(Schema::new(fields))
}

/// Keeps the rows of `batch` whose row id is not in `deleted`.
pub fn without_deleted(batch: &RecordBatch, deleted: &RoaringTreemap) -> Result<RecordBatch, StorageError> {
    let Some(ids) = rowids(batch) else {
        return Ok(batch.clone());
    };
    if deleted.is_empty() || ids.is_empty() {
        return Ok(batch.clone());
    }
    let keep: arrow::array::BooleanArray = ids.values().iter().map(|id| Some(!deleted.contains(*id))).collect();
    arrow::compute::filter_record_batch(batch, &keep)
        .map_err(|e| StorageError::Internal(format!("filtering rows: {e}")))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every holder leaves the data whole (changes are swapped in whole), so
    // a panic elsewhere does not make it unusable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
