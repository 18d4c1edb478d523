//! The master-key provider named by `key-provider`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sealdb_config::{Settings, read_secret};
use sealdb_kmip::KmipClientConfig;
use sealdb_kms::{KeyProvider, KmipMode, KmipProvider, LocalKeystore};
use sealdb_pki::{ServerIdentitySource, TrustSource};

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

/// When the master key's state is re-read: (period, grace, period during an
/// outage). `None` for the local keystore, whose state only sealdb changes.
pub(crate) fn key_cache_policy(settings: &Settings) -> Result<Option<(Duration, Duration, Duration)>> {
    let Some(group) = settings.key_provider.as_deref().and_then(|p| p.strip_prefix("kmip:")) else {
        return Ok(None);
    };
    let Some(config) = settings.kmip_hosts.get(group) else {
        bail!("key-provider = \"kmip:{group}\" names no [kmip_hosts.{group}] section");
    };
    let period = config.key_cache_ms.unwrap_or(DEFAULT_KEY_CACHE_MS);
    if period == 0 {
        bail!("[kmip_hosts.{group}] key-cache-ms = 0: give the time between checks of the master key, in milliseconds (default {DEFAULT_KEY_CACHE_MS})");
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
