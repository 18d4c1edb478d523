//! The master-key provider named by `key-provider`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use sealdb_config::{Settings, read_secret};
use sealdb_kms::{KeyProvider, LocalKeystore};
use zeroize::Zeroizing;

/// The local keystore directory inside the data directory.
pub(crate) const KEYSTORE_DIR: &str = "keystore";

/// Opens the configured key provider: the local keystore in
/// `DATA/keystore/`, sealed under `keystore-password-file` or
/// `SEALDB_KEYSTORE_PASSWORD` when one is given. Blocking (Argon2id).
pub(crate) fn provider(settings: &Settings, data: &Path) -> Result<Arc<dyn KeyProvider>> {
    match settings.key_provider.as_deref() {
        None | Some("local") => {}
        Some(other) => bail!(
            "key-provider = \"{other}\" is not available in this build; use \"local\" (KMIP providers are configured with `sealdb kms set`)"
        ),
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
