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

mod keys;
mod scan;
mod write;

pub use keys::SegmentKeys;
pub use scan::SealTable;
pub use write::delete_or_update;

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
