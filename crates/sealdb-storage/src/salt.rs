//! The random salt of a log or audit file, drawn when the file is begun
//! and kept in its authenticated header: it enters the derivation of every
//! key of the file, so that a data directory restored from a copy, which
//! numbers its new files and records as the original did, never seals
//! different bytes under a key and nonce the original used (`wal.rs`).

use crate::StorageError;

/// Bytes of a file's salt.
pub(crate) const SALT_LEN: usize = 16;

/// A file's salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileSalt(pub(crate) [u8; SALT_LEN]);

impl FileSalt {
    /// A fresh random salt.
    pub(crate) fn random() -> Result<Self, StorageError> {
        let mut salt = [0u8; SALT_LEN];
        sealdb_crypto::random_bytes(&mut salt)?;
        Ok(Self(salt))
    }

    /// The salt at the start of `bytes`.
    pub(crate) fn read(bytes: &[u8]) -> Option<Self> {
        bytes.get(..SALT_LEN)?.try_into().ok().map(Self)
    }
}

/// The HKDF info of a key of a file: `label`, then a space and the salt
/// for a salted file; `label` alone for a file of the format before salts.
pub(crate) fn salted_info(label: &str, salt: Option<&FileSalt>) -> Vec<u8> {
    match salt {
        None => label.as_bytes().to_vec(),
        Some(salt) => [label.as_bytes(), b" ", &salt.0].concat(),
    }
}
