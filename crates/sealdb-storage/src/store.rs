//! The store: opening and recovering a data directory, DDL, commits,
//! checkpoints.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use roaring::RoaringTreemap;
use sealdb_crypto::{AeadKey, Key256, unwrap_key, wrap_key};
use sealdb_kms::{KeyProvider, KeyState, MasterKeyId};
use tracing::{info, warn};

use crate::StorageError;
use crate::audit::{AuditEvent, AuditLog, AuditWriter};
use crate::catalog::{
    self, CATALOG_FILE, CatalogBody, CatalogHeader, Encryption, KeyToDestroy, RetiredKey, TableKeyMeta,
    TableKeyProvider, TableMeta,
};
use crate::inventory::{self, KeyRecord, Published, TableSummary};
use crate::keygate::{KeyGate, RefreshOutcome};
use crate::segment::{self, Segment, TABLES_DIR};
use crate::table::{MemChunk, Table, lock, without_deleted};
use crate::txn::{Pending, Transaction};
use crate::wal::{self, FrameKey, FrameKind, FrameSpec, LOG_DIR, LogWriter};

/// Tunables.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Unflushed rows (Arrow bytes in memory) that trigger a checkpoint.
    pub flush_bytes: u64,
    /// How long a writer waits for another transaction's table lock.
    pub lock_timeout: Duration,
    /// Largest log frame payload; bigger inserts are split.
    pub frame_bytes_target: usize,
    /// Opens the key providers of tables whose keys live elsewhere than
    /// the master key (`key_provider = 'kmip:GROUP'`).
    pub providers: Option<Arc<dyn sealdb_kms::ProviderResolver>>,
    /// How `ALTER TABLE t REKEY` runs.
    pub rekey: RekeyOptions,
    /// Keep the audit log (`audit-log = on`, the default).
    pub audit: bool,
    /// Rows (Arrow bytes) a transaction holds in memory per table; past
    /// this they are written to an encrypted segment file of their own,
    /// published when the transaction commits (`transaction-spill-bytes`).
    pub spill_bytes: u64,
}

/// `transaction-spill-bytes` when not set: 16 MiB.
pub const DEFAULT_SPILL_BYTES: u64 = 16 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            flush_bytes: 64 << 20,
            lock_timeout: Duration::from_secs(10),
            frame_bytes_target: 32 << 20,
            providers: None,
            rekey: RekeyOptions::default(),
            audit: true,
            spill_bytes: DEFAULT_SPILL_BYTES,
        }
    }
}

/// Segment files of a commit not yet in the log: removed if it fails.
struct StagedGuard(Vec<Arc<Segment>>);

impl Drop for StagedGuard {
    fn drop(&mut self) {
        for segment in &self.0 {
            segment.mark_obsolete();
        }
    }
}

/// What opening a data directory found and did.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Whether the directory was initialized now.
    pub created: bool,
    /// Commits replayed from the log.
    pub replayed_commits: u64,
    /// A partial frame at the end of the newest log file, discarded (a
    /// crash while writing it: it was never acknowledged).
    pub torn_tail: Option<String>,
    /// Files no longer referenced that were removed.
    pub removed_files: Vec<String>,
    /// Key-provider calls made while opening.
    pub provider_calls: u64,
    /// Tables dropped because the `CREATE TABLE AS` that made them did not
    /// finish before a crash.
    pub abandoned_tables: Vec<String>,
}

struct CatalogState {
    header: CatalogHeader,
    body: CatalogBody,
}

struct Ring {
    key: AeadKey,
    /// Kept to re-wrap under a new master-key version (zeroized on drop).
    raw: Key256,
}

/// What `DROP TABLE` writes when it replaces the key ring.
struct RingRotation {
    ring: Key256,
    master: MasterKeyId,
    wrapped_ring: Vec<u8>,
    wrapped_system: Vec<u8>,
    tables: Vec<TableMeta>,
    retired: Vec<RetiredKey>,
    old_master: KeyToDestroy,
}

struct Inner {
    dir: PathBuf,
    /// Replaced by [`Store::switch_provider`], under the catalog lock.
    provider: RwLock<Arc<dyn KeyProvider>>,
    ring: std::sync::Mutex<Ring>,
    gate: Arc<KeyGate>,
    /// The catalog body's key, from the system key.
    catalog_key: std::sync::Mutex<AeadKey>,
    /// The system key first, then earlier ones still needed to read older
    /// log and audit files (see `ALTER SYSTEM REKEY`).
    system: std::sync::Mutex<Vec<Key256>>,
    catalog: tokio::sync::Mutex<CatalogState>,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
    log: LogWriter,
    checkpoint: tokio::sync::Mutex<()>,
    /// Held (shared) by a commit from its log write until its rows are in
    /// memory, and (exclusively) by a checkpoint while it starts a new log
    /// file: every commit the old files hold is then in memory, so the
    /// checkpoint writes it into a segment before it removes those files.
    commit_window: tokio::sync::RwLock<()>,
    options: StoreOptions,
    mem_bytes: AtomicU64,
    /// The catalog as last written, for `key_records`/`table_summaries`.
    published: std::sync::Mutex<Arc<Published>>,
    /// Jobs with a task working on them in this process.
    /// Jobs a task runs. Shared apart from the store, so that a task
    /// leaves the set only after it let go of the store.
    running_jobs: Arc<std::sync::Mutex<HashSet<u64>>>,
    /// `None` with `audit-log = off`.
    audit: Option<std::sync::Mutex<AuditWriter>>,
    /// Records that could not be written (a full disk), since start.
    audit_failures: AtomicU64,
    /// Held (locked) while the store is open: one process per directory.
    _lock: std::fs::File,
}

/// An open data directory. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

mod checkpoint;
mod ddl;
mod jobs;
mod keys;
mod recovery;

use checkpoint::*;
pub use jobs::RekeyOptions;
pub use keys::move_master_key;
use keys::*;
use recovery::*;
pub(crate) use recovery::{decode_payload, deleted_rows, lock_dir, open_catalog, scan_log, system_keys};

const RING_AAD: &[u8] = b"sealdb key-ring key";
const SYSTEM_AAD: &[u8] = b"sealdb system key";

pub(crate) fn table_key_aad(table_id: u64, version: u32) -> Vec<u8> {
    format!("sealdb table key t{table_id} k{version}").into_bytes()
}

impl Store {
    /// Opens `dir`, creating it if it is empty, and recovers committed
    /// writes from the log. Calls the key provider twice (current master
    /// key, unwrap the key ring) whatever the number of tables. Blocking.
    pub fn open(
        dir: &Path,
        provider: Arc<dyn KeyProvider>,
        options: StoreOptions,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        std::fs::create_dir_all(dir).map_err(StorageError::io("creating", dir))?;
        let dir_lock = lock_dir(dir)?;
        let calls_before = provider.call_count();
        let catalog_path = dir.join(CATALOG_FILE);
        let mut report = RecoveryReport::default();
        let (header, mut body, ring_key, system) = if catalog_path.exists() {
            open_catalog(&catalog_path, provider.as_ref())?
        } else {
            if dir.join(LOG_DIR).exists() || dir.join(TABLES_DIR).exists() {
                return Err(StorageError::Missing {
                    file: CATALOG_FILE.into(),
                    detail: format!(
                        "{} holds a log or tables but no catalog; restore the catalog from a backup",
                        dir.display()
                    ),
                });
            }
            report.created = true;
            let master = provider.current_master_key()?;
            let ring = Key256::random()?;
            let wrapped_ring = provider.wrap(&master, &ring, RING_AAD)?;
            let ring_key = AeadKey::new(&ring);
            let system = Key256::random()?;
            let wrapped_system = wrap_key(&ring_key, &system, SYSTEM_AAD)?;
            let ring_key = (ring_key, ring);
            let header = CatalogHeader {
                format: catalog::CATALOG_FORMAT,
                generation: 1,
                provider: provider.name(),
                master_id: master.0.clone(),
                wrapped_ring,
                wrapped_system,
            };
            let body = CatalogBody {
                generation: 1,
                checkpoint_lsn: 0,
                log_seq_min: 1,
                next_table_id: 1,
                next_file_id: 1,
                ..CatalogBody::default()
            };
            catalog::write(dir, &header, &body, &catalog::body_key(&system)?)?;
            (header, body, (master, ring_key.0, ring_key.1), system)
        };

        // A `CREATE TABLE AS` that a crash interrupted was never
        // acknowledged: the table goes (its files with the orphans below,
        // its keys with the next catalog write).
        let mut abandoned_keys = Vec::new();
        for meta in body.tables.iter().filter(|t| t.unpublished) {
            warn!(table = %meta.name, "dropped a table whose CREATE TABLE AS did not finish before a crash");
            report.abandoned_tables.push(meta.name.clone());
            abandoned_keys.extend(meta.keks_to_destroy());
        }
        body.tables.retain(|t| !t.unpublished);
        body.keys_to_destroy.extend(abandoned_keys);
        let mut tables = BTreeMap::new();
        for meta in &body.tables {
            let table = Arc::new(build_table(dir, meta, &ring_key.1, &|name| {
                resolve_provider(&provider, &options, name)
            })?);
            tables.insert(meta.name.clone(), table);
        }
        let by_id: BTreeMap<u64, Arc<Table>> = tables.values().map(|t| (t.id, t.clone())).collect();

        // Replay the log. A table whose own key the key server does not
        // have is open but closed; if the log still holds writes to it, they
        // would be lost at the next checkpoint: stop instead.
        let unkeyed = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let key_of = |table_id: u64, version: u32| {
            let table = by_id.get(&table_id)?;
            let key = table.key(version);
            if key.is_none() && table.key_gate.closed().is_some() {
                lock(&unkeyed).insert(table_id);
            }
            key
        };
        let systems = system_keys(&ring_key.1, &system, &body)?;
        let scan = scan_log(dir, &body, &systems, &key_of)?;
        if let Some(table) = lock(&unkeyed).iter().next().and_then(|id| by_id.get(id)) {
            let why = table.key_gate.closed().map(|c| c.key).unwrap_or_default();
            return Err(StorageError::TableKey {
                table: table.name.clone(),
                detail: format!(
                    "the {why} is not on the key server (destroyed, or a wrong or lagging key server), and the log holds committed writes to the table that need it; nothing was changed: bring the key back and start again"
                ),
            });
        }
        for (seq, path) in &scan.obsolete {
            std::fs::remove_file(path).map_err(StorageError::io("removing", path))?;
            report
                .removed_files
                .push(format!("{LOG_DIR}/{}", wal::log_file_name(*seq)));
        }
        let file_count = scan.files.len();
        for (i, file) in scan.files.into_iter().enumerate() {
            if file.contents.torn_tail && i + 1 == file_count {
                let handle = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&file.path)
                    .map_err(StorageError::io("opening", file.path.as_path()))?;
                handle
                    .set_len(file.contents.good_len)
                    .and_then(|()| handle.sync_all())
                    .map_err(StorageError::io("truncating", file.path.as_path()))?;
                let torn = file.display.clone();
                warn!(file = %torn, "log file ended in a partial frame (a crash during a write that was never acknowledged); discarded it");
                report.torn_tail = Some(file.display.clone());
            }
            for commit in file.contents.commits {
                if commit.last().is_some_and(|f| f.lsn <= body.checkpoint_lsn) || commit.is_empty() {
                    continue;
                }
                for (table_id, meta) in apply_frames(dir, &by_id, commit)? {
                    // Published by a commit whose checkpoint did not finish:
                    // listed now, so the orphan sweep below keeps the file.
                    body.next_file_id = body.next_file_id.max(meta.id.saturating_add(1));
                    if let Some(t) = body.tables.iter_mut().find(|t| t.id == table_id) {
                        t.segments.push(meta);
                    }
                }
                report.replayed_commits += 1;
            }
        }
        let (next_seq, next_lsn) = (scan.next_seq, scan.next_lsn);
        let newest = scan.newest.as_ref().map(|(seq, path)| (*seq, path.as_path()));

        report.removed_files.extend(remove_orphans(dir, &body)?);
        let audit = if options.audit {
            let mut writer = AuditWriter::open(dir, &systems)?;
            if report.created {
                writer.append(&AuditEvent::new(
                    "master key created",
                    "sealdb",
                    format!(
                        "master key {} in {}; new key-ring and system keys",
                        header.master_id,
                        provider.name()
                    ),
                ))?;
            }
            Some(std::sync::Mutex::new(writer))
        } else {
            None
        };
        let log = LogWriter::start(dir, &system, next_seq, next_lsn, body.generation, newest)?;
        let mem_bytes: u64 = tables
            .values()
            .map(|t| {
                t.snapshot()
                    .chunks
                    .iter()
                    .map(|c| c.batch.get_array_memory_size() as u64)
                    .sum::<u64>()
            })
            .sum();
        report.provider_calls = provider.call_count() - calls_before;
        let store = Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                provider: RwLock::new(provider),
                ring: std::sync::Mutex::new(Ring {
                    key: ring_key.1,
                    raw: ring_key.2,
                }),
                gate: Arc::new(KeyGate::default()),
                catalog_key: std::sync::Mutex::new(catalog::body_key(&system)?),
                system: std::sync::Mutex::new(systems),
                catalog: tokio::sync::Mutex::new(CatalogState {
                    header: header.clone(),
                    body: body.clone(),
                }),
                tables: RwLock::new(tables),
                log,
                checkpoint: tokio::sync::Mutex::new(()),
                commit_window: tokio::sync::RwLock::new(()),
                options,
                mem_bytes: AtomicU64::new(mem_bytes),
                published: std::sync::Mutex::new(Arc::new(Published {
                    header: header.clone(),
                    tables: body.tables.clone(),
                    jobs: body.jobs.clone(),
                })),
                running_jobs: Arc::new(std::sync::Mutex::new(HashSet::new())),
                audit,
                audit_failures: AtomicU64::new(0),
                _lock: dir_lock,
            }),
        };
        info!(
            "opened {}: {} tables, {} commits replayed",
            dir.display(),
            store.tables().len(),
            report.replayed_commits
        );
        Ok((store, report))
    }

    /// Every key of the hierarchy with its wrapped-key checksum (never
    /// the key), as of the last catalog write. Calls no key provider.
    pub fn key_records(&self) -> Vec<KeyRecord> {
        let published = lock(&self.inner.published).clone();
        inventory::key_records(&published)
    }

    /// Every table's encryption, key version, size and age.
    pub fn table_summaries(&self) -> Vec<TableSummary> {
        let published = lock(&self.inner.published).clone();
        let tables = self.inner.tables.read().unwrap_or_else(|p| p.into_inner());
        published
            .tables
            .iter()
            .filter_map(|meta| {
                let table = tables.get(&meta.name).filter(|t| t.id == meta.id)?;
                Some(inventory::table_summary(meta, table))
            })
            .collect()
    }

    /// Appends `event` to the audit log (fsynced) unless `audit-log = off`.
    /// A record that cannot be written (a full disk) is counted, reported
    /// by [`Store::audit_failures`] and logged; the action it records has
    /// happened and stands.
    pub async fn audit(&self, event: AuditEvent) {
        if self.inner.audit.is_none() {
            return;
        }
        let store = self.clone();
        let written = tokio::task::spawn_blocking(move || match &store.inner.audit {
            Some(writer) => lock(writer).append(&event).map(|_| ()),
            None => Ok(()),
        })
        .await
        .map_err(|e| StorageError::Internal(format!("audit writer: {e}")))
        .and_then(|r| r);
        if let Err(e) = written {
            self.inner.audit_failures.fetch_add(1, Ordering::AcqRel);
            warn!("an audit record could not be written: {e}");
        }
    }

    /// Whether the audit log is kept (`audit-log = on`).
    pub fn audit_enabled(&self) -> bool {
        self.inner.audit.is_some()
    }

    /// Audit records that could not be written since start.
    pub fn audit_failures(&self) -> u64 {
        self.inner.audit_failures.load(Ordering::Acquire)
    }

    fn system_keys(&self) -> Vec<Key256> {
        lock(&self.inner.system).clone()
    }

    /// The whole audit log, read back and checked (`sys.audit_log`). Blocking.
    pub fn audit_log(&self) -> Result<AuditLog, StorageError> {
        let keys = self.system_keys();
        crate::audit::read(&self.inner.dir, &keys)
    }

    /// Runs `work` on a task of its own and waits for it: a caller that
    /// stops waiting (a cancelled statement) cannot stop it between a
    /// durable catalog write and the matching change in memory.
    async fn detached<T, F, Fut>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Store) -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        tokio::spawn(work(self.clone()))
            .await
            .map_err(|e| StorageError::Internal(format!("storage task: {e}")))?
    }

    /// Refuses to re-wrap keys whose master key was destroyed: that would
    /// undo the shredding.
    fn refuse_if_shredded(&self) -> Result<(), StorageError> {
        match self.inner.gate.closed() {
            Some(c) if c.is_destroyed() => Err(StorageError::KeyUnavailable {
                table: "(all tables)".into(),
                key: c.key,
                state: c.state,
                detail: "its keys are not re-wrapped under another master key: that would undo the shredding".into(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether statements may use the keys in memory (see [`KeyGate`]).
    pub fn key_gate(&self) -> &Arc<KeyGate> {
        &self.inner.gate
    }

    /// Audits a key operation of the server itself.
    pub(crate) async fn audit_key(&self, event: &str, detail: String) {
        self.audit(AuditEvent::new(event, "sealdb", detail)).await;
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The key provider of the master key now.
    pub fn provider(&self) -> Arc<dyn KeyProvider> {
        self.inner.provider.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Options in force.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// All tables, by name.
    pub fn tables(&self) -> Vec<Arc<Table>> {
        self.inner
            .tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The table called `name`.
    pub fn table(&self, name: &str) -> Option<Arc<Table>> {
        self.inner
            .tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// A section kept by an upper layer.
    pub async fn section(&self, name: &str) -> Option<serde_json::Value> {
        self.inner.catalog.lock().await.body.sections.get(name).cloned()
    }

    /// Replaces a section, durably.
    pub async fn set_section(&self, name: &str, value: serde_json::Value) -> Result<(), StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move { s.set_section_now(&name, value).await })
            .await
    }

    async fn set_section_now(&self, name: &str, value: serde_json::Value) -> Result<(), StorageError> {
        let mut state = self.inner.catalog.lock().await;
        self.persist(&mut state, |body| {
            body.sections.insert(name.to_owned(), value);
            Ok(())
        })
        .await
    }

    /// Commits a transaction: logs its writes, waits until they are
    /// durable (sharing the fsync with concurrent commits), then makes them
    /// visible. On error nothing of it is applied.
    ///
    /// Runs to its end even if the caller stops waiting (a cancelled
    /// statement): once frames may be durable they are also applied, so a
    /// later checkpoint never removes a log holding writes memory lacks.
    pub async fn commit(&self, tx: Transaction) -> Result<(), StorageError> {
        if tx.is_empty() {
            return Ok(());
        }
        let store = self.clone();
        tokio::spawn(async move { store.commit_now(tx).await })
            .await
            .map_err(|e| StorageError::Internal(format!("commit task: {e}")))?
    }

    async fn commit_now(&self, mut tx: Transaction) -> Result<(), StorageError> {
        let mut frames = Vec::new();
        let mut applies = Vec::new();
        // Segment files the transaction wrote (its rows past
        // `transaction-spill-bytes`): marked obsolete, so removed, if the
        // commit fails before they are published.
        let mut staged = StagedGuard(Vec::new());
        for pending in tx.tables.values_mut() {
            let table = &pending.table;
            self.inner.gate.check(&table.name)?;
            table.check_keys()?;
            let key = match table.encryption() {
                Encryption::Aes256Gcm => {
                    let (version, key) = table.writing_key()?;
                    FrameKey::Table { version, key }
                }
                Encryption::None => FrameKey::System,
            };
            let mut deleted = pending.committed_deletes();
            if let Some(below) = pending.truncate_below {
                frames.push(FrameSpec {
                    table_id: table.id,
                    kind: FrameKind::Truncate,
                    key: key.clone(),
                    payload: below.to_le_bytes().to_vec(),
                });
            }
            if !deleted.is_empty() {
                frames.push(FrameSpec {
                    table_id: table.id,
                    kind: FrameKind::Delete,
                    key: key.clone(),
                    payload: serialize_bitmap(&deleted)?,
                });
            }
            if let Some(below) = pending.truncate_below {
                deleted.insert_range(0..below);
            }
            let segments = std::mem::take(&mut pending.staged);
            if !segments.is_empty() {
                let metas: Vec<&crate::catalog::SegmentMeta> = segments.iter().map(|s| &s.meta).collect();
                frames.push(FrameSpec {
                    table_id: table.id,
                    kind: FrameKind::Segments,
                    key: key.clone(),
                    payload: serde_json::to_vec(&metas)
                        .map_err(|e| StorageError::Internal(format!("encoding segment records: {e}")))?,
                });
                staged.0.extend(segments.iter().cloned());
            }
            let inserts = pending.surviving_inserts()?;
            for group in split_by_bytes(&inserts, self.inner.options.frame_bytes_target) {
                frames.push(FrameSpec {
                    table_id: table.id,
                    kind: FrameKind::Insert,
                    key: key.clone(),
                    payload: encode_ipc(table.stored_schema(), group)?,
                });
            }
            applies.push((table.clone(), inserts, deleted, segments));
        }
        if frames.is_empty() {
            return Ok(());
        }
        // A commit that publishes segment files is followed by a
        // checkpoint before it is acknowledged, all under the checkpoint
        // lock: no compaction or rewrite can touch those segments while
        // the log is their only record.
        let checkpoint_guard = if staged.0.is_empty() {
            None
        } else {
            Some(self.inner.checkpoint.lock().await)
        };
        {
            let _window = self.inner.commit_window.read().await;
            let lsn = self.inner.log.commit(frames).await?;
            staged.0.clear();
            let mut added = 0u64;
            for (table, inserts, deleted, segments) in applies {
                let chunks: Vec<Arc<MemChunk>> = inserts
                    .into_iter()
                    .map(|batch| {
                        added += batch.get_array_memory_size() as u64;
                        Arc::new(MemChunk { batch, lsn })
                    })
                    .collect();
                table.apply(chunks, Some(deleted));
                if !segments.is_empty() {
                    table.install(&[], &[], segments, None);
                }
            }
            self.inner.mem_bytes.fetch_add(added, Ordering::AcqRel);
        }
        drop(tx);
        if checkpoint_guard.is_some() {
            crate::crash_point("spill:after-commit");
            self.checkpoint_locked().await?;
        }
        Ok(())
    }

    /// Writes the rows `pending` holds in memory to a segment file of its
    /// own (encrypted under the table's current key, durable, unpublished)
    /// once they reach `transaction-spill-bytes`, so that a transaction or
    /// a `COPY` of any size holds a bounded amount in memory. The commit
    /// publishes the file; a rollback removes it; a crash before the
    /// commit leaves an orphan that the next start removes.
    pub async fn spill(&self, pending: &mut Pending) -> Result<(), StorageError> {
        if pending.buffered < self.inner.options.spill_bytes.max(1) {
            return Ok(());
        }
        let batches = pending.surviving_inserts()?;
        // The rows this transaction deleted of its own are left out of the
        // file; their ids need no record any more.
        for batch in &pending.inserts {
            if let Some(ids) = crate::table::rowids(batch) {
                for id in ids.values() {
                    pending.deleted.remove(*id);
                }
            }
        }
        pending.inserts.clear();
        pending.buffered = 0;
        if batches.is_empty() {
            return Ok(());
        }
        let table = pending.table.clone();
        self.inner.gate.check(&table.name)?;
        table.check_keys()?;
        let segment = self.write_segment(&table, batches).await?;
        pending.staged.push(segment);
        crate::crash_point("spill:after-write");
        Ok(())
    }

    /// Every visible row of `table` as of now, read and authenticated from
    /// its segments and memory, with the row-id column. Blocking; for
    /// verification, compaction and tests, not for queries.
    pub fn read_table(&self, table: &Table) -> Result<Vec<RecordBatch>, StorageError> {
        let data = table.snapshot();
        let mut out = Vec::new();
        for s in &data.segments {
            let key = match s.meta.key_version {
                0 => None,
                _ => Some(table.data_key(s)?),
            };
            for b in segment::read_all(&s.path, &s.display, table.id, &s.meta, key.as_deref())? {
                out.push(without_deleted(&b, &data.deleted)?);
            }
        }
        for c in &data.chunks {
            out.push(without_deleted(&c.batch, &data.deleted)?);
        }
        Ok(out)
    }

    async fn persist(
        &self,
        state: &mut CatalogState,
        change: impl FnOnce(&mut CatalogBody) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.persist_with_header(state, |_| {}, change).await
    }

    /// As [`Self::persist`], changing the header too (its master key).
    async fn persist_with_header(
        &self,
        state: &mut CatalogState,
        header_change: impl FnOnce(&mut CatalogHeader),
        change: impl FnOnce(&mut CatalogBody) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut body = state.body.clone();
        change(&mut body)?;
        body.generation += 1;
        let mut header = state.header.clone();
        header_change(&mut header);
        header.generation = body.generation;
        catalog::write(&self.inner.dir, &header, &body, &lock(&self.inner.catalog_key))?;
        *lock(&self.inner.published) = Arc::new(Published {
            header: header.clone(),
            tables: body.tables.clone(),
            jobs: body.jobs.clone(),
        });
        state.body = body;
        state.header = header;
        // Begin a log file that names the new generation, so that an older
        // catalog put back is detected. The change itself is already durable.
        if let Err(e) = self.inner.log.rotate(state.body.generation).await {
            warn!("could not begin a new log file after a catalog change: {e}");
        }
        Ok(())
    }
}

/// What [`move_master_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKeyMove {
    /// The provider and master key before.
    pub from: (String, MasterKeyId),
    /// The provider and the new master key.
    pub to: (String, MasterKeyId),
}

/// The file locked while a process has the data directory open.
pub(crate) const LOCK_FILE: &str = "lock";

pub(crate) type OpenedCatalog = (CatalogHeader, CatalogBody, (MasterKeyId, AeadKey, Key256), Key256);

/// One log file read during recovery or verification.
pub(crate) struct ScannedLog {
    pub path: PathBuf,
    pub display: String,
    pub contents: wal::LogFileContents,
}

/// The live log, read and checked: files in order, obsolete files (older
/// than the catalog needs), where the log resumes.
pub(crate) struct LogScan {
    pub files: Vec<ScannedLog>,
    pub obsolete: Vec<(u64, PathBuf)>,
    pub newest: Option<(u64, PathBuf)>,
    pub next_seq: u64,
    pub next_lsn: u64,
}

/// Asks a key provider for a key's state off the async threads.
async fn ask_state(ask: impl FnOnce() -> Result<KeyState, StorageError> + Send + 'static) -> Result<KeyState, String> {
    match tokio::task::spawn_blocking(ask).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the key-provider thread failed: {e}")),
    }
}

/// Sets `gate` from the state read of key `key` (id `from`), as
/// [`KeyGate`] describes; a revoked key is replaced by `replace`, which
/// returns the new key's id.
async fn settle<Fut>(
    gate: &KeyGate,
    key: String,
    from: String,
    state: Result<KeyState, String>,
    grace: Duration,
    replace: impl FnOnce() -> Fut,
) -> RefreshOutcome
where
    Fut: std::future::Future<Output = Result<String, StorageError>>,
{
    match state {
        Ok(KeyState::Active) => RefreshOutcome::Active {
            recovered: gate.confirmed(),
        },
        Ok(retired @ (KeyState::Deactivated | KeyState::Compromised)) => {
            gate.confirmed();
            match replace().await {
                Ok(to) => RefreshOutcome::Rotated {
                    from,
                    state: retired.as_str().to_owned(),
                    to,
                },
                Err(e) => RefreshOutcome::RotationFailed {
                    from,
                    error: e.to_string(),
                },
            }
        }
        Ok(KeyState::Destroyed) => {
            gate.destroyed(key.clone());
            RefreshOutcome::Destroyed { key }
        }
        Err(error) => {
            let (since, serving) = gate.unreachable(key, &error, grace);
            RefreshOutcome::Unreachable { error, since, serving }
        }
    }
}

type Resolve<'a> = dyn Fn(&str) -> Result<Arc<dyn KeyProvider>, StorageError> + 'a;

/// What an authenticated log frame's payload records.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Inserted rows, with their row ids.
    Rows(Vec<RecordBatch>),
    /// Row ids deleted.
    Deleted(RoaringTreemap),
    /// Every row id below this one deleted.
    TruncatedBelow(u64),
    /// The link to the next file (read by the log reader itself).
    Link,
    /// Segment files written before the commit.
    Segments(Vec<crate::catalog::SegmentMeta>),
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
