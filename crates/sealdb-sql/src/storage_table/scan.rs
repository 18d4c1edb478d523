//! The table provider and its segment scans.

use super::write::SealSink;
use super::*;

// ---------------------------------------------------------------------------
// The table provider.

/// One table of the storage engine, as DataFusion sees it.
#[derive(Debug, Clone)]
pub struct SealTable {
    pub(super) table: Arc<Table>,
    keys: Arc<SegmentKeys>,
    /// Closed when the master key is destroyed or unconfirmed too long.
    gate: Arc<KeyGate>,
    pub(super) lock_timeout: Duration,
    /// Where transactions spill the rows they write.
    pub(super) store: Store,
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
    pub(super) fn rowid_index(&self) -> usize {
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
        let sink = SealSink::new(self.table.clone(), self.store.clone(), self.lock_timeout);
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
