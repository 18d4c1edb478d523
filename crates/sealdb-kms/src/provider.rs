use sealdb_crypto::Key256;

use crate::KmsError;

/// A master-key version's id within its provider (`1`, `2`, ... for the
/// local keystore; the server's unique identifier for KMIP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MasterKeyId(pub String);

impl std::fmt::Display for MasterKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key's life-cycle state, as KMIP names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Used for new data and to read old data.
    Active,
    /// Used to read old data only; new data goes under a newer version.
    Deactivated,
    /// Suspected known to others: read only, and reported.
    Compromised,
    /// Gone: what it protected cannot be read.
    Destroyed,
}

impl KeyState {
    /// The lower-case name shown in `sys.encryption_keys`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deactivated => "deactivated",
            Self::Compromised => "compromised",
            Self::Destroyed => "destroyed",
        }
    }
}

/// What a provider reports of one master-key version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKeyInfo {
    /// The id.
    pub id: MasterKeyId,
    /// Its state.
    pub state: KeyState,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// A place master keys live: they never leave it in the clear towards disk.
///
/// Calls may block on a network round trip (KMIP): callers run them off the
/// async executor and make as few as they can (one per master-key version
/// at start-up). Implementations count their calls in [`Self::call_count`].
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// `local` or `kmip:GROUP`.
    fn name(&self) -> String;

    /// The newest active master-key version, created if there is none.
    fn current_master_key(&self) -> Result<MasterKeyId, KmsError>;

    /// Creates a new master-key version and makes it current.
    fn create_master_key(&self) -> Result<MasterKeyId, KmsError>;

    /// Seals `key` under master key `id`, binding `aad`.
    fn wrap(&self, id: &MasterKeyId, key: &Key256, aad: &[u8]) -> Result<Vec<u8>, KmsError>;

    /// Opens a key sealed by [`Self::wrap`].
    fn unwrap(&self, id: &MasterKeyId, wrapped: &[u8], aad: &[u8]) -> Result<Key256, KmsError>;

    /// The state of every master-key version the provider holds for us.
    fn list(&self) -> Result<Vec<MasterKeyInfo>, KmsError>;

    /// Destroys master key `id`: what only it protects becomes unreadable.
    fn destroy(&self, id: &MasterKeyId) -> Result<(), KmsError>;

    /// The state of master key `id` now, read from where it lives (a key
    /// server round trip for KMIP). A key the provider no longer has is
    /// [`KeyState::Destroyed`].
    fn state(&self, id: &MasterKeyId) -> Result<KeyState, KmsError>;

    /// Retires master key `id` after a rotation moved everything to a newer
    /// version: it stays to decrypt until an operator destroys it.
    fn deactivate(&self, id: &MasterKeyId) -> Result<(), KmsError>;

    /// Creates and activates a key of its own for one table, named
    /// `<prefix>/<name>` where the provider shows names (a KMIP server's
    /// console). The local keystore has none: tables' keys are wrapped by
    /// the key ring there.
    fn create_key(&self, name: &str) -> Result<MasterKeyId, KmsError> {
        let _ = name;
        Err(KmsError::Config(format!(
            "{} keeps no per-table keys; use key_provider = 'kmip:GROUP' for a table key on a key server",
            self.name()
        )))
    }

    /// Whether the master key is protected at rest (sealed under a
    /// passphrase or held by a key server); `false` is a finding.
    fn protected_at_rest(&self) -> bool;

    /// Calls made to the provider's key operations so far.
    fn call_count(&self) -> u64;

    /// The key servers behind the provider and what was last seen of each
    /// (`sys.kmip_hosts`); empty for the local keystore.
    fn hosts(&self) -> Vec<ProviderHost> {
        Vec::new()
    }
}

/// One key server of a provider, as last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderHost {
    /// The `[kmip_hosts.GROUP]` group.
    pub group: String,
    /// `host:port`.
    pub host: String,
    /// `ok`, `unreachable` or `never tried`.
    pub status: String,
    /// The last failure, when the last attempt failed.
    pub error: Option<String>,
    /// Unix seconds of the last successful round trip.
    pub last_success_unix: Option<u64>,
    /// Milliseconds the last successful round trip took.
    pub latency_ms: Option<f64>,
}

/// Opens the key provider called `local` or `kmip:GROUP` (for tables whose
/// keys live in another provider than the master key's).
pub trait ProviderResolver: Send + Sync + std::fmt::Debug {
    /// The provider called `name`, opened once and shared.
    fn provider(&self, name: &str) -> Result<std::sync::Arc<dyn KeyProvider>, KmsError>;
}
