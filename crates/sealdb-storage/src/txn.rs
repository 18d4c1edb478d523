//! Transactions: writes buffered per table under the table's write lock,
//! logged and applied at commit, dropped at rollback.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use roaring::RoaringTreemap;
use tokio::sync::OwnedMutexGuard;

use crate::StorageError;
use crate::segment::Segment;
use crate::table::{Table, rowids};

/// The writes of one transaction. Dropping it rolls it back.
#[derive(Debug, Default)]
pub struct Transaction {
    pub(crate) tables: BTreeMap<u64, Pending>,
}

/// One table's pending writes.
#[derive(Debug)]
pub struct Pending {
    pub(crate) table: Arc<Table>,
    _guard: OwnedMutexGuard<()>,
    pub(crate) inserts: Vec<RecordBatch>,
    /// Arrow bytes of `inserts`.
    pub(crate) buffered: u64,
    /// Rows written out of memory to segment files of their own
    /// ([`crate::Store::spill`]), published by the commit; removed when
    /// the transaction rolls back.
    pub(crate) staged: Vec<Arc<Segment>>,
    pub(crate) deleted: RoaringTreemap,
    pub(crate) truncate_below: Option<u64>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Not committed (the commit takes them): their files go once no
        // scan of this transaction reads them any more.
        for segment in &self.staged {
            segment.mark_obsolete();
        }
    }
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether it wrote nothing.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The pending writes of `table`, taking its write lock first if this
    /// transaction does not hold it yet. Waits at most `timeout`.
    pub async fn write(&mut self, table: &Arc<Table>, timeout: Duration) -> Result<&mut Pending, StorageError> {
        match self.tables.entry(table.id) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                let guard = tokio::time::timeout(timeout, table.write_lock.clone().lock_owned())
                    .await
                    .map_err(|_| StorageError::LockTimeout(table.name.clone()))?;
                if table.dropped.load(Ordering::Acquire) {
                    return Err(StorageError::NoSuchTable(table.name.clone()));
                }
                Ok(e.insert(Pending {
                    table: table.clone(),
                    _guard: guard,
                    inserts: Vec::new(),
                    buffered: 0,
                    staged: Vec::new(),
                    deleted: RoaringTreemap::new(),
                    truncate_below: None,
                }))
            }
        }
    }

    /// What this transaction has written to table `id`, if anything.
    pub fn pending(&self, id: u64) -> Option<&Pending> {
        self.tables.get(&id)
    }
}

impl Pending {
    /// Buffers rows (the table's columns, in order); returns how many.
    pub fn insert(&mut self, batch: &RecordBatch) -> Result<u64, StorageError> {
        let table = &self.table;
        let schema = table.schema();
        if batch.num_columns() != schema.fields().len() {
            return Err(StorageError::Schema {
                table: table.name.clone(),
                detail: format!(
                    "{} columns given, the table has {}",
                    batch.num_columns(),
                    schema.fields().len()
                ),
            });
        }
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            if field.data_type() != column.data_type() {
                return Err(StorageError::Schema {
                    table: table.name.clone(),
                    detail: format!(
                        "column \"{}\" is {}, the rows give {}",
                        field.name(),
                        field.data_type(),
                        column.data_type()
                    ),
                });
            }
            if !field.is_nullable() && column.null_count() > 0 {
                return Err(StorageError::Schema {
                    table: table.name.clone(),
                    detail: format!("null value in column \"{}\" violates not-null constraint", field.name()),
                });
            }
        }
        let rows = batch.num_rows() as u64;
        if rows == 0 {
            return Ok(0);
        }
        let first = table.next_rowid.fetch_add(rows, Ordering::AcqRel);
        let ids: ArrayRef = Arc::new(UInt64Array::from_iter_values(first..first + rows));
        let mut columns = batch.columns().to_vec();
        columns.push(ids);
        let stored =
            RecordBatch::try_new(table.stored_schema().clone(), columns).map_err(|e| StorageError::Schema {
                table: table.name.clone(),
                detail: e.to_string(),
            })?;
        self.buffered += stored.get_array_memory_size() as u64;
        self.inserts.push(stored);
        Ok(rows)
    }

    /// Deletes rows by id; returns how many were not deleted before.
    pub fn delete(&mut self, ids: &RoaringTreemap) -> u64 {
        let before = self.deleted.len();
        self.deleted |= ids;
        self.deleted.len() - before
    }

    /// Deletes every row, committed or pending.
    pub fn truncate(&mut self) {
        let below = self.table.next_rowid.load(Ordering::Acquire);
        self.truncate_below = Some(below);
        self.inserts.clear();
        self.buffered = 0;
        for segment in self.staged.drain(..) {
            segment.mark_obsolete();
        }
        self.deleted.clear();
    }

    /// Segment files holding rows this transaction inserted.
    pub fn staged(&self) -> &[Arc<Segment>] {
        &self.staged
    }

    /// Arrow bytes of the inserted rows held in memory.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered
    }

    /// Rows inserted, with row ids, before deletions are applied.
    pub fn inserted(&self) -> &[RecordBatch] {
        &self.inserts
    }

    /// Row ids deleted by this transaction.
    pub fn deleted(&self) -> &RoaringTreemap {
        &self.deleted
    }

    /// Row ids below this are deleted by a TRUNCATE of this transaction.
    pub fn truncated_below(&self) -> Option<u64> {
        self.truncate_below
    }

    pub(crate) fn surviving_inserts(&self) -> Result<Vec<RecordBatch>, StorageError> {
        let mut out = Vec::with_capacity(self.inserts.len());
        for b in &self.inserts {
            let kept = crate::table::without_deleted(b, &self.deleted)?;
            if kept.num_rows() > 0 {
                out.push(kept);
            }
        }
        Ok(out)
    }

    pub(crate) fn committed_deletes(&self) -> RoaringTreemap {
        // Ids of this transaction's own inserts need no record: those rows are dropped.
        let mut d = self.deleted.clone();
        for b in &self.inserts {
            if let Some(ids) = rowids(b) {
                for id in ids.values() {
                    d.remove(*id);
                }
            }
        }
        d
    }
}
