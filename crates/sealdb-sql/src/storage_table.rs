//! The storage engine's tables as DataFusion tables.
//!
//! - [`SealTable`] is the [`TableProvider`] of one [`Table`]: a scan is the
//!   union of the rows in memory (committed chunks and the session
//!   transaction's own pending inserts) and of the Parquet segments, read
//!   through DataFusion's Parquet scan and decrypted with the keys
//!   [`SegmentKeys`] hands out for each file. Deleted rows (committed, by the
//!   session's transaction, or below its `TRUNCATE`) are left out.
//! - The session's open transaction lives in [`TxSlot`], a session config
//!   extension. `INSERT` adds to it through [`SealTable::insert_into`];
//!   `DELETE`, `UPDATE` and `TRUNCATE` go through [`delete_or_update`]. None
//!   of them commits: the caller commits (autocommit) or keeps the
//!   transaction open (`BEGIN` block).
//!
//! `DELETE` and `UPDATE` are planned by DataFusion and then rewritten to read
//! the target table with its row ids ([`SealTable::with_rowid`]): the
//! statement's own plan, subqueries included, picks the rows, and their ids
//! are what gets deleted. (DataFusion's `delete_from` hook only receives the
//! `WHERE` as filter expressions and does not evaluate subqueries.)

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ColumnStatistics, DFSchema, ScalarValue, Statistics};
use datafusion::config::{ConfigOptions, EncryptionFactoryOptions, TableParquetOptions};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::DefaultParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableType, provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::parquet_encryption::EncryptionFactory;
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::expr_rewriter::unnormalize_cols;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    DmlStatement, Expr, LogicalPlan, Projection, TableProviderFilterPushDown, TableScan, TableScanBuilder, TableSource,
    WriteOp,
};
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::encryption::decrypt::FileDecryptionProperties;
use datafusion::parquet::encryption::encrypt::FileEncryptionProperties;
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::metadata::PageIndexPolicy;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{FilterDescription, FilterPushdownPhase};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
    execute_stream,
};
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use roaring::RoaringTreemap;
use sealdb_storage::{KeyGate, Pending, ROWID_COLUMN, Segment, StorageError, Store, Table, Transaction};

/// What can go wrong between DataFusion and the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageTableError {
    /// The storage engine failed; it names the file or table concerned.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The session was set up without a [`TxSlot`] (a bug).
    #[error("internal error: the session has no transaction slot")]
    NoTxSlot,
    /// A statement targets a table that is not a [`SealTable`].
    #[error("\"{0}\" is not a table of the storage engine")]
    NotSealTable(String),
    /// A segment was opened that no running scan registered (a bug).
    #[error("internal error: segment {0} is not being read by any query")]
    UnknownSegment(String),
    /// A segment path the local object store cannot address.
    #[error("segment path {0} cannot be read through the local object store")]
    BadPath(String),
    /// A row gives NULL for a NOT NULL column.
    #[error("null value in column \"{column}\" of relation \"{table}\" violates not-null constraint")]
    NotNull {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// Rows do not have the table's columns (a planning bug).
    #[error("rows do not match table \"{table}\": {detail}")]
    Shape {
        /// The table.
        table: String,
        /// The mismatch.
        detail: String,
    },
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StorageTableError> for DataFusionError {
    fn from(e: StorageTableError) -> Self {
        match e {
            // The storage error itself, so callers can downcast to it.
            StorageTableError::Storage(s) => DataFusionError::External(Box::new(s)),
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

fn storage(e: StorageError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

// ---------------------------------------------------------------------------
// The session's transaction.

/// The session's open transaction, if any: a session config extension
/// (`SessionConfig::with_extension(Arc::new(TxSlot::default()))`).
///
/// Writers put a [`Transaction`] in it when there is none; the session
/// commits it (`Store::commit`) at the end of an autocommit statement or at
/// `COMMIT`, and drops it at `ROLLBACK`. Do not hold the lock while planning
/// or running a statement: scans lock it to see the transaction's own writes.
#[derive(Debug, Default)]
pub struct TxSlot(pub tokio::sync::Mutex<Option<Transaction>>);

impl TxSlot {
    /// An empty slot, ready to be a session config extension.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Runs `f` on the transaction's pending writes to `table`, beginning
    /// the transaction and taking the table's write lock (waiting at most
    /// `timeout`) if need be.
    pub(crate) async fn write<T>(
        &self,
        table: &Arc<Table>,
        timeout: Duration,
        f: impl FnOnce(&mut Pending) -> std::result::Result<T, StorageError>,
    ) -> std::result::Result<T, StorageError> {
        let mut tx = self.0.lock().await;
        f(tx.get_or_insert_with(Transaction::new).write(table, timeout).await?)
    }

    /// Adds rows to the transaction's writes to `table` (as [`Self::write`]);
    /// past `transaction-spill-bytes` of them in memory, they go to an
    /// encrypted segment file ([`Store::spill`]). Returns how many.
    pub(crate) async fn insert(
        &self,
        store: &Store,
        table: &Arc<Table>,
        timeout: Duration,
        batch: &RecordBatch,
    ) -> std::result::Result<u64, StorageError> {
        let mut tx = self.0.lock().await;
        let pending = tx.get_or_insert_with(Transaction::new).write(table, timeout).await?;
        let rows = pending.insert(batch)?;
        store.spill(pending).await?;
        Ok(rows)
    }
}

fn tx_slot(config: &datafusion::prelude::SessionConfig) -> Result<Arc<TxSlot>> {
    config
        .get_extension::<TxSlot>()
        .ok_or_else(|| StorageTableError::NoTxSlot.into())
}

/// The writes of the session's transaction to one table, as a scan sees them.
#[derive(Debug, Default)]
struct PendingView {
    inserts: Vec<RecordBatch>,
    /// Inserted rows written out to segment files ([`Store::spill`]).
    staged: Vec<Arc<Segment>>,
    deleted: RoaringTreemap,
    truncated_below: u64,
}

async fn pending_view(config: &datafusion::prelude::SessionConfig, table: &Table) -> PendingView {
    let Some(slot) = config.get_extension::<TxSlot>() else {
        return PendingView::default();
    };
    let guard = slot.0.lock().await;
    match guard.as_ref().and_then(|tx| tx.pending(table.id())) {
        Some(p) => PendingView {
            inserts: p.inserted().to_vec(),
            staged: p.staged().to_vec(),
            deleted: p.deleted().clone(),
            truncated_below: p.truncated_below().unwrap_or(0),
        },
        None => PendingView::default(),
    }
}

// ---------------------------------------------------------------------------
// Deleted rows.

/// The row ids a scan leaves out.
#[derive(Debug)]
struct Deletions {
    committed: Arc<RoaringTreemap>,
    pending: RoaringTreemap,
    /// Every id below this is deleted (the transaction's `TRUNCATE`).
    below: u64,
}

impl Deletions {
    fn is_empty(&self) -> bool {
        self.below == 0 && self.committed.is_empty() && self.pending.is_empty()
    }

    fn contains(&self, id: u64) -> bool {
        id < self.below || self.committed.contains(id) || self.pending.contains(id)
    }

    /// Whether any id in `lo..=hi` is deleted.
    fn any_in(&self, lo: u64, hi: u64) -> bool {
        lo < self.below || count_in(&self.committed, lo, hi) > 0 || count_in(&self.pending, lo, hi) > 0
    }

    /// Which rows of `ids` to keep; `None` when all of them.
    fn keep_mask(&self, ids: &UInt64Array) -> Option<BooleanArray> {
        if self.is_empty() {
            return None;
        }
        let mut any_deleted = false;
        let mask: BooleanArray = ids
            .values()
            .iter()
            .map(|id| {
                let deleted = self.contains(*id);
                any_deleted |= deleted;
                Some(!deleted)
            })
            .collect();
        any_deleted.then_some(mask)
    }

    /// `batch` without its deleted rows; `rowid` is the row-id column's index.
    fn filter(&self, batch: &RecordBatch, rowid: usize) -> Result<RecordBatch> {
        let ids = batch
            .columns()
            .get(rowid)
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| StorageTableError::Internal(format!("column {rowid} is not the row id")))?;
        match self.keep_mask(ids) {
            None => Ok(batch.clone()),
            Some(mask) => Ok(filter_record_batch(batch, &mask)?),
        }
    }
}

fn count_in(set: &RoaringTreemap, lo: u64, hi: u64) -> u64 {
    if set.is_empty() || lo > hi {
        return 0;
    }
    let before = if lo == 0 { 0 } else { set.rank(lo - 1) };
    set.rank(hi) - before
}

// ---------------------------------------------------------------------------
// Segment keys.

/// Gives DataFusion's Parquet reader the decryption properties of each
/// segment file. One per engine, shared by every [`SealTable`]: a scan
/// registers the segments it reads, and the reader asks by object-store
/// path when it opens each file.
#[derive(Debug)]
pub struct SegmentKeys {
    /// By object-store path.
    files: Mutex<HashMap<String, SegmentRef>>,
    /// Decrypted footers (and page indexes) of segments read before, by
    /// object-store path. DataFusion's own metadata cache leaves encrypted
    /// files out, so without this every query would read and decrypt every
    /// footer again. Segments are immutable; an entry goes when its segment
    /// is obsolete (merged, dropped) or gone.
    metadata: Arc<Mutex<FooterCache>>,
    /// Reads local files for the Parquet reader.
    readers: DefaultParquetFileReaderFactory,
}

impl Default for SegmentKeys {
    fn default() -> Self {
        Self {
            files: Mutex::default(),
            metadata: Arc::default(),
            readers: DefaultParquetFileReaderFactory::new(Arc::new(LocalFileSystem::new())),
        }
    }
}

/// Most footers kept: each holds the row-group and page statistics of one
/// segment (tens to hundreds of KiB).
const FOOTER_CACHE_ENTRIES: usize = 4096;

/// Decrypted footers by object-store path.
type FooterCache = HashMap<String, Footer>;

/// A segment's decrypted footer, and the statistics the planner reads from
/// it (row counts, sizes, min/max and null counts of each column), made the
/// first time a scan asks.
struct Footer {
    segment: Weak<Segment>,
    metadata: Arc<ParquetMetaData>,
    statistics: Option<Arc<Statistics>>,
}

impl fmt::Debug for Footer {
    // Not the metadata: it holds the file's decryptor.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Footer")
            .field("row_groups", &self.metadata.num_row_groups())
            .field("statistics", &self.statistics.is_some())
            .finish_non_exhaustive()
    }
}

/// A segment being read, and its table; weak so that the registry keeps
/// neither alive (the scans do).
type SegmentRef = (Weak<Table>, Weak<Segment>);

impl SegmentKeys {
    /// A new, empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records that `segment` of `table` is about to be read; returns its
    /// object-store path. Entries of segments no longer alive are pruned.
    fn register(&self, table: &Arc<Table>, segment: &Arc<Segment>) -> Result<ObjectPath> {
        let location = object_path(&segment.path)?;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let key = location.as_ref().to_owned();
        if !files.contains_key(&key) {
            files.retain(|_, (_, s)| s.strong_count() > 0);
        }
        files.insert(key, (Arc::downgrade(table), Arc::downgrade(segment)));
        Ok(location)
    }

    /// Forgets the cached footers (and with them the decryptors holding
    /// data keys) of segments merged away or of dropped tables.
    pub(crate) fn forget_obsolete(&self) {
        Self::prune_metadata(&mut self.metadata.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Drops cached footers of segments that are obsolete or gone.
    fn prune_metadata(metadata: &mut FooterCache) {
        metadata.retain(|_, footer| footer.segment.upgrade().is_some_and(|s| !s.is_obsolete()));
    }

    /// The planner's statistics of a registered segment, from its footer
    /// (read, decrypted and cached here the first time). `None` when the
    /// footer cannot be read: the scan then reports why.
    async fn statistics(&self, location: &ObjectPath, bytes: u64, schema: &SchemaRef) -> Option<Arc<Statistics>> {
        let key = location.as_ref().to_owned();
        let cached = {
            let metadata = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
            metadata.get(&key).map(|f| (f.metadata.clone(), f.statistics.clone()))
        };
        let footer = match cached {
            Some((_, Some(statistics))) => return Some(statistics),
            Some((footer, None)) => footer,
            None => {
                // As the scan will read it: decrypted, with its page index.
                let properties = self
                    .get_file_decryption_properties(&Default::default(), location)
                    .await
                    .ok()?;
                let mut options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
                if let Some(properties) = properties {
                    options = options.with_file_decryption_properties(properties);
                }
                let mut file = PartitionedFile::new(key.clone(), bytes);
                file.object_meta.location = location.clone();
                let mut reader = self
                    .create_reader(0, file, None, &ExecutionPlanMetricsSet::new())
                    .ok()?;
                reader.get_metadata(Some(&options)).await.ok()?
            }
        };
        let statistics = Arc::new(DFParquetMetadata::statistics_from_parquet_metadata(&footer, schema).ok()?);
        let mut metadata = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = metadata.get_mut(&key) {
            entry.statistics = Some(statistics.clone());
        }
        Some(statistics)
    }

    fn lookup(&self, location: &ObjectPath) -> Result<(Arc<Table>, Arc<Segment>)> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .get(location.as_ref())
            .and_then(|(t, s)| Some((t.upgrade()?, s.upgrade()?)))
            .ok_or_else(|| StorageTableError::UnknownSegment(location.to_string()).into())
    }
}

#[async_trait]
impl EncryptionFactory for SegmentKeys {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &SchemaRef,
        file_path: &ObjectPath,
    ) -> Result<Option<Arc<FileEncryptionProperties>>> {
        Err(DataFusionError::NotImplemented(format!(
            "{file_path}: segments are written by the storage engine only"
        )))
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        file_path: &ObjectPath,
    ) -> Result<Option<Arc<FileDecryptionProperties>>> {
        let (table, segment) = self.lookup(file_path)?;
        // Stats the file and, the first time, hashes a plaintext one.
        tokio::task::spawn_blocking(move || table.open_segment(&segment))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(storage)
    }
}

impl ParquetFileReaderFactory for SegmentKeys {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let key = partitioned_file.object_meta.location.as_ref().to_owned();
        let segment = {
            let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files.get(&key).map(|(_, s)| s.clone())
        };
        let inner = self
            .readers
            .create_reader(partition_index, partitioned_file, metadata_size_hint, metrics)?;
        Ok(Box::new(CachingReader {
            inner,
            key,
            segment,
            metadata: self.metadata.clone(),
        }))
    }
}

/// A segment reader that takes the footer from [`SegmentKeys`]' cache.
struct CachingReader {
    inner: Box<dyn AsyncFileReader + Send>,
    key: String,
    segment: Option<Weak<Segment>>,
    metadata: Arc<Mutex<FooterCache>>,
}

impl AsyncFileReader for CachingReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(&mut self, ranges: Vec<std::ops::Range<u64>>) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        let cached = {
            let metadata = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
            metadata.get(&self.key).map(|footer| footer.metadata.clone())
        };
        async move {
            if let Some(m) = cached {
                return Ok(m);
            }
            let fetched = self.inner.get_metadata(options).await?;
            if let Some(segment) = &self.segment {
                // Pruned on a miss only, not on every open of a cached file;
                // DROP TABLE prunes at once (`forget_obsolete`).
                let mut metadata = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
                SegmentKeys::prune_metadata(&mut metadata);
                if segment.upgrade().is_some_and(|s| !s.is_obsolete()) {
                    if metadata.len() >= FOOTER_CACHE_ENTRIES {
                        // Bounded: a burst of new segments starts it afresh.
                        metadata.clear();
                    }
                    metadata.insert(
                        self.key.clone(),
                        Footer {
                            segment: segment.clone(),
                            metadata: fetched.clone(),
                            statistics: None,
                        },
                    );
                }
            }
            Ok(fetched)
        }
        .boxed()
    }
}

/// The object-store path of a file for `ObjectStoreUrl::local_filesystem()`.
fn object_path(path: &Path) -> Result<ObjectPath> {
    let bad = || StorageTableError::BadPath(path.display().to_string());
    let absolute = std::path::absolute(path).map_err(|_| bad())?;
    Ok(ObjectPath::from_absolute_path(absolute).map_err(|_| bad())?)
}

// ---------------------------------------------------------------------------
// The table provider.

/// One table of the storage engine, as DataFusion sees it.
#[derive(Debug, Clone)]
pub struct SealTable {
    table: Arc<Table>,
    keys: Arc<SegmentKeys>,
    /// Closed when the master key is destroyed or unconfirmed too long.
    gate: Arc<KeyGate>,
    lock_timeout: Duration,
    /// Where transactions spill the rows they write.
    store: Store,
    /// Whether the schema ends with the row-id column (DELETE/UPDATE planning).
    expose_rowid: bool,
    schema: SchemaRef,
}

impl SealTable {
    /// The provider of `table` of `store`: a writer waits for the table's
    /// write lock at most `store.options().lock_timeout`; every scan passes
    /// `store.key_gate()`.
    pub fn new(table: Arc<Table>, keys: Arc<SegmentKeys>, store: &Store) -> Self {
        let schema = table.schema().clone();
        Self {
            table,
            keys,
            gate: store.key_gate().clone(),
            lock_timeout: store.options().lock_timeout,
            store: store.clone(),
            expose_rowid: false,
            schema,
        }
    }

    /// The same table with the row-id column appended to its schema.
    pub fn with_rowid(&self) -> Self {
        Self {
            expose_rowid: true,
            schema: self.table.stored_schema().clone(),
            ..self.clone()
        }
    }

    /// The storage engine's table.
    pub(crate) fn storage_table(&self) -> &Arc<Table> {
        &self.table
    }

    /// Index of the row-id column in the stored schema.
    fn rowid_index(&self) -> usize {
        self.table.schema().fields().len()
    }

    /// A Parquet scan of `segments` (with the stored schema), projected to
    /// `projection` (indices into the stored schema). `filters` are given
    /// for a scan the physical optimizer cannot push them into itself.
    async fn parquet_exec(
        &self,
        state: &dyn Session,
        segments: &[Arc<Segment>],
        projection: Vec<usize>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let stored = self.table.stored_schema().clone();
        let options = TableParquetOptions {
            global: state.config_options().execution.parquet.clone(),
            ..TableParquetOptions::default()
        };
        let mut source = ParquetSource::new(stored.clone())
            .with_table_parquet_options(options)
            .with_encryption_factory(self.keys.clone() as Arc<dyn EncryptionFactory>)
            .with_parquet_file_reader_factory(self.keys.clone() as Arc<dyn ParquetFileReaderFactory>);
        // For row-group and page pruning only: the filters are re-applied
        // above the scan (Inexact), so one that does not convert is dropped.
        if let Some(predicate) = conjunction(unnormalize_cols(filters.iter().cloned()))
            && let Ok(predicate) =
                DFSchema::try_from(stored.clone()).and_then(|schema| state.create_physical_expr(predicate, &schema))
        {
            source = source.with_predicate(predicate);
        }
        let groups = segments.len().clamp(1, state.config().target_partitions().max(1));
        let mut files: Vec<Vec<PartitionedFile>> = (0..groups).map(|_| Vec::new()).collect();
        let mut total_rows = 0usize;
        let mut all_statistics = Vec::with_capacity(segments.len());
        for (i, segment) in segments.iter().enumerate() {
            let location = self.keys.register(&self.table, segment)?;
            let rows = usize::try_from(segment.meta.rows).unwrap_or(usize::MAX);
            total_rows = total_rows.saturating_add(rows);
            // Every figure is a bound, never an answer: an exact count or
            // maximum would let the optimizer answer `count(*)` or `max(v)`
            // from the footer without reading, and so without authenticating,
            // the data pages (a damaged file would go unnoticed). Deleted
            // rows of dirty segments are still in the file, too.
            let statistics = match self.keys.statistics(&location, segment.meta.bytes, &stored).await {
                Some(s) => s.as_ref().clone().to_inexact(),
                None => self.segment_statistics(segment, rows).to_inexact(),
            };
            let statistics = Arc::new(statistics);
            all_statistics.push(statistics.clone());
            let mut file = PartitionedFile::new(location.to_string(), segment.meta.bytes);
            // Not re-parsed from the string: the path is already encoded.
            file.object_meta.location = location;
            files[i % groups].push(file.with_statistics(statistics));
        }
        let table_statistics = Statistics::try_merge_iter(all_statistics.iter().map(|s| s.as_ref()), &stored)
            .unwrap_or_else(|_| Statistics::new_unknown(&stored).with_num_rows(Precision::Inexact(total_rows)));
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
            .with_file_groups(files.into_iter().map(FileGroup::new).collect())
            .with_statistics(table_statistics)
            .with_projection_indices(Some(projection))?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// What the catalog tells of a segment without opening it.
    fn segment_statistics(&self, segment: &Segment, rows: usize) -> Statistics {
        let mut stats = Statistics::new_unknown(self.table.stored_schema()).with_num_rows(Precision::Exact(rows));
        if let Some(rowid) = stats.column_statistics.get_mut(self.rowid_index()) {
            *rowid = ColumnStatistics::new_unknown()
                .with_null_count(Precision::Exact(0))
                .with_min_value(Precision::Exact(ScalarValue::UInt64(Some(segment.meta.min_rowid))))
                .with_max_value(Precision::Exact(ScalarValue::UInt64(Some(segment.meta.max_rowid))));
        }
        stats
    }
}

#[async_trait]
impl TableProvider for SealTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    fn statistics(&self) -> Option<Statistics> {
        let rows = usize::try_from(self.table.snapshot().live_rows()).unwrap_or(usize::MAX);
        Some(Statistics::new_unknown(&self.schema).with_num_rows(Precision::Inexact(rows)))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.gate.check(self.table.name()).map_err(storage)?;
        self.table.check_keys().map_err(storage)?;
        let data = self.table.snapshot();
        let pending = pending_view(state.config(), &self.table).await;
        let deletions = Arc::new(Deletions {
            committed: data.deleted.clone(),
            pending: pending.deleted,
            below: pending.truncated_below,
        });
        let stored = self.table.stored_schema().clone();
        let rowid = self.rowid_index();
        // The exposed schema is a prefix of the stored one: same indices.
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let mut parts: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        // Segments, oldest rows first. Those without deleted rows are read
        // without the row-id column (unless asked for) and with the limit.
        let (mut clean, mut dirty) = (Vec::new(), Vec::new());
        for segment in data.segments.iter().chain(pending.staged.iter()) {
            let meta = &segment.meta;
            if meta.rows == 0 || meta.max_rowid < deletions.below {
                continue;
            }
            if deletions.any_in(meta.min_rowid, meta.max_rowid) {
                dirty.push(segment.clone());
            } else {
                clean.push(segment.clone());
            }
        }
        if !clean.is_empty() {
            // The optimizer pushes the filters (and dynamic filters) through
            // `SegmentScanExec` into this scan itself.
            let exec = self.parquet_exec(state, &clean, projection.clone(), &[], limit).await?;
            parts.push(Arc::new(SegmentScanExec::try_new(exec, clean.into(), None)?));
        }
        if !dirty.is_empty() {
            let mut read = projection.clone();
            let rowid_at = match read.iter().position(|i| *i == rowid) {
                Some(at) => at,
                None => {
                    read.push(rowid);
                    read.len() - 1
                }
            };
            // No limit here: it would count rows before the deleted ones go.
            let exec = self.parquet_exec(state, &dirty, read, filters, None).await?;
            let filter = DeletionFilter {
                deletions: deletions.clone(),
                rowid: rowid_at,
                keep: (0..projection.len()).collect(),
            };
            parts.push(Arc::new(SegmentScanExec::try_new(exec, dirty.into(), Some(filter))?));
        }

        // Rows in memory: committed chunks, then this transaction's inserts.
        let mut batches = Vec::new();
        for batch in data.chunks.iter().map(|c| &c.batch).chain(pending.inserts.iter()) {
            let kept = deletions.filter(batch, rowid)?;
            if kept.num_rows() > 0 {
                batches.push(kept);
            }
        }
        if !batches.is_empty() {
            let n = batches.len().clamp(1, state.config().target_partitions().max(1));
            let mut partitions: Vec<Vec<RecordBatch>> = (0..n).map(|_| Vec::new()).collect();
            for (i, batch) in batches.into_iter().enumerate() {
                partitions[i % n].push(batch);
            }
            let source =
                MemorySourceConfig::try_new(&partitions, stored.clone(), Some(projection.clone()))?.with_limit(limit);
            parts.push(DataSourceExec::from_data_source(source));
        }

        match parts.len() {
            0 => Ok(Arc::new(EmptyExec::new(Arc::new(self.schema.project(&projection)?)))),
            _ => UnionExec::try_new(parts),
        }
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if self.expose_rowid {
            return Err(StorageTableError::Internal("insert into a row-id view of a table".into()).into());
        }
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::NotImplemented(format!(
                "{insert_op} is not supported; use INSERT INTO"
            )));
        }
        let sink = SealSink {
            table: self.table.clone(),
            store: self.store.clone(),
            lock_timeout: self.lock_timeout,
            schema: self.table.schema().clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

// ---------------------------------------------------------------------------
// Segment scans.

/// Drops deleted rows by row id, then keeps the columns `keep`.
#[derive(Debug, Clone)]
struct DeletionFilter {
    deletions: Arc<Deletions>,
    /// The row-id column's index in the input.
    rowid: usize,
    /// Output columns, as input indices.
    keep: Vec<usize>,
}

/// A Parquet scan of segments, holding them (so their files stay while it
/// reads them: a compaction removes a replaced file when its last holder
/// lets go), and leaving out deleted rows when given a [`DeletionFilter`].
#[derive(Debug)]
struct SegmentScanExec {
    input: Arc<dyn ExecutionPlan>,
    segments: Arc<[Arc<Segment>]>,
    filter: Option<DeletionFilter>,
    properties: Arc<PlanProperties>,
}

impl SegmentScanExec {
    fn try_new(
        input: Arc<dyn ExecutionPlan>,
        segments: Arc<[Arc<Segment>]>,
        filter: Option<DeletionFilter>,
    ) -> Result<Self> {
        let properties = match &filter {
            None => input.properties().clone(),
            Some(f) => {
                let schema = Arc::new(input.schema().project(&f.keep)?);
                Arc::new(PlanProperties::new(
                    EquivalenceProperties::new(schema),
                    Partitioning::UnknownPartitioning(input.properties().partitioning.partition_count()),
                    EmissionType::Incremental,
                    Boundedness::Bounded,
                ))
            }
        };
        Ok(Self {
            input,
            segments,
            filter,
            properties,
        })
    }
}

impl DisplayAs for SegmentScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SegmentScanExec: segments={}", self.segments.len())?;
        if self.filter.is_some() {
            write!(f, ", drops deleted rows")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SegmentScanExec {
    fn name(&self) -> &str {
        "SegmentScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        // With a filter the output claims no ordering (see `try_new`), so
        // a sort must stay above it.
        vec![self.filter.is_none()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(StorageTableError::Internal("SegmentScanExec has one child".into()).into());
        }
        Ok(Arc::new(Self::try_new(
            children.swap_remove(0),
            self.segments.clone(),
            self.filter.clone(),
        )?))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        match self.filter {
            // Same schema as the Parquet scan: filters pass through.
            None => FilterDescription::from_children(parent_filters, &self.children()),
            Some(_) => Ok(FilterDescription::all_unsupported(&parent_filters, &self.children())),
        }
    }

    fn supports_limit_pushdown(&self) -> bool {
        self.filter.is_none()
    }

    // The scan's statistics (row counts and sizes), which the join planner
    // needs to build hash tables on the smaller side: as they are, or, when
    // deleted rows are dropped, as upper bounds of the kept columns.
    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let Some(input) = input_stats.first() else {
            return Ok(Arc::new(Statistics::new_unknown(&self.schema())));
        };
        match &self.filter {
            None => Ok(input.clone()),
            Some(f) => Ok(Arc::new(input.as_ref().clone().to_inexact().project(Some(&f.keep)))),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let segments = self.segments.clone();
        let filter = self.filter.clone();
        let stream = input.map(move |batch| {
            // The stream owns the segments until it is dropped.
            let _held = &segments;
            let batch = batch.map_err(|e| name_damaged_segment(e, &segments))?;
            match &filter {
                None => Ok(batch),
                Some(f) => Ok(f.deletions.filter(&batch, f.rowid)?.project(&f.keep)?),
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), stream)))
    }
}

/// A read error of the Parquet reader (a page that did not decrypt, say)
/// does not name its file: the first of `segments` that no longer matches
/// the catalog's SHA-256 is named instead, as an integrity error.
fn name_damaged_segment(error: DataFusionError, segments: &[Arc<Segment>]) -> DataFusionError {
    if let DataFusionError::External(inner) = error.find_root()
        && inner.downcast_ref::<StorageError>().is_some()
    {
        return error;
    }
    for segment in segments {
        if let Err(damaged) = segment.check_on_disk() {
            return storage(damaged);
        }
    }
    error
}

// ---------------------------------------------------------------------------
// INSERT.

/// Buffers inserted rows in the session's transaction; commits nothing.
#[derive(Debug)]
struct SealSink {
    table: Arc<Table>,
    store: Store,
    lock_timeout: Duration,
    schema: SchemaRef,
}

impl DisplayAs for SealSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealSink: table={}", self.table.name())
    }
}

#[async_trait]
impl DataSink for SealSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(&self, mut data: SendableRecordBatchStream, context: &Arc<TaskContext>) -> Result<u64> {
        let slot = tx_slot(context.session_config())?;
        // The lock first: a busy table fails before any input is computed.
        slot.write(&self.table, self.lock_timeout, |_| Ok(()))
            .await
            .map_err(storage)?;
        // Added as they come (spilling past `transaction-spill-bytes`): a
        // statement that fails part-way never commits, since the failure
        // rolls back its transaction (autocommit) or aborts its block. The
        // input's scans took their view of this transaction when planned.
        let mut count = 0;
        while let Some(batch) = data.next().await {
            let batch = conform(&self.table, &batch?)?;
            if batch.num_rows() > 0 {
                count += slot
                    .insert(&self.store, &self.table, self.lock_timeout, &batch)
                    .await
                    .map_err(storage)?;
            }
        }
        Ok(count)
    }
}

/// `batch` cast to the table's column types and checked against its NOT
/// NULL columns.
fn conform(table: &Table, batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = table.schema();
    if batch.num_columns() != schema.fields().len() {
        return Err(StorageTableError::Shape {
            table: table.name().to_owned(),
            detail: format!(
                "{} columns given, the table has {}",
                batch.num_columns(),
                schema.fields().len()
            ),
        }
        .into());
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let column = if column.data_type() == field.data_type() {
            column.clone()
        } else {
            cast(column, field.data_type())?
        };
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(StorageTableError::NotNull {
                table: table.name().to_owned(),
                column: field.name().clone(),
            }
            .into());
        }
        columns.push(column);
    }
    // Nullability as given: the check above is the one that counts.
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

// ---------------------------------------------------------------------------
// DELETE, UPDATE, TRUNCATE.

/// Runs a `DELETE`, `UPDATE` or `TRUNCATE` plan (a `LogicalPlan::Dml` as
/// DataFusion's SQL planner makes it, not optimized) against the session's
/// transaction, without committing; returns the rows affected (0 for
/// `TRUNCATE`).
///
/// The table's write lock is taken first. The statement's input is then
/// run with the target table read with its row ids: `DELETE` deletes the
/// ids its input yields; `UPDATE` deletes them and inserts the new values
/// (a row matched more than once, through `UPDATE ... FROM`, is updated
/// once). A statement that fails part-way never commits: its failure rolls
/// back the transaction (autocommit) or aborts the block.
pub async fn delete_or_update(state: &SessionState, plan: &LogicalPlan) -> Result<u64> {
    let LogicalPlan::Dml(dml) = plan else {
        return Err(StorageTableError::Internal(format!("not a DML plan: {}", plan.display())).into());
    };
    let target = seal_table(&dml.target, &dml.table_name.to_string())?;
    let table = target.table.clone();
    let slot = tx_slot(state.config())?;
    let truncate = match dml.op {
        WriteOp::Truncate => true,
        WriteOp::Delete | WriteOp::Update => false,
        ref other => {
            return Err(DataFusionError::NotImplemented(format!(
                "{other} is not run by delete_or_update"
            )));
        }
    };
    // The lock first: a busy table fails before any row is read.
    slot.write(&table, target.lock_timeout, |pending| {
        if truncate {
            pending.truncate();
        }
        Ok(())
    })
    .await
    .map_err(storage)?;
    if truncate {
        return Ok(0);
    }
    let update = matches!(dml.op, WriteOp::Update);
    let input = with_rowids(dml, &target)?;
    let physical = state.create_physical_plan(&input).await?;
    let mut stream = execute_stream(physical, state.task_ctx())?;
    let width = table.schema().fields().len();
    let mut ids = RoaringTreemap::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let rowids = batch
            .columns()
            .last()
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| StorageTableError::Internal("the row ids are missing".into()))?;
        if update {
            // The first match of a row wins.
            let first: BooleanArray = rowids.values().iter().map(|id| Some(ids.insert(*id))).collect();
            let values = filter_record_batch(&batch.project(&(0..width).collect::<Vec<_>>())?, &first)?;
            let values = conform(&table, &values)?;
            if values.num_rows() > 0 {
                // The new values as they come (see `SealSink::write_all`);
                // the scan above took its view of the transaction when planned.
                slot.insert(&target.store, &table, target.lock_timeout, &values)
                    .await
                    .map_err(storage)?;
            }
        } else {
            ids.extend(rowids.values().iter().copied());
        }
    }
    drop(stream);

    let deleted = slot
        .write(&table, target.lock_timeout, |pending| Ok(pending.delete(&ids)))
        .await
        .map_err(storage)?;
    Ok(if update { ids.len() } else { deleted })
}

/// The [`SealTable`] behind a table source.
fn seal_table(source: &Arc<dyn TableSource>, name: &str) -> Result<SealTable> {
    let provider = source_as_provider(source)?;
    provider
        .downcast_ref::<SealTable>()
        .cloned()
        .ok_or_else(|| StorageTableError::NotSealTable(name.to_owned()).into())
}

/// The DML's input with the target table read with its row ids, which end
/// each output row.
fn with_rowids(dml: &DmlStatement, target: &SealTable) -> Result<LogicalPlan> {
    let exposed = provider_as_source(Arc::new(target.with_rowid()));
    let rowid = target.rowid_index();
    let table_id = target.table.id();
    // The target is the first scan of it met walking the plan's inputs
    // depth first, left first (UPDATE ... FROM puts it leftmost); scans of
    // it in subqueries or in FROM are left as they are. Every node above it
    // gets its schema recomputed.
    let mut replaced = false;
    let input = Arc::unwrap_or_clone(dml.input.clone()).transform_up(|node| {
        if replaced {
            return node.recompute_schema().map(Transformed::yes);
        }
        match node {
            LogicalPlan::TableScan(scan) if is_scan_of(&scan, table_id) => {
                replaced = true;
                let projection = scan.projection.map(|mut p| {
                    p.push(rowid);
                    p
                });
                let scan = TableScanBuilder::new(scan.table_name, exposed.clone())
                    .with_projection(projection)
                    .with_filters(scan.filters)
                    .with_fetch(scan.fetch)
                    .build()?;
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            other => Ok(Transformed::no(other)),
        }
    })?;
    if !replaced {
        return Err(StorageTableError::Internal(format!("no scan of {} in the statement", dml.table_name)).into());
    }
    let rowid_of = |plan: &LogicalPlan| -> Result<Expr> {
        let (qualifier, field) = plan.schema().qualified_field_with_unqualified_name(ROWID_COLUMN)?;
        Ok(Expr::Column(Column::new(qualifier.cloned(), field.name())))
    };
    let projection = match (input.data, &dml.op) {
        (LogicalPlan::Projection(p), WriteOp::Update) => {
            let mut exprs = p.expr;
            exprs.push(rowid_of(&p.input)?);
            Projection::try_new(exprs, p.input)?
        }
        (other, WriteOp::Delete) => Projection::try_new(vec![rowid_of(&other)?], Arc::new(other))?,
        (other, op) => {
            return Err(StorageTableError::Internal(format!("unexpected {op} input: {}", other.display())).into());
        }
    };
    Ok(LogicalPlan::Projection(projection))
}

fn is_scan_of(scan: &TableScan, table_id: u64) -> bool {
    source_as_provider(&scan.source)
        .ok()
        .and_then(|p| p.downcast_ref::<SealTable>().map(|t| t.table.id() == table_id))
        .unwrap_or(false)
}
