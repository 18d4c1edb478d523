//! Opening a data directory: its lock, the catalog, the log's replay, and
//! the decoders of what the log holds.

use super::*;

/// Locks `dir` for this process (released when the file is closed, also
/// when the process dies), or says which directory is in use.
pub(crate) fn lock_dir(dir: &Path) -> Result<std::fs::File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StorageError::io("opening", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::InUse { dir: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(StorageError::io("locking", path)(e)),
    }
}

/// Reads the catalog: unwraps the key ring (one key-provider call), the
/// system key, and authenticates the body. Changes nothing.
pub(crate) fn open_catalog(catalog_path: &Path, provider: &dyn KeyProvider) -> Result<OpenedCatalog, StorageError> {
    let (header, bytes, header_len) = catalog::read_header(catalog_path)?;
    if header.provider != provider.name() {
        return Err(StorageError::Key(sealdb_kms::KmsError::UnknownMasterKey {
            id: header.master_id.clone(),
            provider: format!(
                "{} (the catalog's master key is in \"{}\"; set key-provider to it)",
                provider.name(),
                header.provider
            ),
        }));
    }
    let master = MasterKeyId(header.master_id.clone());
    let ring = provider.unwrap(&master, &header.wrapped_ring, RING_AAD)?;
    let ring_key = AeadKey::new(&ring);
    let system = unwrap_key(&ring_key, &header.wrapped_system, SYSTEM_AAD)
        .map_err(|_| StorageError::integrity(CATALOG_FILE, "the system key failed authentication"))?;
    let body = catalog::open_body(&bytes, header_len, &catalog::body_key(&system)?)?;
    if body.generation != header.generation {
        return Err(StorageError::integrity(
            CATALOG_FILE,
            "header and body generations differ",
        ));
    }
    Ok((header, body, (master, ring_key, ring), system))
}

/// The system key `current`, then the earlier ones the catalog keeps.
pub(crate) fn system_keys(ring: &AeadKey, current: &Key256, body: &CatalogBody) -> Result<Vec<Key256>, StorageError> {
    let mut out = vec![current.clone()];
    for retired in &body.retired_system_keys {
        out.push(
            unwrap_key(ring, &retired.wrapped, RETIRED_SYSTEM_AAD)
                .map_err(|_| StorageError::integrity(CATALOG_FILE, "an earlier system key failed authentication"))?,
        );
    }
    Ok(out)
}

/// Reads and checks every live log file against the catalog: no file
/// missing (the chain of links and sequence numbers), none newer than the
/// catalog allows, frames authenticated and in order. Changes nothing.
pub(crate) fn scan_log(
    dir: &Path,
    body: &CatalogBody,
    systems: &[Key256],
    key_of: &dyn Fn(u64, u32) -> Option<Arc<Key256>>,
) -> Result<LogScan, StorageError> {
    let files = wal::list_log_files(dir)?;
    let mut next_lsn = body.checkpoint_lsn + 1;
    let mut next_seq = body.log_seq_min;
    let obsolete: Vec<(u64, PathBuf)> = files
        .iter()
        .filter(|(seq, _)| *seq < body.log_seq_min)
        .cloned()
        .collect();
    let live: Vec<_> = files.iter().filter(|(seq, _)| *seq >= body.log_seq_min).collect();
    if live.is_empty() && body.generation > 1 {
        return Err(StorageError::Missing {
            file: format!("{LOG_DIR}/{}", wal::log_file_name(body.log_seq_min)),
            detail: "the catalog needs this log file; it was deleted, or the catalog is an older copy".into(),
        });
    }
    let mut out = Vec::with_capacity(live.len());
    let mut expected_seq = body.log_seq_min;
    let mut previous_continues: Option<u64> = None;
    for (i, (seq, path)) in live.iter().enumerate() {
        let display = format!("{LOG_DIR}/{}", wal::log_file_name(*seq));
        if *seq != expected_seq {
            return Err(StorageError::Missing {
                file: format!("{LOG_DIR}/{}", wal::log_file_name(expected_seq)),
                detail: "the log has a gap here; it was deleted, or the catalog is an older copy".into(),
            });
        }
        let contents = wal::read_log_file(path, &display, systems, key_of)?;
        if contents.header.seq != *seq {
            return Err(StorageError::integrity(&display, "its header names another log file"));
        }
        if contents.header.catalog_generation > body.generation {
            return Err(StorageError::integrity(
                CATALOG_FILE,
                format!(
                    "the catalog (generation {}) is older than the log ({display} follows generation {}): an older copy of the catalog was put back",
                    body.generation, contents.header.catalog_generation
                ),
            ));
        }
        if i == 0 && contents.header.first_lsn > body.checkpoint_lsn + 1 {
            return Err(StorageError::integrity(
                &display,
                "it starts after the checkpoint: log records are missing",
            ));
        }
        // A file is linked from the one before it; without the link (a
        // crash between creating this file and linking it) the lsn the
        // link would have taken is skipped.
        let first = contents.header.first_lsn;
        if i > 0 && first != next_lsn && !(previous_continues.is_none() && first == next_lsn + 1) {
            return Err(StorageError::integrity(
                &display,
                format!("it starts at lsn {first}, expected {next_lsn}"),
            ));
        }
        previous_continues = contents.continues;
        if contents.torn_tail && i + 1 != live.len() {
            return Err(StorageError::integrity(
                &display,
                "it ends in a partial frame but is not the newest log file",
            ));
        }
        next_lsn = contents.next_lsn;
        out.push(ScannedLog {
            path: path.clone(),
            display,
            contents,
        });
        next_seq = seq + 1;
        expected_seq = seq + 1;
    }
    if let Some(missing) = previous_continues {
        return Err(StorageError::Missing {
            file: format!("{LOG_DIR}/{}", wal::log_file_name(missing)),
            detail:
                "the log continues in this file, which is gone: committed writes are missing; restore it from a backup"
                    .into(),
        });
    }
    Ok(LogScan {
        files: out,
        obsolete,
        newest: live.last().map(|(seq, path)| (*seq, path.clone())),
        next_seq,
        next_lsn: next_lsn.max(body.checkpoint_lsn + 1),
    })
}

pub(super) fn build_table(
    dir: &Path,
    meta: &TableMeta,
    ring: &AeadKey,
    resolve: &Resolve<'_>,
) -> Result<Table, StorageError> {
    let table = Table::new(
        meta.id,
        meta.name.clone(),
        meta.schema.clone(),
        meta.encryption,
        meta.next_rowid,
    );
    for k in &meta.keys {
        let aad = table_key_aad(meta.id, k.version);
        let key = match (&k.kek, &meta.key_provider) {
            (Some(kek), Some(kp)) => {
                // One key-server call per version of a table whose keys
                // live there.
                match resolve(&kp.provider)?.unwrap(&MasterKeyId(kek.clone()), &k.wrapped, &aad) {
                    Ok(key) => key,
                    Err(sealdb_kms::KmsError::Destroyed { .. } | sealdb_kms::KmsError::UnknownMasterKey { .. }) => {
                        // Shredded on the key server: the table stays, closed,
                        // and says so; the rest of the data directory opens.
                        warn!(table = %meta.name, key = %kek, provider = %kp.provider, "the table's key is destroyed on the key server: the table cannot be read");
                        table.key_gate.destroyed(table_kek_name(&meta.name, kek, &kp.provider));
                        continue;
                    }
                    Err(e) => {
                        return Err(StorageError::TableKey {
                            table: meta.name.clone(),
                            detail: format!("key-encryption key {kek} in {}: {e}", kp.provider),
                        });
                    }
                }
            }
            _ => unwrap_key(ring, &k.wrapped, &aad).map_err(|_| {
                StorageError::integrity(
                    CATALOG_FILE,
                    format!("table key {} version {} failed authentication", meta.name, k.version),
                )
            })?,
        };
        lock(&table.keys).push((k.version, Arc::new(key)));
    }
    let deleted = deleted_rows(meta)?;
    let segments = meta
        .segments
        .iter()
        .map(|s| Arc::new(Segment::new(dir, meta.id, s.clone())))
        .collect::<Vec<_>>();
    if let Some(gone) = segments.iter().find(|s| !s.path.exists()) {
        return Err(segment::missing(&gone.display));
    }
    table.data.store(Arc::new(crate::table::TableData {
        chunks: Vec::new(),
        segments,
        deleted: Arc::new(deleted),
    }));
    Ok(table)
}

/// The deleted row ids a table's catalog entry holds.
pub(crate) fn deleted_rows(meta: &TableMeta) -> Result<RoaringTreemap, StorageError> {
    if meta.deleted.is_empty() {
        return Ok(RoaringTreemap::new());
    }
    StorageError::contain(CATALOG_FILE, || {
        RoaringTreemap::deserialize_from(meta.deleted.as_slice())
            .map_err(|e| StorageError::integrity(CATALOG_FILE, format!("deleted rows of {}: {e}", meta.name)))
    })
}

/// Applies one commit's frames to the tables in memory; returns the segment
/// files it published (`FrameKind::Segments`) that the tables did not list
/// yet, by table id.
pub(super) fn apply_frames(
    dir: &Path,
    tables: &BTreeMap<u64, Arc<Table>>,
    frames: Vec<wal::Frame>,
) -> Result<Vec<(u64, crate::catalog::SegmentMeta)>, StorageError> {
    let mut per_table: BTreeMap<u64, (Vec<Arc<MemChunk>>, RoaringTreemap)> = BTreeMap::new();
    let mut published = Vec::new();
    for frame in frames {
        let Some(table) = tables.get(&frame.table_id) else {
            continue;
        };
        let entry = per_table.entry(frame.table_id).or_default();
        match decode_payload(&frame)? {
            Payload::Rows(batches) => {
                for batch in batches {
                    if batch.schema().fields() != table.stored_schema().fields() {
                        return Err(StorageError::integrity(
                            LOG_DIR,
                            format!("lsn {} holds rows that do not match table {}", frame.lsn, table.name),
                        ));
                    }
                    if let Some(ids) = crate::table::rowids(&batch)
                        && let Some(max) = arrow::compute::max(ids)
                    {
                        table.next_rowid.fetch_max(max.saturating_add(1), Ordering::AcqRel);
                    }
                    entry.0.push(Arc::new(MemChunk { batch, lsn: frame.lsn }));
                }
            }
            Payload::Deleted(set) => entry.1 |= set,
            Payload::Segments(metas) => {
                let listed: HashSet<u64> = table.snapshot().segments.iter().map(|s| s.meta.id).collect();
                let mut added = Vec::new();
                for meta in metas.into_iter().filter(|m| !listed.contains(&m.id)) {
                    let segment = Arc::new(Segment::new(dir, table.id, meta.clone()));
                    if !segment.path.exists() {
                        return Err(segment::missing(&segment.display));
                    }
                    table
                        .next_rowid
                        .fetch_max(meta.max_rowid.saturating_add(1), Ordering::AcqRel);
                    published.push((table.id, meta));
                    added.push(segment);
                }
                table.install(&[], &[], added, None);
            }
            Payload::Link => {}
            Payload::TruncatedBelow(below) => {
                entry.1.insert_range(0..below);
                table.next_rowid.fetch_max(below, Ordering::AcqRel);
            }
        }
    }
    for (id, (chunks, deleted)) in per_table {
        if let Some(table) = tables.get(&id) {
            table.apply(chunks, Some(deleted));
        }
    }
    Ok(published)
}

/// Removes segment files and table directories the catalog does not list
/// (left by a crash during a flush, or by a dropped table).
pub(super) fn remove_orphans(dir: &Path, body: &CatalogBody) -> Result<Vec<String>, StorageError> {
    let mut removed = Vec::new();
    let tables_dir = dir.join(TABLES_DIR);
    let entries = match std::fs::read_dir(&tables_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(StorageError::io("listing", &tables_dir)(e)),
    };
    let known: HashSet<String> = body
        .tables
        .iter()
        .flat_map(|t| t.segments.iter().map(move |s| segment::segment_display(t.id, s.id)))
        .collect();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(table_id) = name.parse::<u64>() else { continue };
        let Ok(files) = std::fs::read_dir(&path) else { continue };
        for f in files.flatten() {
            let display = format!("{TABLES_DIR}/{table_id}/{}", f.file_name().to_string_lossy());
            if !known.contains(&display) && table_id < body.next_table_id {
                std::fs::remove_file(f.path()).map_err(StorageError::io("removing", f.path()))?;
                removed.push(display);
            }
        }
        if !body.tables.iter().any(|t| t.id == table_id) && table_id < body.next_table_id {
            let _ = std::fs::remove_dir(&path);
        }
    }
    Ok(removed)
}

/// Decodes a frame's payload; what does not decode is named by lsn.
pub(crate) fn decode_payload(frame: &wal::Frame) -> Result<Payload, StorageError> {
    let bad = |e: String| StorageError::integrity(LOG_DIR, format!("lsn {}: {e}", frame.lsn));
    Ok(match frame.kind {
        FrameKind::Insert => Payload::Rows(StorageError::contain(LOG_DIR, || decode_ipc(&frame.payload))?),
        FrameKind::Delete => Payload::Deleted(StorageError::contain(LOG_DIR, || {
            RoaringTreemap::deserialize_from(frame.payload.as_slice()).map_err(|e| bad(e.to_string()))
        })?),
        FrameKind::Truncate => {
            let below = frame
                .payload
                .as_slice()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| bad("bad truncate record".into()))?;
            // Row ids are handed out from 0 upwards one by one: no bound
            // near the top of the range was ever written.
            if below > ROWID_LIMIT {
                return Err(bad(format!("truncate bound {below} is beyond any row id")));
            }
            Payload::TruncatedBelow(below)
        }
        FrameKind::Next => Payload::Link,
        FrameKind::Segments => {
            let metas: Vec<crate::catalog::SegmentMeta> =
                serde_json::from_slice(&frame.payload).map_err(|e| bad(format!("bad segment record: {e}")))?;
            if let Some(m) = metas
                .iter()
                .find(|m| m.max_rowid > ROWID_LIMIT || m.min_rowid > m.max_rowid)
            {
                return Err(bad(format!("segment record {} has row ids out of range", m.id)));
            }
            Payload::Segments(metas)
        }
    })
}

pub(super) fn decode_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>, StorageError> {
    let fail =
        |e: arrow::error::ArrowError| StorageError::integrity(LOG_DIR, format!("authenticated rows unreadable: {e}"));
    check_ipc_lengths(bytes)?;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(fail)?;
    reader.map(|b| b.map_err(fail)).collect()
}

/// Checks that every length an Arrow IPC stream declares fits in the bytes
/// there are: Arrow's reader allocates what a message says it holds before
/// reading it, so a declared 2 GB would be allocated (found by fuzzing).
pub(super) fn check_ipc_lengths(bytes: &[u8]) -> Result<(), StorageError> {
    let bad = |what: &str| StorageError::integrity(LOG_DIR, format!("authenticated rows unreadable: {what}"));
    let word = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
    let mut at = 0usize;
    while at < bytes.len() {
        let mut len = word(at).ok_or_else(|| bad("a message length is cut short"))?;
        at += 4;
        if len == u32::MAX {
            len = word(at).ok_or_else(|| bad("a message length is cut short"))?;
            at += 4;
        }
        if len == 0 {
            return Ok(());
        }
        let len = usize::try_from(len).map_err(|_| bad("a message length does not fit"))?;
        let meta = bytes
            .get(at..)
            .and_then(|rest| rest.get(..len))
            .ok_or_else(|| bad("a message header is longer than the record"))?;
        let message =
            arrow::ipc::root_as_message(meta).map_err(|e| bad(&format!("a message header does not decode: {e}")))?;
        at += len;
        let body = usize::try_from(message.bodyLength()).map_err(|_| bad("a message body length is negative"))?;
        if body > bytes.len() - at {
            return Err(bad("a message body is longer than the record"));
        }
        at += body;
    }
    Ok(())
}

pub(super) fn serialize_bitmap(set: &RoaringTreemap) -> Result<Vec<u8>, StorageError> {
    if set.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(set.serialized_size());
    set.serialize_into(&mut out)
        .map_err(|e| StorageError::Internal(format!("encoding deleted rows: {e}")))?;
    Ok(out)
}

pub(super) const RETIRED_SYSTEM_AAD: &[u8] = b"sealdb retired system key";

/// No row id reaches this (2^48: a million rows a second for 8 years).
pub(super) const ROWID_LIMIT: u64 = 1 << 48;
