//! The KMIP key provider `kmip:GROUP`: master keys are AES-256 objects on
//! a KMIP server, named `<prefix>/master-key` so that operators find them in
//! the key server's console.
//!
//! - `wrap` mode (the default): the master key never leaves the key server;
//!   sealdb asks it to AES-GCM encrypt and decrypt its key-encryption keys
//!   (KMIP 1.4 Encrypt/Decrypt with an authenticated tag), binding the
//!   caller's associated data.
//! - `get` mode: the master key is fetched with Get and held in memory only
//!   (zeroized on drop); wrapping happens in sealdb.
//!
//! A wrapped key starts with its mode, so a key wrapped in either mode can
//! be unwrapped after the mode changes:
//!
//! ```text
//! wrap: 0x01 | nonce 12 | ciphertext 32 | tag 16
//! get:  0x02 | nonce 12 | ciphertext 32 | tag 16   (sealed here)
//! ```
//!
//! The trait is synchronous; calls run on the provider's own small runtime
//! and the caller waits for the answer, so they may come from any thread
//! (callers keep them off the async executor, as the trait asks).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sealdb_crypto::{AeadKey, Key256, random_bytes, unwrap_key, wrap_key};
use sealdb_kmip::{KmipClient, KmipClientConfig, KmipError, State};

use crate::{KeyProvider, KeyState, KmsError, MasterKeyId, MasterKeyInfo, ProviderHost};

/// How the master key is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KmipMode {
    /// The key server wraps and unwraps; the key never leaves it.
    #[default]
    Wrap,
    /// The key is fetched and held in memory only.
    Get,
}

impl std::str::FromStr for KmipMode {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self, KmsError> {
        match s.trim() {
            "wrap" => Ok(Self::Wrap),
            "get" => Ok(Self::Get),
            other => Err(KmsError::Config(format!(
                "mode = {other:?} is not a KMIP mode; use \"wrap\" (the key never leaves the key server) or \"get\""
            ))),
        }
    }
}

const FORMAT_WRAP: u8 = 0x01;
const FORMAT_GET: u8 = 0x02;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Master keys on a KMIP server.
pub struct KmipProvider {
    group: String,
    mode: KmipMode,
    name: String,
    prefix: String,
    client: Arc<KmipClient>,
    runtime: Option<tokio::runtime::Runtime>,
    /// `get` mode: keys fetched, by id.
    fetched: Mutex<HashMap<String, Arc<Key256>>>,
    calls: AtomicU64,
}

impl std::fmt::Debug for KmipProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmipProvider")
            .field("group", &self.group)
            .field("mode", &self.mode)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl KmipProvider {
    /// A provider for group `group`; master keys are named
    /// `<prefix>/master-key`. Nothing is connected until the first call.
    pub fn new(group: &str, config: KmipClientConfig, mode: KmipMode, prefix: &str) -> Result<Self, KmsError> {
        let client = Arc::new(KmipClient::new(config)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sealdb-kmip")
            .enable_all()
            .build()
            .map_err(|e| KmsError::Config(format!("cannot start the KMIP client thread: {e}")))?;
        Ok(Self {
            group: group.to_owned(),
            mode,
            name: format!("{prefix}/master-key"),
            prefix: prefix.to_owned(),
            client,
            runtime: Some(runtime),
            fetched: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        })
    }

    /// The KMIP client (for `sys.kmip_hosts` and `sealdb kms`).
    pub fn client(&self) -> &Arc<KmipClient> {
        &self.client
    }

    /// The Name of this installation's master keys on the key server.
    pub fn key_name(&self) -> &str {
        &self.name
    }

    /// The start of the Names of every object of this installation
    /// (`sealdb/<instance id>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs one KMIP exchange on the provider's runtime and waits for it.
    fn run<T, F, Fut>(&self, work: F) -> Result<T, KmsError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<KmipClient>) -> Fut,
        Fut: Future<Output = Result<T, KmipError>> + Send + 'static,
    {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| KmsError::Config("the KMIP provider is shut down".into()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let future = work(self.client.clone());
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .map_err(|_| KmsError::Config("the KMIP client thread stopped".into()))?
            .map_err(KmsError::from)
    }

    /// Create (AES-256, Named `name`) and Activate.
    fn create_active(&self, name: String) -> Result<MasterKeyId, KmsError> {
        let id = self.run(move |c| async move {
            let id = c.create_aes256(&name).await?;
            c.activate(&id).await?;
            Ok(id)
        })?;
        Ok(MasterKeyId(id))
    }

    /// A failed Decrypt: if the key is gone from the server, say so.
    fn explain_unwrap_failure(&self, id: &MasterKeyId, e: KmsError) -> KmsError {
        let key = id.0.clone();
        match self.run(move |c| async move { c.state(&key).await }) {
            Ok(State::Destroyed | State::DestroyedCompromised) => KmsError::Destroyed {
                id: id.0.clone(),
                provider: self.name(),
            },
            Ok(state @ (State::Deactivated | State::Compromised))
                if matches!(e, KmsError::Kmip(KmipError::Failed { .. })) =>
            {
                KmsError::Retired {
                    id: id.0.clone(),
                    provider: self.name(),
                    state: key_state(state).as_str(),
                    detail: e.to_string(),
                }
            }
            Err(KmsError::Kmip(k)) if k.is_not_found() => KmsError::UnknownMasterKey {
                id: id.0.clone(),
                provider: self.name(),
            },
            _ => e,
        }
    }

    fn fetched_key(&self, id: &MasterKeyId) -> Result<Arc<Key256>, KmsError> {
        if let Some(k) = self.fetched.lock().ok().and_then(|m| m.get(&id.0).cloned()) {
            return Ok(k);
        }
        let key_id = id.0.clone();
        let material = self.run(move |c| async move { c.get_key(&key_id).await })?;
        let key = Arc::new(Key256::from_slice(&material)?);
        if let Ok(mut m) = self.fetched.lock() {
            m.insert(id.0.clone(), key.clone());
        }
        Ok(key)
    }
}

impl Drop for KmipProvider {
    fn drop(&mut self) {
        // May run inside an async context: never block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn key_state(state: State) -> KeyState {
    match state {
        State::Active | State::PreActive => KeyState::Active,
        State::Deactivated => KeyState::Deactivated,
        State::Compromised => KeyState::Compromised,
        State::Destroyed | State::DestroyedCompromised => KeyState::Destroyed,
    }
}

impl KeyProvider for KmipProvider {
    fn name(&self) -> String {
        format!("kmip:{}", self.group)
    }

    fn current_master_key(&self) -> Result<MasterKeyId, KmsError> {
        let name = self.name.clone();
        let active = self.run(move |c| async move {
            let mut active = None;
            for id in c.locate(&name).await? {
                if c.state(&id).await? == State::Active {
                    active = Some(id);
                }
            }
            Ok(active)
        })?;
        match active {
            Some(id) => Ok(MasterKeyId(id)),
            None => self.create_master_key(),
        }
    }

    fn create_master_key(&self) -> Result<MasterKeyId, KmsError> {
        self.create_active(self.name.clone())
    }

    fn create_key(&self, name: &str) -> Result<MasterKeyId, KmsError> {
        self.create_active(format!("{}/{name}", self.prefix))
    }

    fn wrap(&self, id: &MasterKeyId, key: &Key256, aad: &[u8]) -> Result<Vec<u8>, KmsError> {
        match self.mode {
            KmipMode::Wrap => {
                let mut nonce = [0u8; NONCE_LEN];
                random_bytes(&mut nonce)?;
                let (key_id, plain, extra) = (id.0.clone(), key.clone(), aad.to_vec());
                let (ciphertext, tag) =
                    self.run(move |c| async move { c.encrypt_gcm(&key_id, plain.expose(), &nonce, &extra).await })?;
                let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len() + TAG_LEN);
                out.push(FORMAT_WRAP);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&ciphertext);
                out.extend_from_slice(&tag);
                Ok(out)
            }
            KmipMode::Get => {
                let master = self.fetched_key(id)?;
                let mut out = vec![FORMAT_GET];
                out.extend_from_slice(&wrap_key(&AeadKey::new(&master), key, aad)?);
                Ok(out)
            }
        }
    }

    fn unwrap(&self, id: &MasterKeyId, wrapped: &[u8], aad: &[u8]) -> Result<Key256, KmsError> {
        let bad = || KmsError::Unwrap { id: id.0.clone() };
        match wrapped.split_first() {
            Some((&FORMAT_WRAP, rest)) if rest.len() == NONCE_LEN + 32 + TAG_LEN => {
                let (nonce, rest) = rest.split_at(NONCE_LEN);
                let (ciphertext, tag) = rest.split_at(32);
                let (key_id, nonce, ciphertext, tag, extra) = (
                    id.0.clone(),
                    nonce.to_vec(),
                    ciphertext.to_vec(),
                    tag.to_vec(),
                    aad.to_vec(),
                );
                let opened =
                    self.run(move |c| async move { c.decrypt_gcm(&key_id, &ciphertext, &nonce, &extra, &tag).await });
                match opened {
                    Ok(plain) => Ok(Key256::from_slice(&plain)?),
                    Err(e) => Err(match self.explain_unwrap_failure(id, e) {
                        // The key is there and active: the wrapped bytes are wrong.
                        KmsError::Kmip(KmipError::Failed { .. }) => bad(),
                        other => other,
                    }),
                }
            }
            Some((&FORMAT_GET, rest)) => {
                let master = self.fetched_key(id).map_err(|e| self.explain_unwrap_failure(id, e))?;
                unwrap_key(&AeadKey::new(&master), rest, aad).map_err(|_| bad())
            }
            _ => Err(bad()),
        }
    }

    fn list(&self) -> Result<Vec<MasterKeyInfo>, KmsError> {
        let name = self.name.clone();
        let found = self.run(move |c| async move {
            let mut out = Vec::new();
            for id in c.locate(&name).await? {
                let attributes = c.attributes(&id).await?;
                out.push((id, attributes));
            }
            Ok(out)
        })?;
        Ok(found
            .into_iter()
            .map(|(id, a)| MasterKeyInfo {
                id: MasterKeyId(id),
                state: a.state.map_or(KeyState::Active, key_state),
                created_unix: a.initial_date.and_then(|d| u64::try_from(d).ok()).unwrap_or(0),
            })
            .collect())
    }

    fn destroy(&self, id: &MasterKeyId) -> Result<(), KmsError> {
        let key_id = id.0.clone();
        self.run(move |c| async move {
            if c.state(&key_id).await? == State::Active {
                c.revoke(&key_id, false).await?;
            }
            c.destroy(&key_id).await
        })?;
        if let Ok(mut m) = self.fetched.lock() {
            m.remove(&id.0);
        }
        Ok(())
    }

    fn state(&self, id: &MasterKeyId) -> Result<KeyState, KmsError> {
        let key_id = id.0.clone();
        let state = match self.run(move |c| async move { c.state(&key_id).await }) {
            Ok(state) => key_state(state),
            Err(KmsError::Kmip(k)) if k.is_not_found() => KeyState::Destroyed,
            Err(e) => return Err(e),
        };
        if state == KeyState::Destroyed
            && let Ok(mut m) = self.fetched.lock()
        {
            // `get` mode: the fetched copy goes with the key.
            m.remove(&id.0);
        }
        Ok(state)
    }

    fn deactivate(&self, id: &MasterKeyId) -> Result<(), KmsError> {
        let key_id = id.0.clone();
        self.run(move |c| async move {
            if c.state(&key_id).await? == State::Active {
                c.revoke(&key_id, false).await?;
            }
            Ok(())
        })
    }

    fn protected_at_rest(&self) -> bool {
        true
    }

    fn call_count(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn hosts(&self) -> Vec<ProviderHost> {
        self.client
            .host_status()
            .into_iter()
            .map(|h| ProviderHost {
                group: self.group.clone(),
                host: h.host,
                status: h.status,
                error: h.error,
                last_success_unix: h.last_success_unix,
                latency_ms: h.latency.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect()
    }
}
