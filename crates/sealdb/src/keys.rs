//! The master-key provider named by `key-provider`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sealdb_config::{Settings, read_secret};
use sealdb_kmip::KmipClientConfig;
use sealdb_kms::{KeyProvider, KmipMode, KmipProvider, LocalKeystore};
use sealdb_pki::{ServerIdentitySource, TrustSource};

use crate::Common;
use crate::start::store_password;
use zeroize::Zeroizing;

/// The local keystore directory inside the data directory.
pub(crate) const KEYSTORE_DIR: &str = "keystore";

/// Opens the configured key provider: the local keystore in
/// `DATA/keystore/`, sealed under `keystore-password-file` or
/// `SEALDB_KEYSTORE_PASSWORD` when one is given. Blocking (Argon2id).
pub(crate) fn provider(settings: &Settings, data: &Path) -> Result<Arc<dyn KeyProvider>> {
    provider_named(settings, data, settings.key_provider.as_deref().unwrap_or("local"))
}

/// The key provider called `name` (`local` or `kmip:GROUP`), with the
/// settings for it.
pub(crate) fn provider_named(settings: &Settings, data: &Path, name: &str) -> Result<Arc<dyn KeyProvider>> {
    if name != "local" {
        return match name.strip_prefix("kmip:") {
            Some(group) => kmip_provider(settings, data, group),
            None => bail!("key-provider = \"{name}\" is not a key provider; use \"local\" or \"kmip:GROUP\""),
        };
    }
    let passphrase = read_secret(
        None,
        settings.keystore_password_file.as_deref(),
        "SEALDB_KEYSTORE_PASSWORD",
    )?
    .map(Zeroizing::new);
    if passphrase.as_ref().is_some_and(|p| p.is_empty()) {
        bail!(
            "the keystore passphrase is empty; put a passphrase in keystore-password-file or SEALDB_KEYSTORE_PASSWORD"
        );
    }
    let keystore = LocalKeystore::open_or_create(&data.join(KEYSTORE_DIR), passphrase.as_ref().map(|p| p.as_bytes()))?;
    if !keystore.protected_at_rest() {
        tracing::warn!(
            "the master key is stored unsealed in {} (mode 0600); set keystore-password-file or SEALDB_KEYSTORE_PASSWORD to seal it",
            keystore.path().display()
        );
    }
    Ok(Arc::new(keystore))
}

/// This installation's name on key servers, kept in `DATA/keystore/`:
/// its master keys are named `sealdb/<id>/master-key`.
pub(crate) const INSTANCE_FILE: &str = "kmip-instance";

/// The KMIP provider for `[kmip_hosts.GROUP]`.
pub(crate) fn kmip_provider(settings: &Settings, data: &Path, group: &str) -> Result<Arc<dyn KeyProvider>> {
    let (client, mode) = kmip_client_config(settings, group)?;
    let prefix = instance_prefix(data)?;
    Ok(Arc::new(KmipProvider::new(group, client, mode, &prefix)?))
}

/// The name prefix of this installation's objects on key servers.
pub(crate) fn instance_prefix(data: &Path) -> Result<String> {
    Ok(format!("sealdb/{}", instance_id(&data.join(KEYSTORE_DIR))?))
}

/// How to reach `[kmip_hosts.GROUP]`, and its mode.
pub(crate) fn kmip_client_config(settings: &Settings, group: &str) -> Result<(KmipClientConfig, KmipMode)> {
    let Some(config) = settings.kmip_hosts.get(group) else {
        bail!(
            "key-provider = \"kmip:{group}\" names no [kmip_hosts.{group}] section; add one to the config file (or run `sealdb kms set {group} ...`)"
        );
    };
    if config.hosts.is_empty() {
        bail!("[kmip_hosts.{group}] has no hosts; add hosts = [\"kms1.example.com:5696\"]");
    }
    let identity = match (&config.client_cert, &config.client_key, &config.keystore) {
        (Some(cert), Some(key), None) => ServerIdentitySource::Pem {
            cert: cert.clone(),
            key: key.clone(),
        },
        (None, None, Some(path)) => ServerIdentitySource::Pkcs12 {
            path: path.clone(),
            password: store_password(
                &format!("[kmip_hosts.{group}] keystore"),
                config.keystore_password.as_ref(),
                config.keystore_password_file.as_deref(),
                "keystore-password-file",
                "SEALDB_KMIP_KEYSTORE_PASSWORD",
            )?,
        },
        _ => bail!(
            "[kmip_hosts.{group}] needs the client identity for mutual TLS: client-cert and client-key (PEM), or keystore (PKCS#12), not both"
        ),
    };
    let trust = match (&config.ca, &config.truststore, &settings.ssl_trust_ca_server) {
        (Some(ca), None, _) => TrustSource::Pem(ca.clone()),
        (None, Some(path), _) => TrustSource::Pkcs12 {
            path: path.clone(),
            password: store_password(
                &format!("[kmip_hosts.{group}] truststore"),
                config.truststore_password.as_ref(),
                config.truststore_password_file.as_deref(),
                "truststore-password-file",
                "SEALDB_KMIP_TRUSTSTORE_PASSWORD",
            )?,
        },
        (None, None, Some(ca)) => TrustSource::Pem(ca.clone()),
        _ => bail!(
            "[kmip_hosts.{group}] needs the CA of the key servers: ca (PEM) or truststore (PKCS#12), or ssl-trust-ca-server"
        ),
    };
    sealdb_pki::install_crypto_provider();
    let tls = sealdb_pki::client_config(&identity, &trust).with_context(|| format!("[kmip_hosts.{group}]"))?;
    let version = match &config.kmip_version {
        Some(v) => Some(v.parse::<sealdb_kmip::ProtocolVersion>()?),
        None => None,
    };
    let mode = match &config.mode {
        Some(m) => m.parse::<KmipMode>()?,
        None => KmipMode::Wrap,
    };
    let client = KmipClientConfig {
        hosts: config.hosts.clone(),
        tls,
        timeout: Duration::from_millis(config.timeout_ms.unwrap_or(DEFAULT_KMIP_TIMEOUT_MS)),
        version,
    };
    Ok((client, mode))
}

/// How long keys are used between two checks of the master key's state on
/// the key server, by default.
pub(crate) const DEFAULT_KEY_CACHE_MS: u64 = 300_000;
/// How long the keys in memory keep serving while no key server answers,
/// by default: an hour for the operators to bring one back.
pub(crate) const DEFAULT_KEY_CACHE_GRACE_MS: u64 = 3_600_000;
/// During an outage the key servers are asked at least this often, so
/// service resumes soon after one is back.
const OUTAGE_RETRY: Duration = Duration::from_secs(5);

/// When the keys' states on the key servers are re-read: the master key's
/// group's key cache when the master key is on a key server, else the
/// group with the shortest key cache (tables may keep keys there). `None`
/// without any `[kmip_hosts]`: the local keystore's state only sealdb changes.
pub(crate) fn key_cache_policy(settings: &Settings) -> Result<Option<KeyCachePolicy>> {
    let master = settings.key_provider.as_deref().unwrap_or("local");
    if master.starts_with("kmip:") {
        return key_cache_policy_for(settings, master);
    }
    let shortest = settings
        .kmip_hosts
        .iter()
        .min_by_key(|(_, g)| g.key_cache_ms.unwrap_or(DEFAULT_KEY_CACHE_MS))
        .map(|(name, _)| format!("kmip:{name}"));
    match shortest {
        Some(group) => key_cache_policy_for(settings, &group),
        None => Ok(None),
    }
}

/// The key cache's times when no `[kmip_hosts]` says otherwise.
pub(crate) fn default_key_cache_policy() -> KeyCachePolicy {
    let period = Duration::from_millis(DEFAULT_KEY_CACHE_MS);
    (
        period,
        Duration::from_millis(DEFAULT_KEY_CACHE_GRACE_MS),
        period.min(OUTAGE_RETRY),
    )
}

/// (period, grace, period during an outage) of the key cache.
pub(crate) type KeyCachePolicy = (Duration, Duration, Duration);

/// [`key_cache_policy`] of the provider called `provider`.
fn key_cache_policy_for(settings: &Settings, provider: &str) -> Result<Option<KeyCachePolicy>> {
    let Some(group) = provider.strip_prefix("kmip:") else {
        return Ok(None);
    };
    let Some(config) = settings.kmip_hosts.get(group) else {
        bail!("key-provider = \"kmip:{group}\" names no [kmip_hosts.{group}] section");
    };
    let period = config.key_cache_ms.unwrap_or(DEFAULT_KEY_CACHE_MS);
    if period == 0 {
        bail!(
            "[kmip_hosts.{group}] key-cache-ms = 0: give the time between checks of the master key, in milliseconds (default {DEFAULT_KEY_CACHE_MS})"
        );
    }
    let period = Duration::from_millis(period);
    let grace = Duration::from_millis(config.key_cache_grace_ms.unwrap_or(DEFAULT_KEY_CACHE_GRACE_MS));
    Ok(Some((period, grace, period.min(OUTAGE_RETRY))))
}

/// Default limit of one KMIP round trip.
pub(crate) const DEFAULT_KMIP_TIMEOUT_MS: u64 = 5_000;

/// The installation's id (16 hex digits), created on first use.
fn instance_id(dir: &Path) -> Result<String> {
    let path = dir.join(INSTANCE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_owned();
            if id.len() != 16 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!(
                    "{} is damaged (expected 16 hex digits); restore it from a backup",
                    path.display()
                );
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 8];
            sealdb_crypto::random_bytes(&mut bytes)?;
            let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            sealdb_kms::replace_file_durably(&path, id.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The config file sealdb reads: `--config`, else `DATA/sealdb.conf` if it
/// exists.
pub(crate) fn config_file(common: &Common, data: &Path) -> Option<PathBuf> {
    match &common.config {
        Some(path) => Some(path.clone()),
        None => Some(data.join("sealdb.conf")).filter(|p| p.exists()),
    }
}

/// Overwrites a key file with zeros, syncs, and removes it (the directory
/// synced too). Copy-on-write file systems and SSDs may keep old blocks:
/// the file's master keys protect nothing once the key ring is re-wrapped.
pub(crate) fn shred(path: &Path) -> Result<()> {
    use std::io::Write;
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])
        .and_then(|()| file.sync_all())
        .with_context(|| format!("overwriting {}", path.display()))?;
    drop(file);
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        sealdb_kms::fsync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// What follows a move of the master key to another provider (offline by
/// `kms enable`, online by `ALTER SYSTEM SET key_provider`): the old key is
/// retired (the local key file destroyed) and `key-provider` is kept in
/// the config file. One line per action.
pub(crate) fn after_move(
    common: &Common,
    data: &Path,
    moved: &sealdb_storage::MasterKeyMove,
    old: &dyn KeyProvider,
) -> Vec<String> {
    let mut out = Vec::new();
    let ((from, old_id), (to, new_id)) = (&moved.from, &moved.to);
    out.push(format!(
        "re-wrapped the key ring under master key {new_id} in {to}: the catalog names {to}"
    ));
    if from == "local" {
        let keystore = data.join(KEYSTORE_DIR).join(sealdb_kms::KEYSTORE_FILE);
        match shred(&keystore) {
            Ok(()) => out.push(format!(
                "destroyed the local master key file {} (it held master key {old_id}; nothing needs it any more)",
                keystore.display()
            )),
            Err(e) => out.push(format!(
                "could not destroy the local master key file {}: {e:#}; remove it by hand, nothing needs it any more",
                keystore.display()
            )),
        }
    } else {
        match old.deactivate(old_id) {
            Ok(()) => out.push(format!(
                "deactivated master key {old_id} in {from}: destroy it there once no backup needs it"
            )),
            Err(e) => out.push(format!(
                "could not deactivate master key {old_id} in {from} ({e}); nothing needs it any more"
            )),
        }
    }
    match config_file(common, data) {
        Some(path) => match sealdb_config::set_key_provider(&path, to) {
            Ok(()) => out.push(format!("set key-provider = \"{to}\" in {}", path.display())),
            Err(e) => out.push(format!(
                "could not set key-provider = \"{to}\" in {}: {e}; set it by hand before the next start",
                path.display()
            )),
        },
        None => out.push(format!(
            "start sealdb with --key-provider {to} from now on (or put key-provider = \"{to}\" in its config file)"
        )),
    }
    out
}

/// Opens key providers by name with the config file as it is at that
/// moment (so `kms set` may add a group while the server runs).
#[derive(Debug, Clone)]
pub(crate) struct ProviderOpener {
    pub(crate) common: Common,
    pub(crate) flags: Settings,
    pub(crate) data: PathBuf,
}

impl ProviderOpener {
    /// The provider called `name`; config errors without their source lines.
    fn open(&self, name: &str) -> Result<Arc<dyn KeyProvider>, String> {
        let (settings, _) = crate::start::resolve_settings(&self.common, &self.flags).map_err(|e| config_error(&e))?;
        provider_named(&settings, &self.data, name).map_err(|e| format!("{e:#}"))
    }
}

/// `ALTER SYSTEM SET key_provider` for the running server. The master key's
/// watcher runs from the start, so the new key is watched at once.
#[derive(Debug)]
pub(crate) struct ServerKeyAdmin {
    pub(crate) opener: ProviderOpener,
}

impl sealdb_sql::KeyAdmin for ServerKeyAdmin {
    fn open(&self, name: &str) -> Result<Arc<dyn KeyProvider>, String> {
        self.opener.open(name)
    }

    fn moved(&self, moved: &sealdb_storage::MasterKeyMove, old: Arc<dyn KeyProvider>) -> Vec<String> {
        after_move(&self.opener.common, &self.opener.data, moved, old.as_ref())
    }
}

/// The key providers of tables whose keys live on a key server (possibly
/// another group than the master key's), opened on first use and kept.
#[derive(Debug)]
pub(crate) struct TableProviders {
    opener: ProviderOpener,
    opened: std::sync::Mutex<std::collections::HashMap<String, Arc<dyn KeyProvider>>>,
}

impl TableProviders {
    pub(crate) fn new(opener: ProviderOpener) -> Self {
        Self {
            opener,
            opened: std::sync::Mutex::default(),
        }
    }
}

impl sealdb_kms::ProviderResolver for TableProviders {
    fn provider(&self, name: &str) -> Result<Arc<dyn KeyProvider>, sealdb_kms::KmsError> {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = opened.get(name) {
            return Ok(p.clone());
        }
        if !name.starts_with("kmip:") {
            return Err(sealdb_kms::KmsError::Config(format!(
                "{name} keeps no per-table keys; use key_provider = 'kmip:GROUP'"
            )));
        }
        let provider = self.opener.open(name).map_err(sealdb_kms::KmsError::Config)?;
        opened.insert(name.to_owned(), provider.clone());
        Ok(provider)
    }
}

/// A config file error for a client or the log while the server runs: its
/// first line only (where it is), never the quoted source line, which may
/// hold a password.
fn config_error(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let first = text.lines().next().unwrap_or_default().trim_end();
    format!("re-reading the config file failed: {first} (run `sealdb kms test GROUP --config FILE` to see the line)")
}
