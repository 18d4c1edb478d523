//! Re-encryption jobs: `ALTER TABLE t REKEY` and `ALTER TABLE t SET
//! (encryption = ...)` rewrite a table's stale segments (under an older key
//! version, or encrypted otherwise than the table now is) in the
//! background, a few at a time, each step one durable catalog write that
//! also records the job's progress. A job left running by a crash resumes
//! at the next start ([`Store::resume_jobs`]): the segments already
//! rewritten are no longer stale, so it carries on where it stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use sealdb_crypto::{AeadKey, Key256, unwrap_key, wrap_key};
use sealdb_kms::MasterKeyId;

use super::{RETIRED_SYSTEM_AAD, RING_AAD, Ring, SYSTEM_AAD, Store, now_unix, table_key_aad};
use crate::StorageError;
use crate::catalog::{self, CATALOG_FILE, Encryption, JobKind, JobMeta, JobState, KeyToDestroy, RetiredKey};
use crate::segment::Segment;
use crate::table::{Table, lock};

/// How re-encryption jobs run.
#[derive(Debug, Clone)]
pub struct RekeyOptions {
    /// Bytes of old files rewritten per second, at most
    /// (`rekey-max-bytes-per-sec`); 0 for no limit.
    pub max_bytes_per_sec: u64,
    /// Keep the older table-key versions when a job finishes
    /// (`keep-old-keys`); by default they are destroyed.
    pub keep_old_keys: bool,
}

impl Default for RekeyOptions {
    fn default() -> Self {
        Self {
            max_bytes_per_sec: DEFAULT_REKEY_BYTES_PER_SEC,
            keep_old_keys: false,
        }
    }
}

/// `rekey-max-bytes-per-sec` when not set: 8 MiB/s. Unthrottled, a REKEY
/// rewrites about 40 MB/s with one core of the 2-core machine it was
/// measured on (`cargo bench -p sealdb --bench rekey`); at 16 MiB/s queries
/// kept 80% of their throughput, at 8 MiB/s about 90%.
pub const DEFAULT_REKEY_BYTES_PER_SEC: u64 = 8 << 20;

/// Bytes of old segments rewritten in one step (one new segment, one
/// catalog write), at most; with a throttle, at most one second's worth.
const STEP_BYTES: u64 = 32 << 20;

/// Finished jobs kept for `sys.jobs`.
const FINISHED_JOBS_KEPT: usize = 100;

impl Store {
    /// `ALTER TABLE name REKEY`: starts (or, when one is running, returns)
    /// the job that rewrites every stale file of the table under its
    /// current key version and encryption, in the background.
    pub async fn rekey_table(&self, name: &str) -> Result<JobMeta, StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move {
            let table = s.table(&name).ok_or_else(|| StorageError::NoSuchTable(name.clone()))?;
            s.inner.gate.check(&name)?;
            table.check_keys()?;
            let job = s.start_job(&table, None).await?;
            s.spawn_job(job.id);
            Ok(job)
        })
        .await
    }

    /// `ALTER TABLE name SET (encryption = ...)`: new data is stored so at
    /// once (the change is durable before this returns), and a rekey job
    /// rewrites the files stored otherwise. Returns the job.
    pub async fn set_table_encryption(&self, name: &str, encryption: Encryption) -> Result<JobMeta, StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move {
            let table = s.table(&name).ok_or_else(|| StorageError::NoSuchTable(name.clone()))?;
            s.inner.gate.check(&name)?;
            table.check_keys()?;
            if encryption == Encryption::Aes256Gcm && table.key(table.key_version()).is_none() {
                return Err(StorageError::TableKey {
                    table: name.clone(),
                    detail: "it has no key to encrypt with".into(),
                });
            }
            let job = s.start_job(&table, Some(encryption)).await?;
            crate::crash_point("set-encryption:after-catalog");
            info!(table = %name, "encryption set to {}: new data is stored so now", encryption.as_str());
            s.audit_key(
                "table encryption set",
                format!("table {name}: encryption = '{}'", encryption.as_str()),
            )
            .await;
            s.spawn_job(job.id);
            Ok(job)
        })
        .await
    }

    /// Every job, running and recent, as of the last catalog write.
    pub fn jobs(&self) -> Vec<JobMeta> {
        lock(&self.inner.published).jobs.clone()
    }

    /// Starts a task for every job a crash or a stop left running. Call
    /// once after [`Store::open`], inside the runtime.
    pub fn resume_jobs(&self) {
        for job in self.jobs().into_iter().filter(|j| j.state == JobState::Running) {
            info!(table = %job.table, job = job.id, "resuming the rekey job: {} of {} bytes were done", job.bytes_done, job.bytes_total);
            self.spawn_job(job.id);
        }
    }

    /// Waits until job `id` is no longer running (tests, benchmarks).
    pub async fn wait_for_job(&self, id: u64) -> Option<JobMeta> {
        loop {
            let job = self.jobs().into_iter().find(|j| j.id == id)?;
            // Ended, and its task has let go of the store (so that dropping
            // this handle closes the data directory).
            if job.state != JobState::Running && !lock(&self.inner.running_jobs).contains(&id) {
                return Some(job);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Records a running job for `table` (or returns the one running), in
    /// the same catalog write as a change of its encryption to `encryption`.
    async fn start_job(&self, table: &Arc<Table>, encryption: Option<Encryption>) -> Result<JobMeta, StorageError> {
        let mut state = self.inner.catalog.lock().await;
        let id = table.id;
        if encryption == Some(Encryption::None)
            && state.body.tables.iter().any(|m| m.id == id && m.key_provider.is_some())
        {
            return Err(StorageError::Schema {
                table: table.name.clone(),
                detail: "its keys live on a key server (key_provider), and encryption = 'none' would leave them unused; copy it into a table created WITH (encryption = 'none') instead".into(),
            });
        }
        let running = state
            .body
            .jobs
            .iter()
            .find(|j| j.table_id == id && j.state == JobState::Running)
            .cloned();
        if let (Some(job), None) = (&running, encryption) {
            return Ok(job.clone());
        }
        let target = encryption.unwrap_or(table.encryption());
        let version = table.key_version();
        let stale = |s: &Segment| match target {
            Encryption::None => s.meta.key_version != 0,
            Encryption::Aes256Gcm => s.meta.key_version != version,
        };
        let data = table.snapshot();
        let bytes_total = data.segments.iter().filter(|s| stale(s)).map(|s| s.meta.bytes).sum();
        if let Some(job) = running {
            // A job runs already: it follows the new encryption as it goes.
            self.persist(&mut state, |body| {
                if let Some(meta) = body.tables.iter_mut().find(|m| m.id == id) {
                    meta.encryption = target;
                }
                Ok(())
            })
            .await?;
            table.set_encryption(target);
            return Ok(job);
        }
        let job = JobMeta {
            id: state.body.jobs.iter().map(|j| j.id).max().unwrap_or(0) + 1,
            kind: JobKind::RekeyTable,
            table_id: table.id,
            table: table.name.clone(),
            target_version: match target {
                Encryption::Aes256Gcm => version,
                Encryption::None => 0,
            },
            state: JobState::Running,
            started_unix: now_unix(),
            finished_unix: None,
            bytes_total,
            bytes_done: 0,
            error: None,
            destroyed_versions: Vec::new(),
        };
        let added = job.clone();
        self.persist(&mut state, |body| {
            if let Some(meta) = body.tables.iter_mut().find(|m| m.id == id) {
                meta.encryption = target;
            }
            body.jobs.push(added);
            let finished = body.jobs.iter().filter(|j| j.state != JobState::Running).count();
            let mut excess = finished.saturating_sub(FINISHED_JOBS_KEPT);
            body.jobs.retain(|j| {
                let drop = excess > 0 && j.state != JobState::Running;
                excess -= usize::from(drop);
                !drop
            });
            Ok(())
        })
        .await?;
        table.set_encryption(target);
        drop(state);
        info!(table = %table.name, job = job.id, "rekey started: {bytes_total} bytes to rewrite");
        self.audit_key(
            "rekey started",
            format!(
                "table {}: job {}, {bytes_total} bytes to rewrite under version {}",
                table.name, job.id, job.target_version
            ),
        )
        .await;
        Ok(job)
    }

    /// Runs job `id` on a task of its own, unless one already does.
    fn spawn_job(&self, id: u64) {
        if !lock(&self.inner.running_jobs).insert(id) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let outcome = store.run_job(id).await;
            if let Err(e) = outcome {
                warn!(job = id, "rekey job failed: {e}");
                store.audit_key("rekey failed", format!("job {id}: {e}")).await;
                if let Err(again) = store
                    .end_job(id, JobState::Failed, Some(e.to_string()), Vec::new())
                    .await
                {
                    warn!(job = id, "could not record that the rekey job failed: {again}");
                }
            }
            let running = store.inner.running_jobs.clone();
            drop(store);
            lock(&running).remove(&id);
        });
    }

    async fn run_job(&self, id: u64) -> Result<(), StorageError> {
        loop {
            let Some(job) = self.jobs().into_iter().find(|j| j.id == id) else {
                return Ok(());
            };
            if job.state != JobState::Running {
                return Ok(());
            }
            let table = self
                .tables()
                .into_iter()
                .find(|t| t.id == job.table_id)
                .ok_or_else(|| {
                    StorageError::NoSuchTable(format!("{} (dropped while it was being rewritten)", job.table))
                })?;
            self.inner.gate.check(&table.name)?;
            table.check_keys()?;
            let began = Instant::now();
            let step = {
                let _one = self.inner.checkpoint.lock().await;
                let plan = step_plan(&table, self.step_bytes());
                if plan.is_empty() {
                    None
                } else {
                    let bytes: u64 = plan.iter().map(|s| s.meta.bytes).sum();
                    let done = self
                        .rewrite_segments(&table, &plan, |body| {
                            if let Some(j) = body.jobs.iter_mut().find(|j| j.id == id) {
                                j.bytes_done += bytes;
                                j.bytes_total = j.bytes_total.max(j.bytes_done);
                            }
                            Ok(())
                        })
                        .await?;
                    if done.is_none() {
                        return Err(StorageError::NoSuchTable(format!(
                            "{} (dropped while it was being rewritten)",
                            job.table
                        )));
                    }
                    Some(bytes)
                }
            };
            let Some(bytes) = step else {
                if self.finish_job(&table, id).await? {
                    return Ok(());
                }
                continue;
            };
            crate::crash_point("rekey:after-step");
            let limit = self.inner.options.rekey.max_bytes_per_sec;
            if limit > 0 {
                let due = Duration::from_secs_f64(bytes as f64 / limit as f64);
                if let Some(wait) = due.checked_sub(began.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Every file is current: flushes what memory and the log hold under
    /// older versions, then destroys the older versions (unless
    /// `keep-old-keys`) and marks the job done. `false` when files became
    /// stale meanwhile (a rotation): another round is due.
    async fn finish_job(&self, table: &Arc<Table>, id: u64) -> Result<bool, StorageError> {
        crate::crash_point("rekey:before-finish");
        // Rows still in the log may be under an older version: after the
        // checkpoint the log files that held them are gone.
        self.checkpoint_now().await?;
        let _one = self.inner.checkpoint.lock().await;
        if !step_plan(table, self.step_bytes()).is_empty() {
            // A rotation meanwhile made files stale again: another round.
            return Ok(false);
        }
        let mut destroyed = Vec::new();
        if !self.inner.options.rekey.keep_old_keys {
            let current = table.key_version();
            let used: Vec<u32> = table.snapshot().segments.iter().map(|s| s.meta.key_version).collect();
            destroyed = lock(&table.keys)
                .iter()
                .map(|(v, _)| *v)
                .filter(|v| *v != current && !used.contains(v))
                .collect();
        }
        self.end_job_with(id, JobState::Done, None, destroyed.clone(), Some(table))
            .await?;
        crate::crash_point("rekey:after-finish");
        if !destroyed.is_empty() {
            lock(&table.keys).retain(|(v, _)| !destroyed.contains(v));
        }
        info!(table = %table.name, job = id, "rekey done; older key versions destroyed: {destroyed:?}");
        self.audit_key(
            "rekey done",
            format!(
                "table {}: job {id}; every file is under the current key; older versions destroyed: {destroyed:?}",
                table.name
            ),
        )
        .await;
        Ok(true)
    }

    async fn end_job(
        &self,
        id: u64,
        end: JobState,
        error: Option<String>,
        destroyed: Vec<u32>,
    ) -> Result<(), StorageError> {
        self.end_job_with(id, end, error, destroyed, None).await
    }

    /// Records the end of job `id`; with `table`, in the same catalog write
    /// its `destroyed` key versions go, and its replaced keys on its key
    /// server are queued for destruction.
    async fn end_job_with(
        &self,
        id: u64,
        end: JobState,
        error: Option<String>,
        destroyed: Vec<u32>,
        table: Option<&Arc<Table>>,
    ) -> Result<(), StorageError> {
        let mut state = self.inner.catalog.lock().await;
        let table_id = table.map(|t| t.id);
        let keep_old = self.inner.options.rekey.keep_old_keys;
        self.persist(&mut state, |body| {
            if let Some(j) = body.jobs.iter_mut().find(|j| j.id == id) {
                j.state = end;
                j.finished_unix = Some(now_unix());
                j.error = error;
                j.destroyed_versions = destroyed.clone();
            }
            if let Some(meta) = table_id.and_then(|tid| body.tables.iter_mut().find(|m| m.id == tid)) {
                meta.keys.retain(|k| !destroyed.contains(&k.version));
                if !keep_old && let Some(kp) = meta.key_provider.clone() {
                    let retired = std::mem::take(&mut meta.retired_keks);
                    let name = meta.name.clone();
                    body.keys_to_destroy.extend(retired.into_iter().map(|id| KeyToDestroy {
                        provider: kp.provider.clone(),
                        id,
                        table: name.clone(),
                    }));
                }
            }
            Ok(())
        })
        .await
    }
}

impl Store {
    fn step_bytes(&self) -> u64 {
        match self.inner.options.rekey.max_bytes_per_sec {
            0 => STEP_BYTES,
            rate => rate.min(STEP_BYTES),
        }
    }
}

/// The next stale segments of `table` to rewrite together: oldest first,
/// about `step` bytes at a time (at least one segment).
fn step_plan(table: &Table, step: u64) -> Vec<Arc<Segment>> {
    let data = table.snapshot();
    let mut plan = Vec::new();
    let mut bytes = 0;
    for s in data.segments.iter().filter(|s| table.is_stale(s)) {
        if !plan.is_empty() && bytes + s.meta.bytes > step {
            break;
        }
        bytes += s.meta.bytes;
        plan.push(s.clone());
    }
    plan
}

impl Store {
    /// `ALTER SYSTEM REKEY`: a new key-ring key and a new system key. The
    /// table keys and the system key are re-wrapped under the new ring
    /// (one call to the master key's provider), the catalog is written
    /// under the new system key, the log continues in a new file under it,
    /// a checkpoint removes the older log files, and the audit log's older
    /// files are rewritten under it. Until the end the catalog keeps the
    /// earlier system keys, so a crash at any point leaves every file
    /// readable; the next `ALTER SYSTEM REKEY` finishes what one left.
    pub async fn rekey_system(&self) -> Result<(), StorageError> {
        self.detached(|s| async move { s.rekey_system_now().await }).await
    }

    async fn rekey_system_now(&self) -> Result<(), StorageError> {
        self.refuse_if_shredded()?;
        let new_ring = Key256::random()?;
        let new_system = Key256::random()?;
        let new_ring_key = AeadKey::new(&new_ring);
        {
            let _one = self.inner.checkpoint.lock().await;
            let mut state = self.inner.catalog.lock().await;
            let provider = self.provider();
            let master = MasterKeyId(state.header.master_id.clone());
            let raw = new_ring.clone();
            let wrapped_ring = tokio::task::spawn_blocking(move || provider.wrap(&master, &raw, RING_AAD))
                .await
                .map_err(|e| StorageError::Internal(format!("system rekey: {e}")))??;
            let old_ring = AeadKey::new(&lock(&self.inner.ring).raw);
            let mut body = state.body.clone();
            for meta in &mut body.tables {
                for k in meta.keys.iter_mut().filter(|k| k.kek.is_none()) {
                    let aad = table_key_aad(meta.id, k.version);
                    let key = unwrap_key(&old_ring, &k.wrapped, &aad).map_err(|_| {
                        StorageError::integrity(
                            CATALOG_FILE,
                            format!(
                                "the key of table {} version {} failed authentication",
                                meta.name, k.version
                            ),
                        )
                    })?;
                    k.wrapped = wrap_key(&new_ring_key, &key, &aad)?;
                }
            }
            let earlier = self.system_keys();
            let mut retired = Vec::with_capacity(earlier.len());
            for k in &earlier {
                retired.push(RetiredKey {
                    wrapped: wrap_key(&new_ring_key, k, RETIRED_SYSTEM_AAD)?,
                });
            }
            let wrapped_system = wrap_key(&new_ring_key, &new_system, SYSTEM_AAD)?;
            crate::crash_point("system-rekey:before-catalog");
            // The catalog goes under the new system key from this write on.
            let old_catalog_key =
                std::mem::replace(&mut *lock(&self.inner.catalog_key), catalog::body_key(&new_system)?);
            let written = self
                .persist_with_header(
                    &mut state,
                    |header| {
                        header.wrapped_ring = wrapped_ring;
                        header.wrapped_system = wrapped_system;
                    },
                    |b| {
                        b.tables = body.tables;
                        b.retired_system_keys = retired;
                        Ok(())
                    },
                )
                .await;
            if let Err(e) = written {
                *lock(&self.inner.catalog_key) = old_catalog_key;
                return Err(e);
            }
            *lock(&self.inner.ring) = Ring {
                key: new_ring_key,
                raw: new_ring,
            };
            let mut keys = vec![new_system.clone()];
            keys.extend(earlier);
            *lock(&self.inner.system) = keys;
            crate::crash_point("system-rekey:after-catalog");
            self.inner
                .log
                .rotate_with(state.body.generation, Some(new_system.clone()))
                .await?;
        }
        // Older log files go with the checkpoint; older audit files are
        // rewritten under the new key.
        self.checkpoint_now().await?;
        crate::crash_point("system-rekey:after-checkpoint");
        if self.inner.audit.is_some() {
            let store = self.clone();
            let keys = self.system_keys();
            let system = new_system.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(writer) = &store.inner.audit {
                    let mut w = lock(writer);
                    w.switch_key(&system)?;
                    w.rewrite_older(&keys)?;
                }
                Ok::<_, StorageError>(())
            })
            .await
            .map_err(|e| StorageError::Internal(format!("system rekey: {e}")))??;
        }
        let _one = self.inner.checkpoint.lock().await;
        let mut state = self.inner.catalog.lock().await;
        self.persist(&mut state, |b| {
            b.retired_system_keys.clear();
            Ok(())
        })
        .await?;
        lock(&self.inner.system).truncate(1);
        info!("system rekey done: new key-ring and system keys; the catalog, the log and the audit log are under them");
        self.audit_key(
            "system rekey done",
            "new key-ring and system keys; the catalog, the log and the audit log are rewritten under them".into(),
        )
        .await;
        Ok(())
    }
}
