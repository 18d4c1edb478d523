//! Shared by the storage tests: a local keystore with cheap Argon2id
//! parameters in `DIR/keystore`.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;

use sealdb_crypto::PassphraseKdf;
use sealdb_kms::{KeyProvider, LocalKeystore};

pub fn provider(dir: &Path) -> Arc<dyn KeyProvider> {
    let kdf = PassphraseKdf {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };
    Arc::new(LocalKeystore::open_with_kdf(&dir.join("keystore"), None, kdf).unwrap())
}
