//! Checkpoints (rows in memory into encrypted segments) and compaction.

use super::*;

impl Store {
    /// Whether enough rows wait in memory for a checkpoint.
    pub fn wants_checkpoint(&self) -> bool {
        self.inner.mem_bytes.load(Ordering::Acquire) >= self.inner.options.flush_bytes
    }

    /// Unflushed rows held in memory, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.inner.mem_bytes.load(Ordering::Acquire)
    }

    /// Writes every committed row still only in the log into segment files,
    /// records them in the catalog and removes the log files they came
    /// from. Readers and writers carry on meanwhile.
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        self.detached(|s| async move { s.checkpoint_now().await }).await
    }

    pub(super) async fn checkpoint_now(&self) -> Result<(), StorageError> {
        let _one = self.inner.checkpoint.lock().await;
        self.checkpoint_locked().await
    }

    /// [`Self::checkpoint_now`] with the checkpoint lock already held.
    pub(super) async fn checkpoint_locked(&self) -> Result<(), StorageError> {
        let generation = self.inner.catalog.lock().await.body.generation;
        let rotated = {
            // No commit between its log write and its rows in memory.
            let _window = self.inner.commit_window.write().await;
            self.inner.log.rotate(generation).await?
        };
        let mut flushed = Vec::new();
        for table in self.tables() {
            let data = table.snapshot();
            let chunks: Vec<Arc<MemChunk>> = data
                .chunks
                .iter()
                .filter(|c| c.lsn <= rotated.boundary_lsn)
                .cloned()
                .collect();
            if chunks.is_empty() {
                continue;
            }
            let mut batches = Vec::new();
            let mut dropped = RoaringTreemap::new();
            for c in &chunks {
                let kept = without_deleted(&c.batch, &data.deleted)?;
                if kept.num_rows() < c.batch.num_rows()
                    && let Some(ids) = crate::table::rowids(&c.batch)
                {
                    for id in ids.values() {
                        if data.deleted.contains(*id) {
                            dropped.insert(*id);
                        }
                    }
                }
                if kept.num_rows() > 0 {
                    batches.push(kept);
                }
            }
            let segment = if batches.is_empty() {
                None
            } else {
                Some(self.write_segment(&table, batches).await?)
            };
            flushed.push((table, chunks, segment, dropped));
        }
        let mut state = self.inner.catalog.lock().await;
        // The catalog is written first; memory follows once it is durable.
        let updates: Vec<(u64, Vec<crate::catalog::SegmentMeta>, RoaringTreemap, u64)> = flushed
            .iter()
            .map(|(table, _, segment, dropped)| {
                let mut segments = table.segment_metas();
                if let Some(s) = segment {
                    segments.push(s.meta.clone());
                }
                let deleted = &*table.snapshot().deleted - dropped;
                (table.id, segments, deleted, table.next_rowid.load(Ordering::Acquire))
            })
            .collect();
        // Their segments too: a commit may have published segment files a
        // transaction wrote (`Store::spill`).
        let untouched: Vec<(u64, Vec<crate::catalog::SegmentMeta>, RoaringTreemap, u64)> = self
            .tables()
            .iter()
            .filter(|t| !flushed.iter().any(|(f, ..)| f.id == t.id))
            .map(|t| {
                (
                    t.id,
                    t.segment_metas(),
                    (*t.snapshot().deleted).clone(),
                    t.next_rowid.load(Ordering::Acquire),
                )
            })
            .collect();
        self.persist(&mut state, |body| {
            body.checkpoint_lsn = rotated.boundary_lsn;
            body.log_seq_min = rotated.seq;
            for meta in &mut body.tables {
                if let Some((_, segments, deleted, next)) = updates.iter().find(|u| u.0 == meta.id) {
                    meta.segments = segments.clone();
                    meta.deleted = serialize_bitmap(deleted)?;
                    meta.next_rowid = *next;
                } else if let Some((_, segments, deleted, next)) = untouched.iter().find(|u| u.0 == meta.id) {
                    meta.segments = segments.clone();
                    meta.deleted = serialize_bitmap(deleted)?;
                    meta.next_rowid = *next;
                }
            }
            Ok(())
        })
        .await?;
        drop(state);
        let mut freed = 0u64;
        for (table, chunks, segment, dropped) in flushed {
            freed += chunks
                .iter()
                .map(|c| c.batch.get_array_memory_size() as u64)
                .sum::<u64>();
            table.install(&chunks, &[], segment.into_iter().collect(), Some(&dropped));
        }
        self.release_memory(freed);
        // The log before the new file is now in segments.
        let log_dir = self.inner.dir.join(LOG_DIR);
        for (seq, path) in wal::list_log_files(&self.inner.dir)? {
            if seq < rotated.seq {
                std::fs::remove_file(&path).map_err(StorageError::io("removing", path))?;
            }
        }
        sealdb_kms::fsync_dir(&log_dir).map_err(StorageError::io("syncing", log_dir))?;
        Ok(())
    }

    /// A new, never used file id (from the catalog's counter).
    pub(super) async fn next_file_id(&self) -> u64 {
        let mut state = self.inner.catalog.lock().await;
        let id = state.body.next_file_id;
        state.body.next_file_id += 1;
        id
    }

    /// Writes `batches` (with row ids) as a new segment file of `table`,
    /// durably, under the table's current key when it is encrypted; the
    /// file id comes from the catalog's counter. Not published.
    pub(super) async fn write_segment(
        &self,
        table: &Arc<Table>,
        batches: Vec<RecordBatch>,
    ) -> Result<Arc<Segment>, StorageError> {
        let id = self.next_file_id().await;
        let key = match table.encryption() {
            Encryption::Aes256Gcm => Some(table.writing_key()?),
            Encryption::None => None,
        };
        let dir = self.inner.dir.clone();
        let table_id = table.id;
        let meta = tokio::task::spawn_blocking(move || {
            segment::write(
                &dir,
                table_id,
                id,
                &batches,
                key.as_ref().map(|(v, k)| (*v, k.as_ref())),
            )
        })
        .await
        .map_err(|e| StorageError::Internal(format!("segment writer: {e}")))??;
        Ok(Arc::new(Segment::new(&self.inner.dir, table_id, meta)))
    }

    /// Whether some table has small segments to merge or a segment mostly
    /// made of deleted rows ([`Store::compact`]).
    pub fn wants_compaction(&self) -> bool {
        self.tables()
            .iter()
            .any(|t| t.check_keys().is_ok() && !compaction_plan(&t.snapshot()).is_empty())
    }

    /// Merges each table's small segments (and rewrites segments with many
    /// deleted rows) into one new segment under a fresh data key and the
    /// current table-key version, leaving deleted rows out. The catalog
    /// names the new segment before the old files go; readers still using
    /// old files keep them until they finish. Returns the segments merged.
    pub async fn compact(&self) -> Result<usize, StorageError> {
        self.detached(|s| async move { s.compact_now().await }).await
    }

    pub(super) async fn compact_now(&self) -> Result<usize, StorageError> {
        let _one = self.inner.checkpoint.lock().await;
        let mut merged_total = 0;
        for table in self.tables() {
            if table.check_keys().is_err() {
                // Its key is gone or unconfirmed: its files stay as they are.
                continue;
            }
            let data = table.snapshot();
            let merging = compaction_plan(&data);
            if merging.is_empty() {
                continue;
            }
            let Some(dropped) = self.rewrite_segments(&table, &merging, |_| Ok(())).await? else {
                continue;
            };
            merged_total += merging.len();
            info!(
                table = %table.name,
                "compacted {} segments, {} deleted rows dropped",
                merging.len(),
                dropped.len()
            );
        }
        Ok(merged_total)
    }

    /// Rewrites `merging` (segments of `table`) as one new segment under a
    /// fresh data key and the table's current encryption and key version,
    /// leaving deleted rows out. The catalog names the new segment (and
    /// whatever `also` changes) before the old files go; readers still
    /// using old files keep them until they finish. `None` when the table
    /// was dropped meanwhile; otherwise the deleted row ids left out.
    /// The caller holds the checkpoint lock.
    pub(super) async fn rewrite_segments(
        &self,
        table: &Arc<Table>,
        merging: &[Arc<Segment>],
        also: impl FnOnce(&mut CatalogBody) -> Result<(), StorageError>,
    ) -> Result<Option<RoaringTreemap>, StorageError> {
        let data = table.snapshot();
        let key = match table.encryption() {
            Encryption::Aes256Gcm => Some(table.writing_key()?),
            Encryption::None => None,
        };
        let mut sources = Vec::with_capacity(merging.len());
        for s in merging {
            let data_key = match s.meta.key_version {
                0 => None,
                _ => Some(table.data_key(s)?),
            };
            sources.push((s.clone(), data_key));
        }
        let id = self.next_file_id().await;
        let deleted = data.deleted.clone();
        let dir = self.inner.dir.clone();
        let table_id = table.id;
        let (segment, dropped) = tokio::task::spawn_blocking(move || {
            let mut batches = Vec::new();
            let mut dropped = RoaringTreemap::new();
            for (s, data_key) in &sources {
                for batch in segment::read_all(&s.path, &s.display, table_id, &s.meta, data_key.as_deref())? {
                    if let Some(ids) = crate::table::rowids(&batch) {
                        dropped.extend(ids.values().iter().copied().filter(|id| deleted.contains(*id)));
                    }
                    let kept = without_deleted(&batch, &deleted)?;
                    if kept.num_rows() > 0 {
                        batches.push(kept);
                    }
                }
            }
            let segment = if batches.is_empty() {
                None
            } else {
                let meta = segment::write(
                    &dir,
                    table_id,
                    id,
                    &batches,
                    key.as_ref().map(|(v, k)| (*v, k.as_ref())),
                )?;
                Some(Arc::new(Segment::new(&dir, table_id, meta)))
            };
            Ok::<_, StorageError>((segment, dropped))
        })
        .await
        .map_err(|e| StorageError::Internal(format!("rewriting segments: {e}")))??;
        let mut state = self.inner.catalog.lock().await;
        let mut segments: Vec<crate::catalog::SegmentMeta> = table
            .segment_metas()
            .into_iter()
            .filter(|m| !merging.iter().any(|s| s.meta.id == m.id))
            .collect();
        if let Some(s) = &segment {
            segments.push(s.meta.clone());
        }
        if !state.body.tables.iter().any(|m| m.id == table.id) {
            // Dropped meanwhile: its keys are gone, and so goes the new file.
            if let Some(s) = &segment {
                s.mark_obsolete();
            }
            return Ok(None);
        }
        let still_deleted = &*table.snapshot().deleted - &dropped;
        self.persist(&mut state, |body| {
            if let Some(meta) = body.tables.iter_mut().find(|m| m.id == table.id) {
                meta.segments = segments;
                meta.deleted = serialize_bitmap(&still_deleted)?;
            }
            also(body)
        })
        .await?;
        drop(state);
        for s in merging {
            s.mark_obsolete();
        }
        table.install(&[], merging, segment.into_iter().collect(), Some(&dropped));
        Ok(Some(dropped))
    }

    pub(super) fn release_memory(&self, bytes: u64) {
        let _ = self
            .inner
            .mem_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_sub(bytes))
            });
    }
}

/// Which segments of a table to merge now: its small ones once there are
/// more than [`SMALL_SEGMENTS_MAX`], plus any mostly deleted.
pub(super) fn compaction_plan(data: &crate::TableData) -> Vec<Arc<Segment>> {
    let deleted_share = |s: &Segment| {
        let m = &s.meta;
        if m.rows == 0 || data.deleted.is_empty() {
            return 0.0;
        }
        let before = if m.min_rowid == 0 {
            0
        } else {
            data.deleted.rank(m.min_rowid - 1)
        };
        (data.deleted.rank(m.max_rowid) - before) as f64 / m.rows as f64
    };
    let small: Vec<&Arc<Segment>> = data
        .segments
        .iter()
        .filter(|s| s.meta.bytes < SMALL_SEGMENT_BYTES)
        .collect();
    let mut plan: Vec<Arc<Segment>> = Vec::new();
    if small.len() > SMALL_SEGMENTS_MAX {
        plan.extend(small.into_iter().cloned());
    }
    for s in &data.segments {
        if deleted_share(s) >= DELETED_SHARE_REWRITE && !plan.iter().any(|p| Arc::ptr_eq(p, s)) {
            plan.push(s.clone());
        }
    }
    let mut rows = 0;
    plan.retain(|s| {
        rows += s.meta.rows;
        rows <= COMPACTION_ROWS_MAX
    });
    // One segment alone is rewritten only for its deleted rows.
    if plan.len() == 1 && deleted_share(&plan[0]) < DELETED_SHARE_REWRITE {
        plan.clear();
    }
    plan
}

pub(super) fn split_by_bytes(batches: &[RecordBatch], target: usize) -> Vec<&[RecordBatch]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, b) in batches.iter().enumerate() {
        let s = b.get_array_memory_size();
        if i > start && size + s > target {
            out.push(&batches[start..i]);
            start = i;
            size = 0;
        }
        size += s;
    }
    if start < batches.len() {
        out.push(&batches[start..]);
    }
    out
}

pub(super) fn encode_ipc(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, StorageError> {
    let fail = |e: arrow::error::ArrowError| StorageError::Format {
        context: "encoding rows for the log".into(),
        detail: e.to_string(),
    };
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema).map_err(fail)?;
    for b in batches {
        writer.write(b).map_err(fail)?;
    }
    writer.finish().map_err(fail)?;
    writer.into_inner().map_err(fail)
}

/// Segments below this size are merged once a table has several.
pub(super) const SMALL_SEGMENT_BYTES: u64 = 16 << 20;

/// How many small segments a table may have before they are merged.
pub(super) const SMALL_SEGMENTS_MAX: usize = 4;

/// At most this many rows are merged at once (they are held in memory).
pub(super) const COMPACTION_ROWS_MAX: u64 = 8 << 20;

/// A segment with at least this share of its rows deleted is rewritten.
pub(super) const DELETED_SHARE_REWRITE: f64 = 0.25;
