//! The local keystore: master keys in one file under `DATA/keystore/`.
//!
//! ```text
//! header (plaintext, authenticated as associated data when sealed)
//!   magic      8  "SEALKEYS"
//!   format     4  u32 LE (1)
//!   protection 1  0 = none (mode 0600 file), 1 = Argon2id passphrase
//!   memory     4  u32 LE, Argon2id KiB      } zero when protection = 0
//!   iterations 4  u32 LE                    }
//!   lanes      4  u32 LE                    }
//!   salt      16                            }
//! body (protection 1: nonce 12 | AES-256-GCM ciphertext | tag 16)
//!   count      4  u32 LE, at most 4096
//!   count x { id 4 u32 LE | state 1 | created 8 u64 LE | key 32 }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sealdb_crypto::{AeadKey, Key256, PassphraseKdf, random_bytes, unwrap_key, wrap_key};
use zeroize::{Zeroize, Zeroizing};

use crate::{KeyProvider, KeyState, KmsError, MasterKeyId, MasterKeyInfo, replace_file_durably};

/// The keystore's file name inside its directory.
pub const KEYSTORE_FILE: &str = "master.keys";

const MAGIC: &[u8; 8] = b"SEALKEYS";
const FORMAT: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 1 + 12 + 16;
const ENTRY_LEN: usize = 4 + 1 + 8 + 32;
/// Master-key versions a keystore may hold.
const KEYS_MAX: usize = 4096;

struct Entry {
    id: u32,
    state: KeyState,
    created_unix: u64,
    key: AeadKey,
    raw: Key256,
}

struct Inner {
    entries: Vec<Entry>,
}

/// Master keys kept in `DIR/master.keys`.
pub struct LocalKeystore {
    path: PathBuf,
    passphrase: Option<Zeroizing<Vec<u8>>>,
    kdf: PassphraseKdf,
    inner: Mutex<Inner>,
    calls: AtomicU64,
}

impl std::fmt::Debug for LocalKeystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeystore")
            .field("path", &self.path)
            .field("sealed", &self.passphrase.is_some())
            .finish_non_exhaustive()
    }
}

impl LocalKeystore {
    /// Opens the keystore in `dir`, creating it with one master key if it
    /// does not exist. With a passphrase, an unsealed keystore is sealed.
    pub fn open_or_create(dir: &Path, passphrase: Option<&[u8]>) -> Result<Self, KmsError> {
        Self::open_with_kdf(dir, passphrase, PassphraseKdf::default())
    }

    /// As [`Self::open_or_create`], with Argon2id parameters for a new seal
    /// (tests use cheap ones).
    pub fn open_with_kdf(dir: &Path, passphrase: Option<&[u8]>, kdf: PassphraseKdf) -> Result<Self, KmsError> {
        let path = dir.join(KEYSTORE_FILE);
        let io = |source| KmsError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Only when it is not so already: a read-only copy (of a
            // backup, say) opens for reading.
            let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
            if mode != 0o700 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            }
        }
        let store = Self {
            path: path.clone(),
            passphrase: passphrase.map(|p| Zeroizing::new(p.to_vec())),
            kdf,
            inner: Mutex::new(Inner { entries: Vec::new() }),
            calls: AtomicU64::new(0),
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let (entries, was_sealed) = store.decode(&bytes)?;
                store.lock().entries = entries;
                if store.passphrase.is_some() && !was_sealed {
                    // Seal a keystore that was kept in the clear.
                    store.persist(&store.lock())?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut inner = store.lock();
                inner.entries.push(new_entry(1)?);
                store.persist(&inner)?;
            }
            Err(e) => return Err(io(e)),
        }
        Ok(store)
    }

    /// The keystore file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the entries whole: every
        // change is made on a copy and swapped in after it is persisted.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn decode(&self, bytes: &[u8]) -> Result<(Vec<Entry>, bool), KmsError> {
        let corrupt = |reason: &str| KmsError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_owned(),
        };
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(corrupt("not a sealdb keystore (bad magic or too short)"));
        }
        let format = u32_at(bytes, 8);
        if format > FORMAT {
            return Err(KmsError::NewerFormat {
                path: self.path.clone(),
                found: format,
                supported: FORMAT,
            });
        }
        let header = &bytes[..HEADER_LEN];
        let body = &bytes[HEADER_LEN..];
        let (plain, sealed) = match bytes[12] {
            0 => (Zeroizing::new(body.to_vec()), false),
            1 => {
                let Some(passphrase) = &self.passphrase else {
                    return Err(KmsError::PassphraseRequired {
                        path: self.path.clone(),
                    });
                };
                let kdf = PassphraseKdf {
                    memory_kib: u32_at(bytes, 13),
                    iterations: u32_at(bytes, 17),
                    parallelism: u32_at(bytes, 21),
                };
                let seal_key = AeadKey::new(&kdf.derive(passphrase, &bytes[25..41])?);
                let plain = seal_key
                    .open_with_nonce_prefix(header, body)
                    .map_err(|_| KmsError::WrongPassphrase {
                        path: self.path.clone(),
                    })?;
                (Zeroizing::new(plain), true)
            }
            _ => return Err(corrupt("unknown protection byte")),
        };
        if plain.len() < 4 {
            return Err(corrupt("body too short"));
        }
        let count = u32_at(&plain, 0) as usize;
        if count > KEYS_MAX || plain.len() != 4 + count * ENTRY_LEN {
            return Err(corrupt("body length does not match its key count"));
        }
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let at = 4 + i * ENTRY_LEN;
            let state = match plain[at + 4] {
                0 => KeyState::Active,
                1 => KeyState::Deactivated,
                2 => KeyState::Compromised,
                _ => return Err(corrupt("unknown key state")),
            };
            let raw = Key256::from_slice(&plain[at + 13..at + 45])?;
            entries.push(Entry {
                id: u32_at(&plain, at),
                state,
                created_unix: u64_at(&plain, at + 5),
                key: AeadKey::new(&raw),
                raw,
            });
        }
        Ok((entries, sealed))
    }

    fn persist(&self, inner: &Inner) -> Result<(), KmsError> {
        let mut body = Zeroizing::new(Vec::with_capacity(4 + inner.entries.len() * ENTRY_LEN));
        body.extend_from_slice(&(inner.entries.len() as u32).to_le_bytes());
        for e in &inner.entries {
            body.extend_from_slice(&e.id.to_le_bytes());
            body.push(match e.state {
                KeyState::Active => 0,
                KeyState::Deactivated => 1,
                KeyState::Compromised | KeyState::Destroyed => 2,
            });
            body.extend_from_slice(&e.created_unix.to_le_bytes());
            body.extend_from_slice(e.raw.expose());
        }
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT.to_le_bytes());
        let mut file = match &self.passphrase {
            None => {
                header.push(0);
                header.extend_from_slice(&[0u8; 28]);
                let mut file = header;
                file.extend_from_slice(&body);
                file
            }
            Some(passphrase) => {
                header.push(1);
                header.extend_from_slice(&self.kdf.memory_kib.to_le_bytes());
                header.extend_from_slice(&self.kdf.iterations.to_le_bytes());
                header.extend_from_slice(&self.kdf.parallelism.to_le_bytes());
                let mut salt = [0u8; 16];
                random_bytes(&mut salt)?;
                header.extend_from_slice(&salt);
                let seal_key = AeadKey::new(&self.kdf.derive(passphrase, &salt)?);
                let sealed = seal_key.seal_with_random_nonce(&header, &body)?;
                let mut file = header;
                file.extend_from_slice(&sealed);
                file
            }
        };
        let result = replace_file_durably(&self.path, &file).map_err(|source| KmsError::Io {
            path: self.path.clone(),
            source,
        });
        file.zeroize();
        result
    }

    /// Applies `f` to a copy of the entries, persists the copy, and only
    /// then makes it current: no key is used before it is on disk.
    fn change<T>(&self, f: impl FnOnce(&mut Vec<Entry>) -> Result<T, KmsError>) -> Result<T, KmsError> {
        let mut inner = self.lock();
        let mut next = Inner {
            entries: inner.entries.iter().map(copy_entry).collect(),
        };
        let out = f(&mut next.entries)?;
        self.persist(&next)?;
        *inner = next;
        Ok(out)
    }

    fn entry_index(&self, entries: &[Entry], id: &MasterKeyId) -> Result<usize, KmsError> {
        id.0.parse::<u32>()
            .ok()
            .and_then(|n| entries.iter().position(|e| e.id == n))
            .ok_or_else(|| KmsError::UnknownMasterKey {
                id: id.0.clone(),
                provider: self.name(),
            })
    }
}

impl KeyProvider for LocalKeystore {
    fn name(&self) -> String {
        "local".into()
    }

    fn current_master_key(&self) -> Result<MasterKeyId, KmsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let inner = self.lock();
        if let Some(e) = inner.entries.iter().rev().find(|e| e.state == KeyState::Active) {
            return Ok(MasterKeyId(e.id.to_string()));
        }
        drop(inner);
        self.create_master_key()
    }

    fn create_master_key(&self) -> Result<MasterKeyId, KmsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.change(|entries| {
            let id = entries.iter().map(|e| e.id).max().unwrap_or(0) + 1;
            for e in entries.iter_mut() {
                if e.state == KeyState::Active {
                    e.state = KeyState::Deactivated;
                }
            }
            entries.push(new_entry(id)?);
            Ok(MasterKeyId(id.to_string()))
        })
    }

    fn wrap(&self, id: &MasterKeyId, key: &Key256, aad: &[u8]) -> Result<Vec<u8>, KmsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let inner = self.lock();
        let e = &inner.entries[self.entry_index(&inner.entries, id)?];
        Ok(wrap_key(&e.key, key, aad)?)
    }

    fn unwrap(&self, id: &MasterKeyId, wrapped: &[u8], aad: &[u8]) -> Result<Key256, KmsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let inner = self.lock();
        let e = &inner.entries[self.entry_index(&inner.entries, id)?];
        unwrap_key(&e.key, wrapped, aad).map_err(|_| KmsError::Unwrap { id: id.0.clone() })
    }

    fn list(&self) -> Result<Vec<MasterKeyInfo>, KmsError> {
        let inner = self.lock();
        Ok(inner
            .entries
            .iter()
            .map(|e| MasterKeyInfo {
                id: MasterKeyId(e.id.to_string()),
                state: e.state,
                created_unix: e.created_unix,
            })
            .collect())
    }

    fn destroy(&self, id: &MasterKeyId) -> Result<(), KmsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.change(|entries| {
            let index = self.entry_index(entries, id)?;
            entries.remove(index);
            Ok(())
        })
    }

    fn state(&self, id: &MasterKeyId) -> Result<KeyState, KmsError> {
        let inner = self.lock();
        Ok(match self.entry_index(&inner.entries, id) {
            Ok(i) => inner.entries[i].state,
            Err(_) => KeyState::Destroyed,
        })
    }

    fn deactivate(&self, id: &MasterKeyId) -> Result<(), KmsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.change(|entries| {
            let index = self.entry_index(entries, id)?;
            if entries[index].state == KeyState::Active {
                entries[index].state = KeyState::Deactivated;
            }
            Ok(())
        })
    }

    fn protected_at_rest(&self) -> bool {
        self.passphrase.is_some()
    }

    fn call_count(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

fn new_entry(id: u32) -> Result<Entry, KmsError> {
    let raw = Key256::random()?;
    Ok(Entry {
        id,
        state: KeyState::Active,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        key: AeadKey::new(&raw),
        raw,
    })
}

fn copy_entry(e: &Entry) -> Entry {
    Entry {
        id: e.id,
        state: e.state,
        created_unix: e.created_unix,
        key: AeadKey::new(&e.raw),
        raw: e.raw.clone(),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PassphraseKdf {
        PassphraseKdf {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn a_key_wrapped_before_a_restart_unwraps_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key256::random().unwrap();
        let (id, wrapped) = {
            let ks = LocalKeystore::open_with_kdf(dir.path(), None, cheap()).unwrap();
            let id = ks.current_master_key().unwrap();
            (id.clone(), ks.wrap(&id, &key, b"ring").unwrap())
        };
        let ks = LocalKeystore::open_with_kdf(dir.path(), None, cheap()).unwrap();
        assert!(ks.unwrap(&id, &wrapped, b"ring").unwrap().ct_eq(&key));
        assert!(!ks.protected_at_rest());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ks.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn a_sealed_keystore_needs_the_right_passphrase_and_is_left_unchanged_by_a_wrong_one() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let ks = LocalKeystore::open_with_kdf(dir.path(), Some(b"right"), cheap()).unwrap();
            assert!(ks.protected_at_rest());
            ks.current_master_key().unwrap()
        };
        let before = std::fs::read(dir.path().join(KEYSTORE_FILE)).unwrap();
        let wrong = LocalKeystore::open_with_kdf(dir.path(), Some(b"wrong"), cheap()).unwrap_err();
        assert!(matches!(wrong, KmsError::WrongPassphrase { .. }), "{wrong}");
        assert!(wrong.to_string().contains("nothing was changed"));
        let none = LocalKeystore::open_with_kdf(dir.path(), None, cheap()).unwrap_err();
        assert!(matches!(none, KmsError::PassphraseRequired { .. }), "{none}");
        assert_eq!(std::fs::read(dir.path().join(KEYSTORE_FILE)).unwrap(), before);
        let ks = LocalKeystore::open_with_kdf(dir.path(), Some(b"right"), cheap()).unwrap();
        assert_eq!(ks.current_master_key().unwrap(), id);
    }

    #[test]
    fn an_unsealed_keystore_is_sealed_when_a_passphrase_is_given_and_holds_no_key_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key256::random().unwrap();
        let (id, wrapped) = {
            let ks = LocalKeystore::open_with_kdf(dir.path(), None, cheap()).unwrap();
            let id = ks.current_master_key().unwrap();
            (id.clone(), ks.wrap(&id, &key, b"ring").unwrap())
        };
        let clear = std::fs::read(dir.path().join(KEYSTORE_FILE)).unwrap();
        let master_bytes = clear[clear.len() - 32..].to_vec();
        let ks = LocalKeystore::open_with_kdf(dir.path(), Some(b"pass"), cheap()).unwrap();
        assert!(ks.unwrap(&id, &wrapped, b"ring").unwrap().ct_eq(&key));
        let sealed = std::fs::read(dir.path().join(KEYSTORE_FILE)).unwrap();
        assert!(!sealed.windows(32).any(|w| w == master_bytes.as_slice()));
    }

    #[test]
    fn damaged_or_newer_keystores_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        drop(LocalKeystore::open_with_kdf(dir.path(), Some(b"p"), cheap()).unwrap());
        let path = dir.path().join(KEYSTORE_FILE);
        let good = std::fs::read(&path).unwrap();
        for i in [0, 9, 13, HEADER_LEN + 3, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let err = LocalKeystore::open_with_kdf(dir.path(), Some(b"p"), cheap()).unwrap_err();
            assert!(err.to_string().contains("master.keys"), "flip at {i}: {err}");
        }
        let mut newer = good.clone();
        newer[8] = 9;
        std::fs::write(&path, &newer).unwrap();
        let err = LocalKeystore::open_with_kdf(dir.path(), Some(b"p"), cheap()).unwrap_err();
        assert!(matches!(err, KmsError::NewerFormat { found: 9, .. }), "{err}");
        std::fs::write(&path, &good[..good.len() - 5]).unwrap();
        assert!(LocalKeystore::open_with_kdf(dir.path(), Some(b"p"), cheap()).is_err());
    }

    #[test]
    fn rotation_makes_a_new_current_key_and_destroy_makes_old_wraps_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let ks = LocalKeystore::open_with_kdf(dir.path(), None, cheap()).unwrap();
        let first = ks.current_master_key().unwrap();
        let key = Key256::random().unwrap();
        let wrapped = ks.wrap(&first, &key, b"x").unwrap();
        let second = ks.create_master_key().unwrap();
        assert_ne!(first, second);
        assert_eq!(ks.current_master_key().unwrap(), second);
        let states: Vec<_> = ks.list().unwrap().into_iter().map(|i| i.state).collect();
        assert_eq!(states, vec![KeyState::Deactivated, KeyState::Active]);
        ks.destroy(&first).unwrap();
        let err = ks.unwrap(&first, &wrapped, b"x").unwrap_err();
        assert!(matches!(err, KmsError::UnknownMasterKey { .. }), "{err}");
    }
}
