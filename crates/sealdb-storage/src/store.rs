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
use crate::txn::Transaction;
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            flush_bytes: 64 << 20,
            lock_timeout: Duration::from_secs(10),
            frame_bytes_target: 32 << 20,
            providers: None,
            rekey: RekeyOptions::default(),
            audit: true,
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

mod jobs;
pub use jobs::RekeyOptions;

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
                apply_frames(&by_id, commit)?;
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

    /// The master key over the data now, and its provider's name.
    pub async fn master_key(&self) -> (MasterKeyId, String) {
        let state = self.inner.catalog.lock().await;
        (
            MasterKeyId(state.header.master_id.clone()),
            state.header.provider.clone(),
        )
    }

    /// Moves the data to a new master key created in `to` (another
    /// provider: `ALTER SYSTEM SET key_provider`), online: the key ring is
    /// wrapped by `to`, checked to unwrap again, and the catalog naming
    /// `to` replaces the old one in one atomic write; nothing else is
    /// rewritten. The old provider's keys then protect nothing.
    pub async fn switch_provider(&self, to: Arc<dyn KeyProvider>) -> Result<MasterKeyMove, StorageError> {
        self.detached(move |s| async move { s.switch_provider_now(to).await })
            .await
    }

    async fn switch_provider_now(&self, to: Arc<dyn KeyProvider>) -> Result<MasterKeyMove, StorageError> {
        self.refuse_if_shredded()?;
        let mut state = self.inner.catalog.lock().await;
        let from = (
            state.header.provider.clone(),
            MasterKeyId(state.header.master_id.clone()),
        );
        if from.0 == to.name() {
            return Err(StorageError::Key(sealdb_kms::KmsError::Config(format!(
                "the master key is already in {} (master key {}); to get a new one, use ALTER SYSTEM ROTATE MASTER KEY",
                from.0, from.1
            ))));
        }
        let ring = lock(&self.inner.ring).raw.clone();
        let target = to.clone();
        let (new, wrapped) = tokio::task::spawn_blocking(move || {
            let new = target.create_master_key()?;
            let wrapped = target.wrap(&new, &ring, RING_AAD)?;
            let back = target.unwrap(&new, &wrapped, RING_AAD)?;
            if back.expose() != ring.expose() {
                return Err(StorageError::Internal(format!(
                    "{} returned another key when unwrapping the key ring it had just wrapped; nothing was changed",
                    target.name()
                )));
            }
            Ok::<_, StorageError>((new, wrapped))
        })
        .await
        .map_err(|e| StorageError::Internal(format!("moving the master key: {e}")))??;
        let (name, id) = (to.name(), new.0.clone());
        self.persist_with_header(
            &mut state,
            |header| {
                header.provider = name;
                header.master_id = id;
                header.wrapped_ring = wrapped;
            },
            |_| Ok(()),
        )
        .await?;
        *self.inner.provider.write().unwrap_or_else(|p| p.into_inner()) = to.clone();
        self.inner.gate.confirmed();
        info!(from = %format!("{} {}", from.0, from.1), to = %format!("{} {new}", to.name()), "the master key moved to another key provider");
        self.audit_key(
            "master key moved",
            format!("from {} {} to {} {new}", from.0, from.1, to.name()),
        )
        .await;
        Ok(MasterKeyMove {
            from,
            to: (to.name(), new),
        })
    }

    /// Moves the data to a new master-key version: the provider creates
    /// one, the key ring is wrapped under it, and the catalog naming it
    /// replaces the old one in one atomic write (a crash leaves the old
    /// state or the new, both readable). Nothing else is rewritten; the old
    /// version is then deactivated and may be destroyed without loss.
    /// Returns (old, new). Calls the provider three times.
    pub async fn rotate_master_key(&self) -> Result<(MasterKeyId, MasterKeyId), StorageError> {
        self.detached(|s| async move { s.rotate_master_key_now().await }).await
    }

    async fn rotate_master_key_now(&self) -> Result<(MasterKeyId, MasterKeyId), StorageError> {
        self.refuse_if_shredded()?;
        let mut state = self.inner.catalog.lock().await;
        let old = MasterKeyId(state.header.master_id.clone());
        let ring = lock(&self.inner.ring).raw.clone();
        let (new, wrapped) = self
            .new_master_key_for(&state.header, ring, "master-key rotation")
            .await?;
        let new_id = new.0.clone();
        crate::crash_point("master-key-rotation:before-catalog");
        self.persist_with_header(
            &mut state,
            |header| {
                header.master_id = new_id;
                header.wrapped_ring = wrapped;
            },
            |_| Ok(()),
        )
        .await?;
        drop(state);
        crate::crash_point("master-key-rotation:after-catalog");
        let provider = self.provider();
        info!(from = %old, to = %new, provider = %provider.name(), "master key rotated: the key ring is wrapped under the new version");
        self.audit_key(
            "master key rotated",
            format!("from {old} to {new} in {}; the key ring is re-wrapped", provider.name()),
        )
        .await;
        let retired = old.clone();
        match tokio::task::spawn_blocking(move || provider.deactivate(&retired)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(key = %old, "the old master key could not be deactivated (nothing needs it any more; deactivate or destroy it on the key server): {e}")
            }
            Err(e) => warn!(key = %old, "the old master key could not be deactivated: {e}"),
        }
        Ok((old, new))
    }

    /// Re-reads the master key's state from its provider (one call; a
    /// key-server round trip for KMIP) and sets the [`KeyGate`]: see its
    /// module. A deactivated or compromised key is rotated away from at
    /// once. `grace` is how long the keys in memory keep serving while no
    /// key server answers.
    pub async fn refresh_master_key(&self, grace: Duration) -> RefreshOutcome {
        // The key and its provider, read together (a switch of provider
        // changes both under the catalog lock).
        let (master, provider_name, provider) = {
            let state = self.inner.catalog.lock().await;
            (
                MasterKeyId(state.header.master_id.clone()),
                state.header.provider.clone(),
                self.provider(),
            )
        };
        let key = format!("master key {master} in {provider_name}");
        let asked = master.clone();
        let state = ask_state(move || provider.state(&asked).map_err(StorageError::from)).await;
        if self.master_key().await.0 != master {
            // Rotated or moved meanwhile: this answer is about a key no
            // longer in use.
            return RefreshOutcome::Active { recovered: false };
        }
        // A revoked key: the keys in memory are still good to decrypt, and
        // new data must not go under it.
        let was_closed = self.inner.gate.closed().is_some();
        let outcome = settle(&self.inner.gate, key.clone(), master.0, state, grace, || async {
            self.rotate_master_key().await.map(|(_, to)| to.0)
        })
        .await;
        self.audit_outcome(&key, &outcome, was_closed).await;
        outcome
    }

    /// Records what a key check found, when it matters: a revoked key seen
    /// (and what followed), a destroyed key seen the first time.
    async fn audit_outcome(&self, key: &str, outcome: &RefreshOutcome, was_closed: bool) {
        match outcome {
            RefreshOutcome::Rotated { from, state, to } => {
                self.audit_key(
                    "key revoked seen",
                    format!("{key}: {from} is {state} on the key server; replaced by {to}"),
                )
                .await
            }
            RefreshOutcome::RotationFailed { from, error } => {
                self.audit_key(
                    "key revoked seen",
                    format!("{key}: {from} is revoked; its replacement failed (retried): {error}"),
                )
                .await
            }
            RefreshOutcome::Destroyed { .. } if !was_closed => {
                self.audit_key(
                    "key destroyed seen",
                    format!("{key} is destroyed on the key server: its data is unreadable"),
                )
                .await
            }
            _ => {}
        }
    }

    /// Audits a key operation of the server itself.
    pub(crate) async fn audit_key(&self, event: &str, detail: String) {
        self.audit(AuditEvent::new(event, "sealdb", detail)).await;
    }

    /// Encrypted tables whose current key version is older than `period`
    /// (`key-rotation-period`), with its age, oldest first. Reads memory only.
    pub fn tables_due_for_rotation(&self, period: Duration) -> Vec<(String, Duration)> {
        let published = lock(&self.inner.published).clone();
        let now = now_unix();
        let mut due: Vec<(String, Duration)> = published
            .tables
            .iter()
            .filter(|t| t.encryption != Encryption::None && !t.unpublished)
            .filter(|t| {
                // Keys that cannot be used cannot be rotated either.
                self.inner.gate.check(&t.name).is_ok()
                    && self.table(&t.name).is_some_and(|table| table.check_keys().is_ok())
            })
            .filter_map(|t| {
                let age = Duration::from_secs(now.saturating_sub(t.keys.last()?.created_unix));
                (age >= period).then(|| (t.name.clone(), age))
            })
            .collect();
        due.sort_by_key(|d| std::cmp::Reverse(d.1));
        due
    }

    /// `ALTER TABLE t ROTATE KEY`: a new version of the table's key, used
    /// for every file and log record written from now on; older versions
    /// stay to read what they wrote. Wrapped like the others (by the key
    /// ring, or by the table's own key on its key server). Returns the new
    /// version.
    pub async fn rotate_table_key(&self, name: &str) -> Result<u32, StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move { s.rotate_table_key_now(&name).await })
            .await
    }

    async fn rotate_table_key_now(&self, name: &str) -> Result<u32, StorageError> {
        let table = self
            .table(name)
            .ok_or_else(|| StorageError::NoSuchTable(name.to_owned()))?;
        self.inner.gate.check(name)?;
        table.check_keys()?;
        if table.encryption() == Encryption::None {
            return Err(StorageError::Schema {
                table: name.to_owned(),
                detail: "it is stored without encryption (encryption = 'none'), so it has no key to rotate".into(),
            });
        }
        let current = |state: &CatalogState| {
            state.body.tables.iter().find(|t| t.id == table.id).map(|m| {
                (
                    m.keys.iter().map(|k| k.version).max().unwrap_or(0),
                    m.key_provider.clone(),
                    m.keys.last().and_then(|k| k.kek.clone()),
                )
            })
        };
        let (latest, kp, kek) = {
            let state = self.inner.catalog.lock().await;
            current(&state).ok_or_else(|| StorageError::NoSuchTable(name.to_owned()))?
        };
        let version = latest + 1;
        let key = Key256::random()?;
        let aad = table_key_aad(table.id, version);
        let wrapped = match (&kp, &kek) {
            (Some(kp), Some(kek)) => {
                // Wrapped by the table's own key, on its key server: outside
                // the catalog lock.
                let (store, provider_name, kek, k, aad) = (
                    self.clone(),
                    kp.provider.clone(),
                    MasterKeyId(kek.clone()),
                    key.clone(),
                    aad.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    store
                        .resolve(&provider_name)?
                        .wrap(&kek, &k, &aad)
                        .map_err(StorageError::from)
                })
                .await
                .map_err(|e| StorageError::Internal(format!("wrapping the table key: {e}")))??
            }
            _ => Vec::new(),
        };
        let mut state = self.inner.catalog.lock().await;
        if current(&state) != Some((latest, kp.clone(), kek.clone())) {
            return Err(StorageError::TableKey {
                table: name.to_owned(),
                detail: "its keys changed meanwhile (another rotation); try again".into(),
            });
        }
        // Wrapped by the key ring under the catalog lock, which
        // `ALTER SYSTEM REKEY` holds while it replaces the ring.
        let wrapped = match (&kp, &kek) {
            (Some(_), Some(_)) => wrapped,
            _ => wrap_key(&lock(&self.inner.ring).key, &key, &aad)?,
        };
        let id = table.id;
        let created = now_unix();
        crate::crash_point("table-key-rotation:before-catalog");
        self.persist(&mut state, |body| {
            if let Some(meta) = body.tables.iter_mut().find(|t| t.id == id) {
                meta.keys.push(TableKeyMeta {
                    version,
                    wrapped,
                    created_unix: created,
                    kek,
                });
            }
            Ok(())
        })
        .await?;
        lock(&table.keys).push((version, Arc::new(key)));
        crate::crash_point("table-key-rotation:after-catalog");
        info!(table = %name, version, "table key rotated: new data goes under version {version}");
        self.audit_key(
            "table key rotated",
            format!("table {name}: version {version} created; new data goes under it"),
        )
        .await;
        Ok(version)
    }

    /// Re-reads the state of each table's own key on its key server (one
    /// call per such table) and sets the table's gate as
    /// [`Store::refresh_master_key`] does the store's: a deactivated or
    /// compromised key is replaced at once (every version re-wrapped under
    /// a new key, and a new version for new data). Returns what changed.
    pub async fn refresh_table_keys(&self, grace: Duration) -> Vec<(String, RefreshOutcome)> {
        let keyed: Vec<(u64, String, TableKeyProvider, String)> = {
            let state = self.inner.catalog.lock().await;
            state
                .body
                .tables
                .iter()
                .filter_map(|t| {
                    let kp = t.key_provider.clone()?;
                    let kek = t.keys.last()?.kek.clone()?;
                    Some((t.id, t.name.clone(), kp, kek))
                })
                .collect()
        };
        let mut out = Vec::new();
        for (id, name, kp, kek) in keyed {
            let Some(table) = self.table(&name).filter(|t| t.id == id) else {
                continue;
            };
            let key = table_kek_name(&name, &kek, &kp.provider);
            let (store, provider_name, asked) = (self.clone(), kp.provider.clone(), MasterKeyId(kek.clone()));
            let state =
                ask_state(move || store.resolve(&provider_name)?.state(&asked).map_err(StorageError::from)).await;
            let was_closed = table.key_gate.closed().is_some();
            let outcome = settle(&table.key_gate, key.clone(), kek.clone(), state, grace, || {
                self.replace_table_kek(&table, &kp, &kek)
            })
            .await;
            self.audit_outcome(&key, &outcome, was_closed).await;
            if outcome != (RefreshOutcome::Active { recovered: false }) {
                out.push((name, outcome));
            }
        }
        out
    }

    /// Replaces table `table`'s key on its key server after `old` was
    /// revoked: a new key there wraps every existing version (so `old` may
    /// be destroyed without loss) and a new version for new data. Returns
    /// the new key's id.
    async fn replace_table_kek(
        &self,
        table: &Arc<Table>,
        kp: &TableKeyProvider,
        old: &str,
    ) -> Result<String, StorageError> {
        // Read under the catalog lock, wrap outside it (key-server round
        // trips), and write only if nothing changed meanwhile.
        let current = |state: &CatalogState| {
            state
                .body
                .tables
                .iter()
                .find(|t| t.id == table.id)
                .map(|m| (m.keys.len(), m.keys.last().and_then(|k| k.kek.clone())))
        };
        let (count, latest) = {
            let state = self.inner.catalog.lock().await;
            current(&state).ok_or_else(|| StorageError::NoSuchTable(table.name.clone()))?
        };
        if latest.as_deref() != Some(old) {
            // Replaced meanwhile.
            return Ok(latest.unwrap_or_default());
        }
        let mut versions: Vec<(u32, Arc<Key256>)> = lock(&table.keys).clone();
        if versions.len() != count {
            return Err(StorageError::TableKey {
                table: table.name.clone(),
                detail: "some of its key versions are not open in this process".into(),
            });
        }
        let next = versions.iter().map(|(v, _)| *v).max().unwrap_or(0) + 1;
        versions.push((next, Arc::new(Key256::random()?)));
        let (store, kp_owned, name, id) = (self.clone(), kp.clone(), table.name.clone(), table.id);
        let to_wrap = versions.clone();
        let (kek, wrapped) = tokio::task::spawn_blocking(move || {
            let provider = store.resolve(&kp_owned.provider)?;
            let keys: Vec<(&Key256, Vec<u8>)> = to_wrap
                .iter()
                .map(|(v, k)| (k.as_ref(), table_key_aad(id, *v)))
                .collect();
            Self::new_kek(provider.as_ref(), &kp_owned, &name, &keys)
        })
        .await
        .map_err(|e| StorageError::Internal(format!("replacing the table key: {e}")))??;
        let mut state = self.inner.catalog.lock().await;
        if current(&state) != Some((count, Some(old.to_owned()))) {
            // Changed meanwhile (dropped, or replaced by another check): the
            // new key protects nothing.
            let queued = KeyToDestroy {
                provider: kp.provider.clone(),
                id: kek,
                table: table.name.clone(),
            };
            self.persist(&mut state, |body| {
                body.keys_to_destroy.push(queued);
                Ok(())
            })
            .await?;
            return Err(StorageError::TableKey {
                table: table.name.clone(),
                detail: "its keys changed while the revoked key was being replaced; retried at the next check".into(),
            });
        }
        let created = now_unix();
        let new_kek = kek.clone();
        self.persist(&mut state, |body| {
            if let Some(meta) = body.tables.iter_mut().find(|t| t.id == id) {
                if !meta.retired_keks.iter().any(|k| k == old) {
                    meta.retired_keks.push(old.to_owned());
                }
                for (k, w) in meta.keys.iter_mut().zip(&wrapped) {
                    k.wrapped = w.clone();
                    k.kek = Some(new_kek.clone());
                }
                meta.keys.push(TableKeyMeta {
                    version: next,
                    wrapped: wrapped.last().cloned().unwrap_or_default(),
                    created_unix: created,
                    kek: Some(new_kek.clone()),
                });
            }
            Ok(())
        })
        .await?;
        if let Some(newest) = versions.pop() {
            lock(&table.keys).push(newest);
        }
        info!(table = %table.name, from = %old, to = %kek, version = next, "the table's key was revoked on the key server: its versions are re-wrapped under a new key, and new data goes under version {next}");
        self.audit_key(
            "table key replaced",
            format!(
                "table {}: its key {old} was revoked on the key server; new key {kek}, new version {next}",
                table.name
            ),
        )
        .await;
        Ok(kek)
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

    /// Creates a table, durably, with a fresh table key.
    pub async fn create_table(
        &self,
        name: &str,
        schema: Schema,
        encryption: Encryption,
    ) -> Result<Arc<Table>, StorageError> {
        self.create_keyed(name, schema, encryption, false, None).await
    }

    /// Creates a table that a statement still has to fill (`CREATE TABLE
    /// AS`): until [`Store::publish_table`] makes it durable as a finished
    /// table, a crash leaves nothing of it, as for any statement that was
    /// never acknowledged.
    pub async fn create_unpublished_table(
        &self,
        name: &str,
        schema: Schema,
        encryption: Encryption,
    ) -> Result<Arc<Table>, StorageError> {
        self.create_keyed(name, schema, encryption, true, None).await
    }

    /// Marks a table from [`Store::create_unpublished_table`] finished, durably.
    pub async fn publish_table(&self, name: &str) -> Result<(), StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move { s.publish_table_now(&name).await })
            .await
    }

    async fn publish_table_now(&self, name: &str) -> Result<(), StorageError> {
        let table = self
            .table(name)
            .ok_or_else(|| StorageError::NoSuchTable(name.to_owned()))?;
        let mut state = self.inner.catalog.lock().await;
        self.persist(&mut state, |body| {
            for meta in body.tables.iter_mut().filter(|t| t.id == table.id) {
                meta.unpublished = false;
            }
            Ok(())
        })
        .await
    }

    /// Creates a table whose key versions are wrapped by keys of their own
    /// on `key_provider` (a key server: the table's data is shredded by
    /// destroying them there), or by the key ring when `None`.
    /// `unpublished` as for [`Store::create_unpublished_table`].
    pub async fn create_table_with_keys(
        &self,
        name: &str,
        schema: Schema,
        encryption: Encryption,
        key_provider: Option<TableKeyProvider>,
        unpublished: bool,
    ) -> Result<Arc<Table>, StorageError> {
        self.create_keyed(name, schema, encryption, unpublished, key_provider)
            .await
    }

    /// The provider called `name`.
    fn resolve(&self, name: &str) -> Result<Arc<dyn KeyProvider>, StorageError> {
        resolve_provider(&self.provider(), &self.inner.options, name)
    }

    /// A new table key version wrapped under a new key of its own on
    /// `kp`, named `<prefix>/<namespace>/<table>`: (kek id, wrapped). Blocking.
    fn new_kek(
        provider: &dyn KeyProvider,
        kp: &TableKeyProvider,
        table: &str,
        keys: &[(&Key256, Vec<u8>)],
    ) -> Result<(String, Vec<Vec<u8>>), StorageError> {
        let kek = provider.create_key(&format!("{}/{table}", kp.namespace))?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, aad) in keys {
            out.push(provider.wrap(&kek, key, aad)?);
        }
        Ok((kek.0, out))
    }

    async fn create_keyed(
        &self,
        name: &str,
        schema: Schema,
        encryption: Encryption,
        unpublished: bool,
        key_provider: Option<TableKeyProvider>,
    ) -> Result<Arc<Table>, StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move {
            s.create_keyed_now(&name, schema, encryption, unpublished, key_provider)
                .await
        })
        .await
    }

    async fn create_keyed_now(
        &self,
        name: &str,
        schema: Schema,
        encryption: Encryption,
        unpublished: bool,
        key_provider: Option<TableKeyProvider>,
    ) -> Result<Arc<Table>, StorageError> {
        let key_provider_name = key_provider.as_ref().map(|kp| kp.provider.clone());
        // The id is taken under the catalog lock; a key-server round trip
        // for the table's own key happens outside it.
        let id = {
            let mut state = self.inner.catalog.lock().await;
            if self.table(name).is_some() {
                return Err(StorageError::TableExists(name.to_owned()));
            }
            let id = state.body.next_table_id;
            state.body.next_table_id += 1;
            id
        };
        let key = Key256::random()?;
        let (wrapped, kek) = match &key_provider {
            // Wrapped by the key ring below, under the catalog lock.
            None => (Vec::new(), None),
            Some(kp) => {
                let (store, kp, table, k) = (self.clone(), kp.clone(), name.to_owned(), key.clone());
                let (kek, mut wrapped) = tokio::task::spawn_blocking(move || {
                    let provider = store.resolve(&kp.provider)?;
                    Self::new_kek(provider.as_ref(), &kp, &table, &[(&k, table_key_aad(id, 1))])
                })
                .await
                .map_err(|e| StorageError::Internal(format!("creating the table key: {e}")))??;
                (wrapped.pop().unwrap_or_default(), Some(kek))
            }
        };
        let mut state = self.inner.catalog.lock().await;
        if self.table(name).is_some() {
            // Created meanwhile by another session: this key goes.
            if let (Some(kek), Some(kp)) = (kek, &key_provider) {
                let queued = KeyToDestroy {
                    provider: kp.provider.clone(),
                    id: kek,
                    table: name.to_owned(),
                };
                self.persist(&mut state, |body| {
                    body.keys_to_destroy.push(queued);
                    Ok(())
                })
                .await?;
            }
            return Err(StorageError::TableExists(name.to_owned()));
        }
        let wrapped = match key_provider {
            None => wrap_key(&lock(&self.inner.ring).key, &key, &table_key_aad(id, 1))?,
            Some(_) => wrapped,
        };
        let meta = TableMeta {
            id,
            name: name.to_owned(),
            schema: schema.clone(),
            encryption,
            created_unix: now_unix(),
            keys: vec![TableKeyMeta {
                version: 1,
                wrapped,
                created_unix: now_unix(),
                kek,
            }],
            next_rowid: 0,
            segments: Vec::new(),
            deleted: Vec::new(),
            unpublished,
            key_provider,
            retired_keks: Vec::new(),
        };
        let table = Arc::new(Table::new(id, name.to_owned(), schema, encryption, 0));
        lock(&table.keys).push((1, Arc::new(key)));
        self.persist(&mut state, |body| {
            body.next_table_id = body.next_table_id.max(id + 1);
            body.tables.push(meta);
            Ok(())
        })
        .await?;
        self.inner
            .tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), table.clone());
        self.audit_key(
            "table key created",
            format!(
                "table {name}: version 1{}",
                match &key_provider_name {
                    Some(p) => format!(", wrapped by its own key in {p}"),
                    None => String::new(),
                }
            ),
        )
        .await;
        Ok(table)
    }

    /// Drops a table: its keys are destroyed (the catalog without them is
    /// durable) before its files are removed.
    pub async fn drop_table(&self, name: &str) -> Result<(), StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move { s.drop_table_now(&name).await })
            .await
    }

    async fn drop_table_now(&self, name: &str) -> Result<(), StorageError> {
        let table = self
            .table(name)
            .ok_or_else(|| StorageError::NoSuchTable(name.to_owned()))?;
        // No transaction may be writing it.
        let _write = tokio::time::timeout(self.inner.options.lock_timeout, table.write_lock.clone().lock_owned())
            .await
            .map_err(|_| StorageError::LockTimeout(name.to_owned()))?;
        let mut state = self.inner.catalog.lock().await;
        // The table's own keys on key servers go too (crypto-shredding: a
        // copy of its files or of an old catalog is then unreadable): queued
        // in the same catalog write, destroyed below and, if that fails, by
        // the next key check.
        let keks: Vec<KeyToDestroy> = state
            .body
            .tables
            .iter()
            .filter(|t| t.id == table.id)
            .flat_map(TableMeta::keks_to_destroy)
            .collect();
        // A table under the key ring: the ring is replaced and the master
        // key with it, and the old master key is queued for destruction, so
        // that no copy of an older catalog (which holds the table's keys
        // under the old ring) opens with the keys that remain.
        let ring_wrapped = state
            .body
            .tables
            .iter()
            .filter(|t| t.id == table.id)
            .any(|t| t.keys.iter().any(|k| k.kek.is_none()));
        let rotated = if ring_wrapped {
            Some(self.ring_without(&state, table.id, name).await?)
        } else {
            None
        };
        let has_keks = !keks.is_empty();
        let queued = has_keks || rotated.is_some();
        match &rotated {
            Some(rotated) => {
                let (master_id, wrapped_ring, wrapped_system) = (
                    rotated.master.0.clone(),
                    rotated.wrapped_ring.clone(),
                    rotated.wrapped_system.clone(),
                );
                self.persist_with_header(
                    &mut state,
                    |header| {
                        header.master_id = master_id;
                        header.wrapped_ring = wrapped_ring;
                        header.wrapped_system = wrapped_system;
                    },
                    |body| {
                        body.tables = rotated.tables.clone();
                        body.retired_system_keys = rotated.retired.clone();
                        body.keys_to_destroy.extend(keks);
                        body.keys_to_destroy.push(rotated.old_master.clone());
                        Ok(())
                    },
                )
                .await?;
                *lock(&self.inner.ring) = Ring {
                    key: AeadKey::new(&rotated.ring),
                    raw: rotated.ring.clone(),
                };
            }
            None => {
                self.persist(&mut state, |body| {
                    body.tables.retain(|t| t.id != table.id);
                    body.keys_to_destroy.extend(keks);
                    Ok(())
                })
                .await?;
            }
        }
        drop(state);
        table.dropped.store(true, Ordering::Release);
        self.inner
            .tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        table.forget_keys();
        self.audit_key(
            "table keys destroyed",
            format!(
                "table {name} dropped: its table keys left the catalog{}{}",
                match &rotated {
                    Some(r) => format!(
                        "; the key ring is replaced under master key {} and master key {} is queued for destruction",
                        r.master, r.old_master.id
                    ),
                    None => String::new(),
                },
                if has_keks {
                    "; its keys on the key server are queued for destruction"
                } else {
                    ""
                }
            ),
        )
        .await;
        let data = table.snapshot();
        for s in &data.segments {
            s.mark_obsolete();
        }
        let freed: u64 = data.chunks.iter().map(|c| c.batch.get_array_memory_size() as u64).sum();
        self.release_memory(freed);
        table.install(&data.chunks, &data.segments, Vec::new(), None);
        drop(data);
        let table_dir = self.inner.dir.join(TABLES_DIR).join(table.id.to_string());
        // Files still read by running queries go when those queries end.
        let _ = std::fs::remove_dir(&table_dir);
        if queued {
            // Before the drop is acknowledged; what fails stays queued for
            // the next key check.
            self.destroy_pending_keys().await;
        }
        Ok(())
    }

    /// A new master-key version from the provider of the catalog `header`
    /// names, and `ring` wrapped under it (two provider calls). `what`
    /// names the operation in errors.
    async fn new_master_key_for(
        &self,
        header: &CatalogHeader,
        ring: Key256,
        what: &'static str,
    ) -> Result<(MasterKeyId, Vec<u8>), StorageError> {
        let provider = self.provider();
        if provider.name() != header.provider {
            return Err(StorageError::Internal(format!(
                "the catalog's master key is in {} but this process holds {}; nothing was changed",
                header.provider,
                provider.name()
            )));
        }
        tokio::task::spawn_blocking(move || {
            let new = provider.create_master_key()?;
            let wrapped = provider.wrap(&new, &ring, RING_AAD)?;
            Ok::<_, StorageError>((new, wrapped))
        })
        .await
        .map_err(|e| StorageError::Internal(format!("{what}: {e}")))?
    }

    /// A new key ring, and a new master key wrapping it, for the catalog
    /// without table `dropped`: every other table's ring-wrapped keys, the
    /// system key and the retired system keys re-wrapped under the new
    /// ring. The old master key is returned for the destruction queue.
    async fn ring_without(&self, state: &CatalogState, dropped: u64, name: &str) -> Result<RingRotation, StorageError> {
        let ring = Key256::random()?;
        let new_ring = AeadKey::new(&ring);
        let old_ring = AeadKey::new(&lock(&self.inner.ring).raw);
        let rewrap = |wrapped: &[u8], aad: &[u8], what: &str| -> Result<Vec<u8>, StorageError> {
            let key = unwrap_key(&old_ring, wrapped, aad)
                .map_err(|_| StorageError::integrity(CATALOG_FILE, format!("{what} failed authentication")))?;
            Ok(wrap_key(&new_ring, &key, aad)?)
        };
        let mut tables: Vec<TableMeta> = state.body.tables.iter().filter(|t| t.id != dropped).cloned().collect();
        for meta in &mut tables {
            for k in meta.keys.iter_mut().filter(|k| k.kek.is_none()) {
                let what = format!("the key of table {} version {}", meta.name, k.version);
                k.wrapped = rewrap(&k.wrapped, &table_key_aad(meta.id, k.version), &what)?;
            }
        }
        let retired = state
            .body
            .retired_system_keys
            .iter()
            .map(|r| {
                Ok(RetiredKey {
                    wrapped: rewrap(&r.wrapped, RETIRED_SYSTEM_AAD, "a retired system key")?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let system = self
            .system_keys()
            .into_iter()
            .next()
            .ok_or_else(|| StorageError::Internal("no system key in memory".into()))?;
        let wrapped_system = wrap_key(&new_ring, &system, SYSTEM_AAD)?;
        let (master, wrapped_ring) = self
            .new_master_key_for(&state.header, ring.clone(), "the key ring's rotation for DROP TABLE")
            .await?;
        Ok(RingRotation {
            ring,
            master,
            wrapped_ring,
            wrapped_system,
            tables,
            retired,
            old_master: KeyToDestroy {
                provider: state.header.provider.clone(),
                id: state.header.master_id.clone(),
                table: format!("{name} (the master key of the key ring before it was dropped)"),
            },
        })
    }

    /// Destroys the keys queued in the catalog (a dropped table's, on its
    /// key server); those destroyed, or already gone, leave the queue.
    /// Returns how many are still queued. Called after DROP TABLE and by
    /// the background key check.
    pub async fn destroy_pending_keys(&self) -> usize {
        let queue = self.inner.catalog.lock().await.body.keys_to_destroy.clone();
        if queue.is_empty() {
            return 0;
        }
        let mut done = Vec::new();
        for key in &queue {
            let store = self.clone();
            let k = key.clone();
            let result = tokio::task::spawn_blocking(move || {
                let provider = store.resolve(&k.provider)?;
                match provider.destroy(&MasterKeyId(k.id.clone())) {
                    Ok(()) => Ok(()),
                    Err(sealdb_kms::KmsError::Kmip(e)) if e.is_not_found() => Ok(()),
                    Err(e) => Err(StorageError::from(e)),
                }
            })
            .await
            .map_err(|e| StorageError::Internal(e.to_string()))
            .and_then(|r| r);
            match result {
                Ok(()) => {
                    info!(table = %key.table, key = %key.id, provider = %key.provider, "destroyed the dropped table's key on the key server");
                    self.audit_key(
                        "key destroyed",
                        format!("key {} of table {} destroyed in {}", key.id, key.table, key.provider),
                    )
                    .await;
                    done.push(key.clone());
                }
                Err(e) => {
                    warn!(table = %key.table, key = %key.id, provider = %key.provider, "could not destroy the dropped table's key on the key server yet (retried at the next key check): {e}")
                }
            }
        }
        if done.is_empty() {
            return queue.len();
        }
        let mut state = self.inner.catalog.lock().await;
        let result = self
            .persist(&mut state, |body| {
                body.keys_to_destroy.retain(|k| !done.contains(k));
                Ok(())
            })
            .await;
        if let Err(e) = result {
            warn!("could not record the destroyed keys (they are destroyed again at the next check): {e}");
        }
        state.body.keys_to_destroy.len()
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

    async fn commit_now(&self, tx: Transaction) -> Result<(), StorageError> {
        let mut frames = Vec::new();
        let mut applies = Vec::new();
        for pending in tx.tables.values() {
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
            let inserts = pending.surviving_inserts()?;
            for group in split_by_bytes(&inserts, self.inner.options.frame_bytes_target) {
                frames.push(FrameSpec {
                    table_id: table.id,
                    kind: FrameKind::Insert,
                    key: key.clone(),
                    payload: encode_ipc(table.stored_schema(), group)?,
                });
            }
            applies.push((table.clone(), inserts, deleted));
        }
        if frames.is_empty() {
            return Ok(());
        }
        let lsn = self.inner.log.commit(frames).await?;
        let mut added = 0u64;
        for (table, inserts, deleted) in applies {
            let chunks: Vec<Arc<MemChunk>> = inserts
                .into_iter()
                .map(|batch| {
                    added += batch.get_array_memory_size() as u64;
                    Arc::new(MemChunk { batch, lsn })
                })
                .collect();
            table.apply(chunks, Some(deleted));
        }
        self.inner.mem_bytes.fetch_add(added, Ordering::AcqRel);
        drop(tx);
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

    async fn checkpoint_now(&self) -> Result<(), StorageError> {
        let _one = self.inner.checkpoint.lock().await;
        let generation = self.inner.catalog.lock().await.body.generation;
        let rotated = self.inner.log.rotate(generation).await?;
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
                let id = {
                    let mut state = self.inner.catalog.lock().await;
                    let id = state.body.next_file_id;
                    state.body.next_file_id += 1;
                    id
                };
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
                Some(Arc::new(Segment::new(&self.inner.dir, table.id, meta)))
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
        let untouched: Vec<(u64, RoaringTreemap, u64)> = self
            .tables()
            .iter()
            .filter(|t| !flushed.iter().any(|(f, ..)| f.id == t.id))
            .map(|t| {
                (
                    t.id,
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
                } else if let Some((_, deleted, next)) = untouched.iter().find(|u| u.0 == meta.id) {
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

    async fn compact_now(&self) -> Result<usize, StorageError> {
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
    async fn rewrite_segments(
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
        let id = {
            let mut state = self.inner.catalog.lock().await;
            let id = state.body.next_file_id;
            state.body.next_file_id += 1;
            id
        };
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

    fn release_memory(&self, bytes: u64) {
        let _ = self
            .inner
            .mem_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_sub(bytes))
            });
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

/// Segments below this size are merged once a table has several.
const SMALL_SEGMENT_BYTES: u64 = 16 << 20;
/// How many small segments a table may have before they are merged.
const SMALL_SEGMENTS_MAX: usize = 4;
/// At most this many rows are merged at once (they are held in memory).
const COMPACTION_ROWS_MAX: u64 = 8 << 20;
/// A segment with at least this share of its rows deleted is rewritten.
const DELETED_SHARE_REWRITE: f64 = 0.25;

/// Which segments of a table to merge now: its small ones once there are
/// more than [`SMALL_SEGMENTS_MAX`], plus any mostly deleted.
fn compaction_plan(data: &crate::TableData) -> Vec<Arc<Segment>> {
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

/// What [`move_master_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKeyMove {
    /// The provider and master key before.
    pub from: (String, MasterKeyId),
    /// The provider and the new master key.
    pub to: (String, MasterKeyId),
}

/// Moves the data directory `dir` (not open elsewhere: it is locked) from
/// its master key in `from` to a new master key created in `to`: the key
/// ring is unwrapped by `from`, wrapped by `to`, checked to unwrap again,
/// and the catalog naming `to` replaces the old one in one atomic write.
/// Nothing else is rewritten. Afterwards `from`'s keys protect nothing
/// and may be destroyed. Blocking; a few provider calls each way.
pub fn move_master_key(
    dir: &Path,
    from: &dyn KeyProvider,
    to: &dyn KeyProvider,
) -> Result<MasterKeyMove, StorageError> {
    let _lock = lock_dir(dir)?;
    let catalog_path = dir.join(CATALOG_FILE);
    if !catalog_path.exists() {
        return Err(StorageError::Missing {
            file: CATALOG_FILE.into(),
            detail: format!("{} is not a sealdb data directory (no catalog)", dir.display()),
        });
    }
    let (mut header, body, (old, _, ring), system) = open_catalog(&catalog_path, from)?;
    let new = to.create_master_key()?;
    let wrapped = to.wrap(&new, &ring, RING_AAD)?;
    let back = to.unwrap(&new, &wrapped, RING_AAD)?;
    if back.expose() != ring.expose() {
        return Err(StorageError::Internal(format!(
            "{} returned another key when unwrapping the key ring it had just wrapped; nothing was changed",
            to.name()
        )));
    }
    let moved = MasterKeyMove {
        from: (header.provider.clone(), old),
        to: (to.name(), new.clone()),
    };
    header.provider = to.name();
    header.master_id = new.0;
    header.wrapped_ring = wrapped;
    catalog::write(dir, &header, &body, &catalog::body_key(&system)?)?;
    Ok(moved)
}

/// The file locked while a process has the data directory open.
pub(crate) const LOCK_FILE: &str = "lock";

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

pub(crate) type OpenedCatalog = (CatalogHeader, CatalogBody, (MasterKeyId, AeadKey, Key256), Key256);

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

const RETIRED_SYSTEM_AAD: &[u8] = b"sealdb retired system key";

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

/// The provider called `name`: the master key's, or another one opened by
/// `options.providers`.
fn resolve_provider(
    master: &Arc<dyn KeyProvider>,
    options: &StoreOptions,
    name: &str,
) -> Result<Arc<dyn KeyProvider>, StorageError> {
    if master.name() == name {
        return Ok(master.clone());
    }
    match &options.providers {
        Some(resolver) => Ok(resolver.provider(name)?),
        None => Err(StorageError::Key(sealdb_kms::KmsError::Config(format!(
            "key provider {name} is not available to this process"
        )))),
    }
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

/// How errors and logs name a table's own key.
fn table_kek_name(table: &str, kek: &str, provider: &str) -> String {
    format!("key {kek} of table {table} in {provider}")
}

type Resolve<'a> = dyn Fn(&str) -> Result<Arc<dyn KeyProvider>, StorageError> + 'a;

fn build_table(dir: &Path, meta: &TableMeta, ring: &AeadKey, resolve: &Resolve<'_>) -> Result<Table, StorageError> {
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

fn apply_frames(tables: &BTreeMap<u64, Arc<Table>>, frames: Vec<wal::Frame>) -> Result<(), StorageError> {
    let mut per_table: BTreeMap<u64, (Vec<Arc<MemChunk>>, RoaringTreemap)> = BTreeMap::new();
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
    Ok(())
}

/// Removes segment files and table directories the catalog does not list
/// (left by a crash during a flush, or by a dropped table).
fn remove_orphans(dir: &Path, body: &CatalogBody) -> Result<Vec<String>, StorageError> {
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

fn split_by_bytes(batches: &[RecordBatch], target: usize) -> Vec<&[RecordBatch]> {
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

fn encode_ipc(schema: &arrow::datatypes::SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, StorageError> {
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
    })
}

/// No row id reaches this (2^48: a million rows a second for 8 years).
const ROWID_LIMIT: u64 = 1 << 48;

fn decode_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>, StorageError> {
    let fail =
        |e: arrow::error::ArrowError| StorageError::integrity(LOG_DIR, format!("authenticated rows unreadable: {e}"));
    check_ipc_lengths(bytes)?;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(fail)?;
    reader.map(|b| b.map_err(fail)).collect()
}

/// Checks that every length an Arrow IPC stream declares fits in the bytes
/// there are: Arrow's reader allocates what a message says it holds before
/// reading it, so a declared 2 GB would be allocated (found by fuzzing).
fn check_ipc_lengths(bytes: &[u8]) -> Result<(), StorageError> {
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

fn serialize_bitmap(set: &RoaringTreemap) -> Result<Vec<u8>, StorageError> {
    if set.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(set.serialized_size());
    set.serialize_into(&mut out)
        .map_err(|e| StorageError::Internal(format!("encoding deleted rows: {e}")))?;
    Ok(out)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
