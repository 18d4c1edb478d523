//! INSERT, DELETE, UPDATE and TRUNCATE into the session's transaction.

use super::*;

// ---------------------------------------------------------------------------
// INSERT.

/// Buffers inserted rows in the session's transaction; commits nothing.
#[derive(Debug)]
pub(super) struct SealSink {
    table: Arc<Table>,
    store: Store,
    lock_timeout: Duration,
    schema: SchemaRef,
}

impl SealSink {
    /// Inserts into `table` of `store`, waiting at most `lock_timeout` for its write lock.
    pub(super) fn new(table: Arc<Table>, store: Store, lock_timeout: Duration) -> Self {
        let schema = table.schema().clone();
        Self {
            table,
            store,
            lock_timeout,
            schema,
        }
    }
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
