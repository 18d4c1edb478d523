//! `sealdb start`: resolve settings, bootstrap an empty data directory, serve.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sealdb_auth::AccessControl;
use sealdb_config::{Secret, Settings, SslMode, TableEncryption, read_secret};
use sealdb_pki::{CertUserMap, CertsDir, KeyType, ServerIdentitySource, TlsFiles, TrustSource};
use sealdb_server::{Server, ServerSettings};
use sealdb_sql::executor::QueryExecutor;
use zeroize::Zeroizing;

use crate::Common;

/// The bootstrap administrator.
pub(crate) const ADMIN: &str = "admin";
const DEFAULT_PORT: u16 = 5433;
const DEFAULT_MAX_CONNECTIONS: u32 = 200;
const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_SUPERUSER_RESERVED_CONNECTIONS: u32 = 3;
const DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS: u32 = 256;
const DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS: u32 = 64;
const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
/// How often the server looks whether unflushed rows call for a checkpoint.
const CHECKPOINT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub(crate) struct StartArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    settings: Settings,
}

/// Query runtime threads per core (see `run`).
const QUERY_THREADS_PER_CORE: usize = 4;

/// Stack of every runtime thread: statements are planned and run by
/// recursive code whose depth follows the statement's nesting, which
/// `sealdb_sql::MAX_EXPRESSION_DEPTH` bounds; this leaves a wide margin
/// at that bound even in an unoptimized build. Virtual memory: only the
/// pages a thread touches are used.
const THREAD_STACK_BYTES: usize = 32 << 20;

pub(crate) fn run(args: StartArgs, hardening: &crate::harden::Hardening) -> Result<()> {
    crate::log::init();
    if hardening.problems.is_empty() {
        tracing::info!("core dumps disabled; process not dumpable");
    }
    for problem in &hardening.problems {
        tracing::warn!("{problem}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(THREAD_STACK_BYTES)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Queries get a runtime of their own: a heavy one never holds up
    // accepting connections, TLS handshakes or other sessions' replies.
    // DataFusion's operators can keep a worker thread for seconds without
    // yielding, so the runtime has more threads than cores: a query that
    // busies as many threads as there are cores leaves others idle for the
    // next session's query, and the operating system shares the cores.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let queries = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(QUERY_THREADS_PER_CORE * cores)
        .thread_name("sealdb-query")
        .thread_stack_size(THREAD_STACK_BYTES)
        .enable_all()
        .build()
        .context("cannot start the query runtime")?;
    let result = runtime.block_on(start(args, QueryExecutor::on(queries.handle().clone())));
    queries.shutdown_timeout(Duration::from_secs(5));
    result
}

/// The settings in force: flags over the config file over defaults.
fn resolve(args: &StartArgs) -> Result<(Settings, PathBuf)> {
    resolve_settings(&args.common, &args.settings)
}

/// Flags over the config file (`--config`, else `DATA/sealdb.conf`) over defaults.
pub(crate) fn resolve_settings(common: &Common, flags: &Settings) -> Result<(Settings, PathBuf)> {
    flags.refuse_secrets_as_flags()?;
    let flag_data = flags.data.clone();
    let explicit_config = common.config.clone();
    let guessed_config = flag_data
        .clone()
        .unwrap_or_else(|| PathBuf::from("sealdb-data"))
        .join("sealdb.conf");
    let file = match &explicit_config {
        Some(path) => Settings::from_file(path)?,
        None if guessed_config.exists() => Settings::from_file(&guessed_config)?,
        None => Settings::default(),
    };
    let merged = flags.merged_over(&file)?;
    let data = merged.data.clone().unwrap_or_else(|| PathBuf::from("sealdb-data"));
    Ok((merged, data))
}

/// Refuses a data directory sealdb cannot write (a read-only mount, a
/// directory of another user) before anything is opened, naming the cause
/// and the fix; nothing in it is changed.
fn check_writable(data: &Path) -> Result<()> {
    let probe = data.join(".sealdb-write-check");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .and_then(|f| f.sync_all());
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => bail!(
            "data directory {} is on a read-only file system ({e}): sealdb writes its log, catalog and segments there; mount it read-write, or start with --data on a writable directory (a read-only copy can still be checked with `sealdb verify --data {}`)",
            data.display(),
            data.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "data directory {} is not writable by this user ({e}): sealdb writes its log, catalog and segments there; run sealdb as the directory's owner, make it writable (chmod u+w), or start with --data on a writable directory",
            data.display()
        ),
        // Other errors (a full disk, say) are for the store to report: it
        // starts on a full disk and serves reads.
        Err(_) => Ok(()),
    }
}

async fn start(args: StartArgs, queries: QueryExecutor) -> Result<()> {
    let (settings, data) = resolve(&args)?;
    let data = absolute(&data)?;
    match settings.role.unwrap_or_default() {
        sealdb_config::Role::Single => {}
        // A leaf opens nothing in its data directory.
        sealdb_config::Role::Leaf => return crate::leaf::run(&settings, &data).await,
        sealdb_config::Role::Aggregator => bail!(
            "role = aggregator is not available yet: the node channel and leaves exist, distributed planning does not (see docs/cluster.md); start with role = single"
        ),
    }
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create data directory {}", data.display()))?;
    check_writable(&data)?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict data directory {} to its owner", data.display()))?;

    let ssl_mode = settings.ssl_mode.unwrap_or_default();
    if ssl_mode == SslMode::Disabled && settings.insecure != Some(true) {
        bail!(
            "ssl-mode = disabled sends passwords and data in the clear; it is refused unless --insecure (or insecure = true) is given as well"
        );
    }
    let certs = CertsDir::new(data.join("certs"), false);
    let uses_own_identity = settings.ssl_cert.is_some() || settings.ssl_keystore.is_some();
    if !uses_own_identity && ssl_mode != SslMode::Disabled {
        bootstrap_certificates(&certs, &authority_dir(&data))?;
    }
    let tls = if ssl_mode == SslMode::Disabled {
        None
    } else {
        Some(tls_files(&settings, &certs)?)
    };
    if settings.ssl_keystore_password.is_some() || settings.ssl_trust_password.is_some() {
        tracing::warn!(
            "a password was given directly; prefer *-password-file or the SEALDB_* variable, which do not show in process listings"
        );
    }
    let opener = crate::keys::ProviderOpener {
        common: args.common.clone(),
        flags: args.settings.clone(),
        data: data.clone(),
    };
    let key_admin = Arc::new(crate::keys::ServerKeyAdmin { opener: opener.clone() });
    let server_settings = ServerSettings {
        host: settings.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned()),
        port: settings.port.unwrap_or(DEFAULT_PORT),
        ssl_mode,
        tls,
        pki_db_client_auth: settings.pki_db_client_auth.unwrap_or(false),
        cert_user_map: CertUserMap::parse(&settings.cert_user_map)?,
        max_connections: settings.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS) as usize,
        superuser_reserved_connections: settings
            .superuser_reserved_connections
            .unwrap_or(DEFAULT_SUPERUSER_RESERVED_CONNECTIONS) as usize,
        max_unauthenticated_connections: settings
            .max_unauthenticated_connections
            .unwrap_or(DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS) as usize,
        max_unauthenticated_per_address: settings
            .max_unauthenticated_per_address
            .unwrap_or(DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS) as usize,
        max_message_bytes: match &settings.max_message_bytes {
            Some(text) => usize::try_from(sealdb_config::parse_byte_size("max-message-bytes", text)?)
                .context("max-message-bytes does not fit this machine's address space")?,
            None => DEFAULT_MAX_MESSAGE_BYTES,
        },
        handshake_timeout: Duration::from_millis(settings.handshake_timeout_ms.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_MS)),
        memory_limit: match &settings.memory_limit {
            Some(text) => Some(
                usize::try_from(sealdb_config::parse_byte_size("memory-limit", text)?)
                    .context("memory-limit is larger than this machine can address")?,
            ),
            None => None,
        },
        default_table_encryption: match settings.default_table_encryption.unwrap_or_default() {
            TableEncryption::Aes256Gcm => sealdb_storage::Encryption::Aes256Gcm,
            TableEncryption::None => sealdb_storage::Encryption::None,
        },
        queries,
        key_admin: Some(key_admin),
        key_rotation_period: match &settings.key_rotation_period {
            Some(text) => Some((
                text.clone(),
                sealdb_config::parse_duration("key-rotation-period", text)?,
            )),
            None => None,
        },
        ca_key_candidates: ca_key_candidates(&data, &settings),
        audit_failed_login_interval: match &settings.audit_failed_login_interval {
            Some(text) => sealdb_config::parse_duration("audit-failed-login-interval", text)?,
            None => Duration::from_secs(60),
        },
    };
    // The key provider and the encrypted store: a wrong passphrase, a
    // damaged catalog or a newer format stops start-up here, changing nothing.
    let provider = crate::keys::provider(&settings, &data)?;
    let store_dir = data.clone();
    let options = sealdb_storage::StoreOptions {
        providers: Some(Arc::new(crate::keys::TableProviders::new(opener))),
        rekey: sealdb_storage::RekeyOptions {
            max_bytes_per_sec: match &settings.rekey_max_bytes_per_sec {
                Some(text) => sealdb_config::parse_byte_size("rekey-max-bytes-per-sec", text)?,
                None => sealdb_storage::RekeyOptions::default().max_bytes_per_sec,
            },
            keep_old_keys: settings.keep_old_keys.unwrap_or(false),
        },
        audit: settings.audit_log.unwrap_or_default() == sealdb_config::OnOff::On,
        spill_bytes: match &settings.transaction_spill_bytes {
            Some(text) => sealdb_config::parse_byte_size("transaction-spill-bytes", text)?,
            None => sealdb_storage::DEFAULT_SPILL_BYTES,
        },
        ..sealdb_storage::StoreOptions::default()
    };
    let (store, recovery) =
        tokio::task::spawn_blocking(move || sealdb_storage::Store::open(&store_dir, provider, options))
            .await
            .context("the storage thread failed")??;
    if let Some(torn) = &recovery.torn_tail {
        tracing::warn!("{torn}: discarded a partial log frame left by a crash");
    }
    tracing::info!(
        "storage open: {} commits replayed, {} key-provider calls",
        recovery.replayed_commits,
        recovery.provider_calls
    );
    // Fold what recovery replayed into segments and drop the old log files,
    // so that restarts and catalog changes do not pile up log files.
    // A full disk does not keep the server from starting: it serves reads,
    // and the background checkpoint retries once space returns.
    match store.checkpoint().await {
        Ok(()) => {}
        Err(e) if e.is_disk_full() => tracing::warn!(
            "the start-up checkpoint failed (the log keeps every acknowledged write; it is retried in the background): {e}"
        ),
        Err(e) => return Err(e).context("the start-up checkpoint failed"),
    }
    // A REKEY a stop or a crash interrupted carries on where it was.
    store.resume_jobs();
    let background = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_CHECK_INTERVAL);
        let mut checkpoints = Backoff::default();
        let mut compactions = Backoff::default();
        loop {
            tick.tick().await;
            if checkpoints.due() && background.wants_checkpoint() {
                let result = background.checkpoint().await;
                if let Some(wait) = checkpoints.record(result.as_ref().err()) {
                    tracing::error!(
                        "checkpoint failed (the log keeps every acknowledged write; next try in {} s): {}",
                        wait.as_secs(),
                        result.err().map(|e| e.to_string()).unwrap_or_default()
                    );
                }
            }
            // Small segments (from frequent checkpoints) and segments mostly
            // deleted are merged into one, in the background.
            if compactions.due() && background.wants_compaction() {
                let result = background.compact().await;
                if let Some(wait) = compactions.record(result.as_ref().err()) {
                    tracing::error!(
                        "compaction failed (the segments it read stay as they were; next try in {} s): {}",
                        wait.as_secs(),
                        result.err().map(|e| e.to_string()).unwrap_or_default()
                    );
                }
            }
        }
    });
    // The master key's state on the key server is re-read every
    // key-cache-ms: revocation rotates, destruction and long outages close
    // the key gate, and service resumes by itself.
    // Always: a group added later (`kms set`) may get tables with keys of
    // their own, and keys of dropped tables may wait to be destroyed.
    let (period, grace, outage_period) =
        crate::keys::key_cache_policy(&settings)?.unwrap_or_else(crate::keys::default_key_cache_policy);
    tokio::spawn(watch_master_key(store.clone(), period, grace, outage_period));
    // Tables' own keys in a task of their own: one round trip per table
    // must not delay the master key's check.
    tokio::spawn(watch_table_keys(store.clone(), period, grace));
    if let Some(text) = &settings.key_rotation_period {
        let every = sealdb_config::parse_duration("key-rotation-period", text)?;
        tokio::spawn(rotate_table_keys(store.clone(), every, text.clone()));
    }
    // Users and grants live in the encrypted catalog; a fresh one gets the
    // bootstrap administrator.
    let access = match store.section(sealdb_sql::ACCESS_SECTION).await {
        Some(stored) => {
            let access = AccessControl::import(&stored).context("reading users and grants from the catalog")?;
            if AccessControl::stored_form_is_outdated(&stored) {
                store
                    .set_section(sealdb_sql::ACCESS_SECTION, access.export())
                    .await
                    .context("updating the stored form of users and grants")?;
            }
            Arc::new(access)
        }
        None => {
            let access = AccessControl::with_bootstrap_admin(ADMIN);
            store
                .set_section(sealdb_sql::ACCESS_SECTION, access.export())
                .await
                .context("writing the bootstrap administrator into the catalog")?;
            Arc::new(access)
        }
    };
    let server = Server::bind(server_settings.clone(), access, Some(store)).await?;
    let bound = server.local_addr()?;
    match sealdb_crypto::locked::status() {
        sealdb_crypto::locked::LockStatus::Locked { pages } => {
            tracing::info!("key memory locked into RAM (mlock, {pages} page(s)): keys are never written to swap");
        }
        sealdb_crypto::locked::LockStatus::Refused { reason } => {
            tracing::warn!("key memory is not locked into RAM, so the kernel may write keys to swap: {reason}");
        }
    }
    print_banner(&server_settings, bound.port(), &certs, uses_own_identity);

    let reload = server.reloader();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading TLS material");
            let _ = reload();
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = server.run() => {}
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
    Ok(())
}

/// Re-reads the master key's state every `period` (every `outage_period`
/// while no key server answers) and logs what changed.
async fn watch_master_key(store: sealdb_storage::Store, period: Duration, grace: Duration, outage_period: Duration) {
    use sealdb_storage::RefreshOutcome;
    const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(60);
    // The first check right away: a key revoked while sealdb was stopped
    // is moved away from at once.
    let mut wait = Duration::ZERO;
    let mut outage_logged = None;
    loop {
        tokio::time::sleep(wait).await;
        wait = period;
        let outcome = store.refresh_master_key(grace).await;
        if !matches!(outcome, RefreshOutcome::Unreachable { .. }) {
            outage_logged = None;
        }
        match outcome {
            RefreshOutcome::Active { recovered: true } => {
                tracing::info!("a key server confirmed the master key again: stored tables are served");
            }
            RefreshOutcome::Active { recovered: false } => {}
            RefreshOutcome::Rotated { from, state, to } => tracing::warn!(
                "master key {from} is {state} on the key server: rotated to new master key {to}; all data is now under it, and {from} may be destroyed"
            ),
            RefreshOutcome::RotationFailed { from, error } => {
                wait = outage_period;
                tracing::error!(
                    "master key {from} is no longer active on the key server, and rotating to a new one failed (retried in {} s): {error}",
                    wait.as_secs()
                );
            }
            RefreshOutcome::Destroyed { key } => {
                tracing::error!(
                    "master key {key} is destroyed on the key server: stored tables can no longer be read or written"
                );
                return;
            }
            RefreshOutcome::Unreachable { error, since, serving } => {
                wait = outage_period;
                // One line when the outage starts or the gate closes, then
                // one a minute.
                let now = std::time::Instant::now();
                let due = outage_logged.is_none_or(|(at, was_serving): (std::time::Instant, bool)| {
                    was_serving != serving || now.duration_since(at) >= OUTAGE_LOG_INTERVAL
                });
                if !due {
                    continue;
                }
                outage_logged = Some((now, serving));
                if serving {
                    tracing::warn!(
                        "no key server answered ({error}); serving from the key cache for {} s more (key-cache-grace-ms), last confirmed {} s ago",
                        grace.saturating_sub(since).as_secs(),
                        since.as_secs()
                    );
                } else {
                    tracing::error!(
                        "no key server answered for {} s, longer than key-cache-grace-ms: stored tables are refused until one does ({error})",
                        since.as_secs()
                    );
                }
            }
        }
    }
}

/// `key-rotation-period`: gives each encrypted table a new key version
/// once its current one is `every` old (new data goes under it; older
/// versions decrypt). Looks a few times per period, at least once a minute.
async fn rotate_table_keys(store: sealdb_storage::Store, every: Duration, text: String) {
    let look = (every / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(look).await;
        for (table, age) in store.tables_due_for_rotation(every) {
            match store.rotate_table_key(&table).await {
                Ok(version) => tracing::info!(
                    "the key of table {table} was {} s old (key-rotation-period = \"{text}\"): new data goes under version {version}",
                    age.as_secs()
                ),
                Err(e) => {
                    tracing::warn!("the key of table {table} is due for rotation and rotating it failed (retried): {e}")
                }
            }
        }
    }
}

/// Re-reads the state of each table's own key every `period`, and
/// destroys the keys of dropped tables still waiting for it.
async fn watch_table_keys(store: sealdb_storage::Store, period: Duration, grace: Duration) {
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        wait = period;
        for (table, outcome) in store.refresh_table_keys(grace).await {
            log_table_key(&table, &outcome);
        }
        store.destroy_pending_keys().await;
    }
}

/// Logs what a refresh found of a table's own key on its key server.
fn log_table_key(table: &str, outcome: &sealdb_storage::RefreshOutcome) {
    use sealdb_storage::RefreshOutcome;
    match outcome {
        RefreshOutcome::Active { recovered: true } => {
            tracing::info!("a key server confirmed the key of table {table} again: it is served");
        }
        RefreshOutcome::Active { recovered: false } => {}
        RefreshOutcome::Rotated { from, state, to } => tracing::warn!(
            "the key {from} of table {table} is {state} on the key server: its key versions are re-wrapped under new key {to}, and new data goes under a new version; {from} may be destroyed"
        ),
        RefreshOutcome::RotationFailed { from, error } => tracing::error!(
            "the key {from} of table {table} is no longer active on the key server, and replacing it failed (retried): {error}"
        ),
        RefreshOutcome::Destroyed { key } => {
            tracing::error!("the {key} is destroyed on the key server: table {table} can no longer be read or written");
        }
        RefreshOutcome::Unreachable { error, serving, .. } => {
            if !serving {
                tracing::error!(
                    "no key server confirmed the key of table {table} within key-cache-grace-ms: it is refused until one does ({error})"
                );
            }
        }
    }
}

pub(crate) fn absolute(p: &Path) -> Result<PathBuf> {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(joined.components().collect())
}

/// Where a fresh start keeps the CA it makes: beside the data directory,
/// never in it (`./sealdb-data` gets `./sealdb-data-ca`). Whoever holds
/// `ca.key` can make a certificate for any user, `admin` included, so it
/// must not travel with the data (backups, snapshots, support bundles).
pub(crate) fn authority_dir(data: &Path) -> PathBuf {
    let name = data
        .file_name()
        .map_or_else(|| "sealdb-data".into(), |n| n.to_string_lossy().into_owned());
    data.parent().unwrap_or(Path::new(".")).join(format!("{name}-ca"))
}

/// Files that would hold a CA's private key where the server can read it:
/// in the data directory's `certs/`, in the CA directory a fresh start
/// made, and beside the CA bundle clients are checked against.
pub(crate) fn ca_key_candidates(data: &Path, settings: &Settings) -> Vec<PathBuf> {
    let mut candidates = vec![data.join("certs").join("ca.key"), authority_dir(data).join("ca.key")];
    if let Some(bundle) = &settings.ssl_trust_ca {
        candidates.push(bundle.with_file_name("ca.key"));
    }
    candidates.dedup();
    candidates
}

/// Creates what is missing of: the CA (in `authority`, outside the data
/// directory, with a copy of its certificate in `certs`), a node
/// certificate for localhost, 127.0.0.1 and this host's name, and a client
/// certificate for `admin`.
fn bootstrap_certificates(certs: &CertsDir, authority: &Path) -> Result<()> {
    let ca = CertsDir::new(authority, false);
    if !certs.ca_cert().exists() {
        if !ca.ca_cert().exists() {
            ca.create_ca(KeyType::EcdsaP256, 3650)?;
            std::fs::set_permissions(authority, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {} to its owner", authority.display()))?;
            eprintln!("created CA {}", ca.ca_cert().display());
            eprintln!(
                "the CA's private key is {}, outside the data directory: it can make a certificate for any user; \
                 move it offline and bring it back only to make certificates \
                 (sealdb cert create-client USER --certs-dir {})",
                ca.ca_key().display(),
                authority.display()
            );
        }
        std::fs::create_dir_all(certs.dir()).with_context(|| format!("cannot create {}", certs.dir().display()))?;
        std::fs::copy(ca.ca_cert(), certs.ca_cert())
            .with_context(|| format!("cannot copy the CA certificate into {}", certs.dir().display()))?;
    }
    // An installation from before the CA moved out keeps its key in certs/.
    let signer = if ca.ca_key().exists() { authority } else { certs.dir() };
    let certs = certs.clone().signed_by(signer);
    if !certs.node_cert().exists() {
        let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        if let Some(h) = host_name()
            && !hosts.contains(&h)
        {
            hosts.push(h);
        }
        certs.create_node(&hosts, None, KeyType::EcdsaP256, 365)?;
        eprintln!(
            "created node certificate {} for {}",
            certs.node_cert().display(),
            hosts.join(", ")
        );
    }
    if !certs.client_cert(ADMIN).exists() {
        certs.create_client(ADMIN, KeyType::EcdsaP256, 365, None)?;
        eprintln!(
            "created client certificate {} for user {ADMIN}",
            certs.client_cert(ADMIN).display()
        );
    }
    Ok(())
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        .then(|| name.to_owned())
}

/// The password of a PKCS#12 store `key` (`ssl-keystore` or
/// `ssl-trust-store`): the `*-password` key, the `*-password-file` key, or
/// `SEALDB_SSL_KEYSTORE_PASSWORD` / `SEALDB_SSL_TRUST_PASSWORD`.
/// The password of a PKCS#12 store: the direct value, else the file, else
/// the environment variable `env`; none at all is an error that names
/// where to put it (`what` needs a password: `file_key` or `env`).
pub(crate) fn store_password(
    what: &str,
    direct: Option<&Secret>,
    file: Option<&Path>,
    file_key: &str,
    env: &str,
) -> Result<Zeroizing<String>> {
    let password = read_secret(direct.map(Secret::expose), file, env)?
        .with_context(|| format!("{what} needs a password: {file_key} or {env}"))?;
    Ok(Zeroizing::new(password))
}

pub(crate) fn tls_files(settings: &Settings, certs: &CertsDir) -> Result<TlsFiles> {
    let identity = match (&settings.ssl_keystore, &settings.ssl_cert) {
        (Some(_), Some(_)) => bail!("set either ssl-keystore or ssl-cert/ssl-private-key, not both"),
        (Some(path), None) => {
            let password = store_password(
                "ssl-keystore",
                settings.ssl_keystore_password.as_ref(),
                settings.ssl_keystore_password_file.as_deref(),
                "ssl-keystore-password-file",
                "SEALDB_SSL_KEYSTORE_PASSWORD",
            )?;
            ServerIdentitySource::Pkcs12 {
                path: path.clone(),
                password,
            }
        }
        (None, Some(cert)) => {
            let key = settings
                .ssl_private_key
                .clone()
                .context("ssl-cert is set but ssl-private-key is not; give the key file of that certificate")?;
            ServerIdentitySource::Pem {
                cert: cert.clone(),
                key,
            }
        }
        (None, None) => {
            if settings.ssl_private_key.is_some() {
                bail!("ssl-private-key is set but ssl-cert is not; give the certificate file as well");
            }
            ServerIdentitySource::Pem {
                cert: certs.node_cert(),
                key: certs.node_key(),
            }
        }
    };
    let trust = match (&settings.ssl_trust_store, &settings.ssl_trust_ca) {
        (Some(_), Some(_)) => bail!("set either ssl-trust-store or ssl-trust-ca, not both"),
        (Some(path), None) => {
            let password = store_password(
                "ssl-trust-store",
                settings.ssl_trust_password.as_ref(),
                settings.ssl_trust_password_file.as_deref(),
                "ssl-trust-password-file",
                "SEALDB_SSL_TRUST_PASSWORD",
            )?;
            Some(TrustSource::Pkcs12 {
                path: path.clone(),
                password,
            })
        }
        (None, Some(ca)) => Some(TrustSource::Pem(ca.clone())),
        (None, None) => certs.ca_cert().exists().then(|| TrustSource::Pem(certs.ca_cert())),
    };
    let min_version = match &settings.ssl_min_version {
        Some(v) => v.parse()?,
        None => Default::default(),
    };
    Ok(TlsFiles {
        identity,
        trust,
        crls: settings.ssl_crl.clone(),
        refuse_expired_crls: match settings.ssl_crl_expired.as_deref() {
            None | Some("allow") => false,
            Some("refuse") => true,
            Some(other) => bail!(
                "ssl-crl-expired = \"{other}\": use allow (the default: accepted, with a warning and a finding) or refuse"
            ),
        },
        min_version,
        cipher_suites: settings.ssl_cipher_suites.clone(),
    })
}

fn print_banner(settings: &ServerSettings, port: u16, certs: &CertsDir, own_identity: bool) {
    let host = match settings.host.as_str() {
        "127.0.0.1" | "::1" | "localhost" => "localhost".to_owned(),
        "0.0.0.0" | "::" => host_name().unwrap_or_else(|| "localhost".to_owned()),
        other => other.to_owned(),
    };
    let mode = match settings.ssl_mode {
        SslMode::Required => "TLS required",
        SslMode::Allowed => "TLS optional: plaintext allowed",
        SslMode::Disabled => "TLS DISABLED: plaintext only",
    };
    println!("sealdb is listening on {}:{port} ({mode})", settings.host);
    if settings.ssl_mode != SslMode::Disabled && !own_identity {
        println!("Connect as {ADMIN} with full certificate verification:");
        println!(
            "  psql \"host={host} port={port} user={ADMIN} dbname=sealdb sslmode=verify-full sslrootcert={} sslcert={} sslkey={}\"",
            certs.ca_cert().display(),
            certs.client_cert(ADMIN).display(),
            certs.client_key(ADMIN).display()
        );
    }
    match settings.default_table_encryption {
        sealdb_storage::Encryption::None => println!(
            "New tables are NOT encrypted (default-table-encryption = none); CREATE TABLE ... WITH (encryption = 'aes-256-gcm') to encrypt one."
        ),
        _ => println!(
            "New tables are encrypted with AES-256-GCM; with the server stopped, `sealdb verify` authenticates every file."
        ),
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Spacing of background retries after failures (a full disk, say): the
/// wait doubles from 2 s up to [`BACKOFF_MAX`], so the log gets one line per
/// try rather than one a second, and resets after a success.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<std::time::Instant>,
}

/// The longest wait between background retries.
const BACKOFF_MAX: Duration = Duration::from_secs(64);

impl Backoff {
    fn due(&self) -> bool {
        self.retry_at.is_none_or(|at| std::time::Instant::now() >= at)
    }

    /// Records an attempt's outcome; after a failure, returns the wait
    /// before the next try.
    fn record<E>(&mut self, error: Option<&E>) -> Option<Duration> {
        if error.is_none() {
            *self = Self::default();
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        let wait = Duration::from_secs(1u64 << self.failures.min(6)).min(BACKOFF_MAX);
        self.retry_at = Some(std::time::Instant::now() + wait);
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_two_to_sixty_four_seconds_and_reset_after_a_success() {
        let mut backoff = Backoff::default();
        assert!(backoff.due());
        let waits: Vec<u64> = (0..8)
            .filter_map(|_| backoff.record(Some(&"disk full")).map(|w| w.as_secs()))
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 64, 64]);
        assert!(!backoff.due(), "not before the wait is over");
        assert_eq!(backoff.record::<&str>(None), None);
        assert!(backoff.due());
        assert_eq!(backoff.record(Some(&"again")), Some(Duration::from_secs(2)));
    }
}
