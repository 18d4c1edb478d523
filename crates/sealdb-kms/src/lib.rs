//! Where sealdb's master keys live.
//!
//! [`KeyProvider`] is the contract: create a master-key version, wrap and
//! unwrap a key under it, report its state, destroy it. sealdb calls a
//! provider a fixed number of times at start-up and at master-key rotation,
//! whatever the number of tables: the storage layer wraps one key-ring key
//! per master-key version with the provider, and everything else under it.
//!
//! [`LocalKeystore`] keeps master keys in `DATA/keystore/master.keys`,
//! sealed under a passphrase with Argon2id when one is given, otherwise in a
//! mode-0600 file (reported as a finding). The KMIP provider plugs into the
//! same trait.
#![forbid(unsafe_code)]

mod error;
mod fs;
mod kmip;
mod local;
mod provider;

pub use error::KmsError;
pub use fs::{fsync_dir, replace_file_durably};
pub use kmip::{KmipMode, KmipProvider};
pub use local::{KEYSTORE_FILE, LocalKeystore};
pub use provider::{KeyProvider, KeyState, MasterKeyId, MasterKeyInfo, ProviderHost, ProviderResolver};
