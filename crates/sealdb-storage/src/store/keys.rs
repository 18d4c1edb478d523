//! The key hierarchy at work: the master key (rotation, a move to another
//! provider, its state on the key server), table keys and their key-encryption
//! keys, and the keys waiting to be destroyed.

use super::*;

impl Store {
    /// The master key over the data now, and its provider's name.
    pub async fn master_key(&self) -> (MasterKeyId, String) {
        let state = self.inner.catalog.lock().await;
        (
            MasterKeyId(state.header.master_id.clone()),
            state.header.provider.clone(),
        )
    }

    /// Moves the data to a new master key created in `to` (another
    /// provider: `ALTER SYSTEM SET key_provider`), online: the key ring is
    /// wrapped by `to`, checked to unwrap again, and the catalog naming
    /// `to` replaces the old one in one atomic write; nothing else is
    /// rewritten. The old provider's keys then protect nothing.
    pub async fn switch_provider(&self, to: Arc<dyn KeyProvider>) -> Result<MasterKeyMove, StorageError> {
        self.detached(move |s| async move { s.switch_provider_now(to).await })
            .await
    }

    pub(super) async fn switch_provider_now(&self, to: Arc<dyn KeyProvider>) -> Result<MasterKeyMove, StorageError> {
        self.refuse_if_shredded()?;
        let mut state = self.inner.catalog.lock().await;
        let from = (
            state.header.provider.clone(),
            MasterKeyId(state.header.master_id.clone()),
        );
        if from.0 == to.name() {
            return Err(StorageError::Key(sealdb_kms::KmsError::Config(format!(
                "the master key is already in {} (master key {}); to get a new one, use ALTER SYSTEM ROTATE MASTER KEY",
                from.0, from.1
            ))));
        }
        let ring = lock(&self.inner.ring).raw.clone();
        let target = to.clone();
        let (new, wrapped) = tokio::task::spawn_blocking(move || {
            let new = target.create_master_key()?;
            let wrapped = target.wrap(&new, &ring, RING_AAD)?;
            let back = target.unwrap(&new, &wrapped, RING_AAD)?;
            if back.expose() != ring.expose() {
                return Err(StorageError::Internal(format!(
                    "{} returned another key when unwrapping the key ring it had just wrapped; nothing was changed",
                    target.name()
                )));
            }
            Ok::<_, StorageError>((new, wrapped))
        })
        .await
        .map_err(|e| StorageError::Internal(format!("moving the master key: {e}")))??;
        let (name, id) = (to.name(), new.0.clone());
        self.persist_with_header(
            &mut state,
            |header| {
                header.provider = name;
                header.master_id = id;
                header.wrapped_ring = wrapped;
            },
            |_| Ok(()),
        )
        .await?;
        *self.inner.provider.write().unwrap_or_else(|p| p.into_inner()) = to.clone();
        self.inner.gate.confirmed();
        info!(from = %format!("{} {}", from.0, from.1), to = %format!("{} {new}", to.name()), "the master key moved to another key provider");
        self.audit_key(
            "master key moved",
            format!("from {} {} to {} {new}", from.0, from.1, to.name()),
        )
        .await;
        Ok(MasterKeyMove {
            from,
            to: (to.name(), new),
        })
    }

    /// Moves the data to a new master-key version: the provider creates
    /// one, the key ring is wrapped under it, and the catalog naming it
    /// replaces the old one in one atomic write (a crash leaves the old
    /// state or the new, both readable). Nothing else is rewritten; the old
    /// version is then deactivated and may be destroyed without loss.
    /// Returns (old, new). Calls the provider three times.
    pub async fn rotate_master_key(&self) -> Result<(MasterKeyId, MasterKeyId), StorageError> {
        self.detached(|s| async move { s.rotate_master_key_now().await }).await
    }

    pub(super) async fn rotate_master_key_now(&self) -> Result<(MasterKeyId, MasterKeyId), StorageError> {
        self.refuse_if_shredded()?;
        let mut state = self.inner.catalog.lock().await;
        let old = MasterKeyId(state.header.master_id.clone());
        let ring = lock(&self.inner.ring).raw.clone();
        let (new, wrapped) = self
            .new_master_key_for(&state.header, ring, "master-key rotation")
            .await?;
        let new_id = new.0.clone();
        crate::crash_point("master-key-rotation:before-catalog");
        self.persist_with_header(
            &mut state,
            |header| {
                header.master_id = new_id;
                header.wrapped_ring = wrapped;
            },
            |_| Ok(()),
        )
        .await?;
        drop(state);
        crate::crash_point("master-key-rotation:after-catalog");
        let provider = self.provider();
        info!(from = %old, to = %new, provider = %provider.name(), "master key rotated: the key ring is wrapped under the new version");
        self.audit_key(
            "master key rotated",
            format!("from {old} to {new} in {}; the key ring is re-wrapped", provider.name()),
        )
        .await;
        let retired = old.clone();
        match tokio::task::spawn_blocking(move || provider.deactivate(&retired)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(key = %old, "the old master key could not be deactivated (nothing needs it any more; deactivate or destroy it on the key server): {e}")
            }
            Err(e) => warn!(key = %old, "the old master key could not be deactivated: {e}"),
        }
        Ok((old, new))
    }

    /// Re-reads the master key's state from its provider (one call; a
    /// key-server round trip for KMIP) and sets the [`KeyGate`]: see its
    /// module. A deactivated or compromised key is rotated away from at
    /// once. `grace` is how long the keys in memory keep serving while no
    /// key server answers.
    pub async fn refresh_master_key(&self, grace: Duration) -> RefreshOutcome {
        // The key and its provider, read together (a switch of provider
        // changes both under the catalog lock).
        let (master, provider_name, provider) = {
            let state = self.inner.catalog.lock().await;
            (
                MasterKeyId(state.header.master_id.clone()),
                state.header.provider.clone(),
                self.provider(),
            )
        };
        let key = format!("master key {master} in {provider_name}");
        let asked = master.clone();
        let state = ask_state(move || provider.state(&asked).map_err(StorageError::from)).await;
        if self.master_key().await.0 != master {
            // Rotated or moved meanwhile: this answer is about a key no
            // longer in use.
            return RefreshOutcome::Active { recovered: false };
        }
        // A revoked key: the keys in memory are still good to decrypt, and
        // new data must not go under it.
        let was_closed = self.inner.gate.closed().is_some();
        let outcome = settle(&self.inner.gate, key.clone(), master.0, state, grace, || async {
            self.rotate_master_key().await.map(|(_, to)| to.0)
        })
        .await;
        self.audit_outcome(&key, &outcome, was_closed).await;
        outcome
    }

    /// Records what a key check found, when it matters: a revoked key seen
    /// (and what followed), a destroyed key seen the first time.
    pub(super) async fn audit_outcome(&self, key: &str, outcome: &RefreshOutcome, was_closed: bool) {
        match outcome {
            RefreshOutcome::Rotated { from, state, to } => {
                self.audit_key(
                    "key revoked seen",
                    format!("{key}: {from} is {state} on the key server; replaced by {to}"),
                )
                .await
            }
            RefreshOutcome::RotationFailed { from, error } => {
                self.audit_key(
                    "key revoked seen",
                    format!("{key}: {from} is revoked; its replacement failed (retried): {error}"),
                )
                .await
            }
            RefreshOutcome::Destroyed { .. } if !was_closed => {
                self.audit_key(
                    "key destroyed seen",
                    format!("{key} is destroyed on the key server: its data is unreadable"),
                )
                .await
            }
            _ => {}
        }
    }

    /// Encrypted tables whose current key version is older than `period`
    /// (`key-rotation-period`), with its age, oldest first. Reads memory only.
    pub fn tables_due_for_rotation(&self, period: Duration) -> Vec<(String, Duration)> {
        let published = lock(&self.inner.published).clone();
        let now = now_unix();
        let mut due: Vec<(String, Duration)> = published
            .tables
            .iter()
            .filter(|t| t.encryption != Encryption::None && !t.unpublished)
            .filter(|t| {
                // Keys that cannot be used cannot be rotated either.
                self.inner.gate.check(&t.name).is_ok()
                    && self.table(&t.name).is_some_and(|table| table.check_keys().is_ok())
            })
            .filter_map(|t| {
                let age = Duration::from_secs(now.saturating_sub(t.keys.last()?.created_unix));
                (age >= period).then(|| (t.name.clone(), age))
            })
            .collect();
        due.sort_by_key(|d| std::cmp::Reverse(d.1));
        due
    }

    /// `ALTER TABLE t ROTATE KEY`: a new version of the table's key, used
    /// for every file and log record written from now on; older versions
    /// stay to read what they wrote. Wrapped like the others (by the key
    /// ring, or by the table's own key on its key server). Returns the new
    /// version.
    pub async fn rotate_table_key(&self, name: &str) -> Result<u32, StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move { s.rotate_table_key_now(&name).await })
            .await
    }

    pub(super) async fn rotate_table_key_now(&self, name: &str) -> Result<u32, StorageError> {
        let table = self
            .table(name)
            .ok_or_else(|| StorageError::NoSuchTable(name.to_owned()))?;
        self.inner.gate.check(name)?;
        table.check_keys()?;
        if table.encryption() == Encryption::None {
            return Err(StorageError::Schema {
                table: name.to_owned(),
                detail: "it is stored without encryption (encryption = 'none'), so it has no key to rotate".into(),
            });
        }
        let current = |state: &CatalogState| {
            state.body.tables.iter().find(|t| t.id == table.id).map(|m| {
                (
                    m.keys.iter().map(|k| k.version).max().unwrap_or(0),
                    m.key_provider.clone(),
                    m.keys.last().and_then(|k| k.kek.clone()),
                )
            })
        };
        let (latest, kp, kek) = {
            let state = self.inner.catalog.lock().await;
            current(&state).ok_or_else(|| StorageError::NoSuchTable(name.to_owned()))?
        };
        let version = latest + 1;
        let key = Key256::random()?;
        let aad = table_key_aad(table.id, version);
        let wrapped = match (&kp, &kek) {
            (Some(kp), Some(kek)) => {
                // Wrapped by the table's own key, on its key server: outside
                // the catalog lock.
                let (store, provider_name, kek, k, aad) = (
                    self.clone(),
                    kp.provider.clone(),
                    MasterKeyId(kek.clone()),
                    key.clone(),
                    aad.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    store
                        .resolve(&provider_name)?
                        .wrap(&kek, &k, &aad)
                        .map_err(StorageError::from)
                })
                .await
                .map_err(|e| StorageError::Internal(format!("wrapping the table key: {e}")))??
            }
            _ => Vec::new(),
        };
        let mut state = self.inner.catalog.lock().await;
        if current(&state) != Some((latest, kp.clone(), kek.clone())) {
            return Err(StorageError::TableKey {
                table: name.to_owned(),
                detail: "its keys changed meanwhile (another rotation); try again".into(),
            });
        }
        // Wrapped by the key ring under the catalog lock, which
        // `ALTER SYSTEM REKEY` holds while it replaces the ring.
        let wrapped = match (&kp, &kek) {
            (Some(_), Some(_)) => wrapped,
            _ => wrap_key(&lock(&self.inner.ring).key, &key, &aad)?,
        };
        let id = table.id;
        let created = now_unix();
        crate::crash_point("table-key-rotation:before-catalog");
        self.persist(&mut state, |body| {
            if let Some(meta) = body.tables.iter_mut().find(|t| t.id == id) {
                meta.keys.push(TableKeyMeta {
                    version,
                    wrapped,
                    created_unix: created,
                    kek,
                });
            }
            Ok(())
        })
        .await?;
        lock(&table.keys).push((version, Arc::new(key)));
        crate::crash_point("table-key-rotation:after-catalog");
        info!(table = %name, version, "table key rotated: new data goes under version {version}");
        self.audit_key(
            "table key rotated",
            format!("table {name}: version {version} created; new data goes under it"),
        )
        .await;
        Ok(version)
    }

    /// Re-reads the state of each table's own key on its key server (one
    /// call per such table) and sets the table's gate as
    /// [`Store::refresh_master_key`] does the store's: a deactivated or
    /// compromised key is replaced at once (every version re-wrapped under
    /// a new key, and a new version for new data). Returns what changed.
    pub async fn refresh_table_keys(&self, grace: Duration) -> Vec<(String, RefreshOutcome)> {
        let keyed: Vec<(u64, String, TableKeyProvider, String)> = {
            let state = self.inner.catalog.lock().await;
            state
                .body
                .tables
                .iter()
                .filter_map(|t| {
                    let kp = t.key_provider.clone()?;
                    let kek = t.keys.last()?.kek.clone()?;
                    Some((t.id, t.name.clone(), kp, kek))
                })
                .collect()
        };
        let mut out = Vec::new();
        for (id, name, kp, kek) in keyed {
            let Some(table) = self.table(&name).filter(|t| t.id == id) else {
                continue;
            };
            let key = table_kek_name(&name, &kek, &kp.provider);
            let (store, provider_name, asked) = (self.clone(), kp.provider.clone(), MasterKeyId(kek.clone()));
            let state =
                ask_state(move || store.resolve(&provider_name)?.state(&asked).map_err(StorageError::from)).await;
            let was_closed = table.key_gate.closed().is_some();
            let outcome = settle(&table.key_gate, key.clone(), kek.clone(), state, grace, || {
                self.replace_table_kek(&table, &kp, &kek)
            })
            .await;
            self.audit_outcome(&key, &outcome, was_closed).await;
            if outcome != (RefreshOutcome::Active { recovered: false }) {
                out.push((name, outcome));
            }
        }
        out
    }

    /// Replaces table `table`'s key on its key server after `old` was
    /// revoked: a new key there wraps every existing version (so `old` may
    /// be destroyed without loss) and a new version for new data. Returns
    /// the new key's id.
    pub(super) async fn replace_table_kek(
        &self,
        table: &Arc<Table>,
        kp: &TableKeyProvider,
        old: &str,
    ) -> Result<String, StorageError> {
        // Read under the catalog lock, wrap outside it (key-server round
        // trips), and write only if nothing changed meanwhile.
        let current = |state: &CatalogState| {
            state
                .body
                .tables
                .iter()
                .find(|t| t.id == table.id)
                .map(|m| (m.keys.len(), m.keys.last().and_then(|k| k.kek.clone())))
        };
        let (count, latest) = {
            let state = self.inner.catalog.lock().await;
            current(&state).ok_or_else(|| StorageError::NoSuchTable(table.name.clone()))?
        };
        if latest.as_deref() != Some(old) {
            // Replaced meanwhile.
            return Ok(latest.unwrap_or_default());
        }
        let mut versions: Vec<(u32, Arc<Key256>)> = lock(&table.keys).clone();
        if versions.len() != count {
            return Err(StorageError::TableKey {
                table: table.name.clone(),
                detail: "some of its key versions are not open in this process".into(),
            });
        }
        let next = versions.iter().map(|(v, _)| *v).max().unwrap_or(0) + 1;
        versions.push((next, Arc::new(Key256::random()?)));
        let (store, kp_owned, name, id) = (self.clone(), kp.clone(), table.name.clone(), table.id);
        let to_wrap = versions.clone();
        let (kek, wrapped) = tokio::task::spawn_blocking(move || {
            let provider = store.resolve(&kp_owned.provider)?;
            let keys: Vec<(&Key256, Vec<u8>)> = to_wrap
                .iter()
                .map(|(v, k)| (k.as_ref(), table_key_aad(id, *v)))
                .collect();
            Self::new_kek(provider.as_ref(), &kp_owned, &name, &keys)
        })
        .await
        .map_err(|e| StorageError::Internal(format!("replacing the table key: {e}")))??;
        let mut state = self.inner.catalog.lock().await;
        if current(&state) != Some((count, Some(old.to_owned()))) {
            // Changed meanwhile (dropped, or replaced by another check): the
            // new key protects nothing.
            let queued = KeyToDestroy {
                provider: kp.provider.clone(),
                id: kek,
                table: table.name.clone(),
            };
            self.persist(&mut state, |body| {
                body.keys_to_destroy.push(queued);
                Ok(())
            })
            .await?;
            return Err(StorageError::TableKey {
                table: table.name.clone(),
                detail: "its keys changed while the revoked key was being replaced; retried at the next check".into(),
            });
        }
        let created = now_unix();
        let new_kek = kek.clone();
        self.persist(&mut state, |body| {
            if let Some(meta) = body.tables.iter_mut().find(|t| t.id == id) {
                if !meta.retired_keks.iter().any(|k| k == old) {
                    meta.retired_keks.push(old.to_owned());
                }
                for (k, w) in meta.keys.iter_mut().zip(&wrapped) {
                    k.wrapped = w.clone();
                    k.kek = Some(new_kek.clone());
                }
                meta.keys.push(TableKeyMeta {
                    version: next,
                    wrapped: wrapped.last().cloned().unwrap_or_default(),
                    created_unix: created,
                    kek: Some(new_kek.clone()),
                });
            }
            Ok(())
        })
        .await?;
        if let Some(newest) = versions.pop() {
            lock(&table.keys).push(newest);
        }
        info!(table = %table.name, from = %old, to = %kek, version = next, "the table's key was revoked on the key server: its versions are re-wrapped under a new key, and new data goes under version {next}");
        self.audit_key(
            "table key replaced",
            format!(
                "table {}: its key {old} was revoked on the key server; new key {kek}, new version {next}",
                table.name
            ),
        )
        .await;
        Ok(kek)
    }

    /// The provider called `name`.
    pub(super) fn resolve(&self, name: &str) -> Result<Arc<dyn KeyProvider>, StorageError> {
        resolve_provider(&self.provider(), &self.inner.options, name)
    }

    /// A new table key version wrapped under a new key of its own on
    /// `kp`, named `<prefix>/<namespace>/<table>`: (kek id, wrapped). Blocking.
    pub(super) fn new_kek(
        provider: &dyn KeyProvider,
        kp: &TableKeyProvider,
        table: &str,
        keys: &[(&Key256, Vec<u8>)],
    ) -> Result<(String, Vec<Vec<u8>>), StorageError> {
        let kek = provider.create_key(&format!("{}/{table}", kp.namespace))?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, aad) in keys {
            out.push(provider.wrap(&kek, key, aad)?);
        }
        Ok((kek.0, out))
    }

    /// A new master-key version from the provider of the catalog `header`
    /// names, and `ring` wrapped under it (two provider calls). `what`
    /// names the operation in errors.
    pub(super) async fn new_master_key_for(
        &self,
        header: &CatalogHeader,
        ring: Key256,
        what: &'static str,
    ) -> Result<(MasterKeyId, Vec<u8>), StorageError> {
        let provider = self.provider();
        if provider.name() != header.provider {
            return Err(StorageError::Internal(format!(
                "the catalog's master key is in {} but this process holds {}; nothing was changed",
                header.provider,
                provider.name()
            )));
        }
        tokio::task::spawn_blocking(move || {
            let new = provider.create_master_key()?;
            let wrapped = provider.wrap(&new, &ring, RING_AAD)?;
            Ok::<_, StorageError>((new, wrapped))
        })
        .await
        .map_err(|e| StorageError::Internal(format!("{what}: {e}")))?
    }

    /// A new key ring, and a new master key wrapping it, for the catalog
    /// without table `dropped`: every other table's ring-wrapped keys, the
    /// system key and the retired system keys re-wrapped under the new
    /// ring. The old master key is returned for the destruction queue.
    pub(super) async fn ring_without(
        &self,
        state: &CatalogState,
        dropped: u64,
        name: &str,
    ) -> Result<RingRotation, StorageError> {
        let ring = Key256::random()?;
        let new_ring = AeadKey::new(&ring);
        let old_ring = AeadKey::new(&lock(&self.inner.ring).raw);
        let rewrap = |wrapped: &[u8], aad: &[u8], what: &str| -> Result<Vec<u8>, StorageError> {
            let key = unwrap_key(&old_ring, wrapped, aad)
                .map_err(|_| StorageError::integrity(CATALOG_FILE, format!("{what} failed authentication")))?;
            Ok(wrap_key(&new_ring, &key, aad)?)
        };
        let mut tables: Vec<TableMeta> = state.body.tables.iter().filter(|t| t.id != dropped).cloned().collect();
        for meta in &mut tables {
            for k in meta.keys.iter_mut().filter(|k| k.kek.is_none()) {
                let what = format!("the key of table {} version {}", meta.name, k.version);
                k.wrapped = rewrap(&k.wrapped, &table_key_aad(meta.id, k.version), &what)?;
            }
        }
        let retired = state
            .body
            .retired_system_keys
            .iter()
            .map(|r| {
                Ok(RetiredKey {
                    wrapped: rewrap(&r.wrapped, RETIRED_SYSTEM_AAD, "a retired system key")?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let system = self
            .system_keys()
            .into_iter()
            .next()
            .ok_or_else(|| StorageError::Internal("no system key in memory".into()))?;
        let wrapped_system = wrap_key(&new_ring, &system, SYSTEM_AAD)?;
        let (master, wrapped_ring) = self
            .new_master_key_for(&state.header, ring.clone(), "the key ring's rotation for DROP TABLE")
            .await?;
        Ok(RingRotation {
            ring,
            master,
            wrapped_ring,
            wrapped_system,
            tables,
            retired,
            old_master: KeyToDestroy {
                provider: state.header.provider.clone(),
                id: state.header.master_id.clone(),
                table: format!("{name} (the master key of the key ring before it was dropped)"),
            },
        })
    }

    /// Destroys the keys queued in the catalog (a dropped table's, on its
    /// key server); those destroyed, or already gone, leave the queue.
    /// Returns how many are still queued. Called after DROP TABLE and by
    /// the background key check.
    pub async fn destroy_pending_keys(&self) -> usize {
        let queue = self.inner.catalog.lock().await.body.keys_to_destroy.clone();
        if queue.is_empty() {
            return 0;
        }
        let mut done = Vec::new();
        for key in &queue {
            let store = self.clone();
            let k = key.clone();
            let result = tokio::task::spawn_blocking(move || {
                let provider = store.resolve(&k.provider)?;
                match provider.destroy(&MasterKeyId(k.id.clone())) {
                    Ok(()) => Ok(()),
                    Err(sealdb_kms::KmsError::Kmip(e)) if e.is_not_found() => Ok(()),
                    Err(e) => Err(StorageError::from(e)),
                }
            })
            .await
            .map_err(|e| StorageError::Internal(e.to_string()))
            .and_then(|r| r);
            match result {
                Ok(()) => {
                    info!(table = %key.table, key = %key.id, provider = %key.provider, "destroyed the dropped table's key on the key server");
                    self.audit_key(
                        "key destroyed",
                        format!("key {} of table {} destroyed in {}", key.id, key.table, key.provider),
                    )
                    .await;
                    done.push(key.clone());
                }
                Err(e) => {
                    warn!(table = %key.table, key = %key.id, provider = %key.provider, "could not destroy the dropped table's key on the key server yet (retried at the next key check): {e}")
                }
            }
        }
        if done.is_empty() {
            return queue.len();
        }
        let mut state = self.inner.catalog.lock().await;
        let result = self
            .persist(&mut state, |body| {
                body.keys_to_destroy.retain(|k| !done.contains(k));
                Ok(())
            })
            .await;
        if let Err(e) = result {
            warn!("could not record the destroyed keys (they are destroyed again at the next check): {e}");
        }
        state.body.keys_to_destroy.len()
    }
}

/// Moves the data directory `dir` (not open elsewhere: it is locked) from
/// its master key in `from` to a new master key created in `to`: the key
/// ring is unwrapped by `from`, wrapped by `to`, checked to unwrap again,
/// and the catalog naming `to` replaces the old one in one atomic write.
/// Nothing else is rewritten. Afterwards `from`'s keys protect nothing
/// and may be destroyed. Blocking; a few provider calls each way.
pub fn move_master_key(
    dir: &Path,
    from: &dyn KeyProvider,
    to: &dyn KeyProvider,
) -> Result<MasterKeyMove, StorageError> {
    let _lock = lock_dir(dir)?;
    let catalog_path = dir.join(CATALOG_FILE);
    if !catalog_path.exists() {
        return Err(StorageError::Missing {
            file: CATALOG_FILE.into(),
            detail: format!("{} is not a sealdb data directory (no catalog)", dir.display()),
        });
    }
    let (mut header, body, (old, _, ring), system) = open_catalog(&catalog_path, from)?;
    let new = to.create_master_key()?;
    let wrapped = to.wrap(&new, &ring, RING_AAD)?;
    let back = to.unwrap(&new, &wrapped, RING_AAD)?;
    if back.expose() != ring.expose() {
        return Err(StorageError::Internal(format!(
            "{} returned another key when unwrapping the key ring it had just wrapped; nothing was changed",
            to.name()
        )));
    }
    let moved = MasterKeyMove {
        from: (header.provider.clone(), old),
        to: (to.name(), new.clone()),
    };
    header.provider = to.name();
    header.master_id = new.0;
    header.wrapped_ring = wrapped;
    catalog::write(dir, &header, &body, &catalog::body_key(&system)?)?;
    Ok(moved)
}

/// The provider called `name`: the master key's, or another one opened by
/// `options.providers`.
pub(super) fn resolve_provider(
    master: &Arc<dyn KeyProvider>,
    options: &StoreOptions,
    name: &str,
) -> Result<Arc<dyn KeyProvider>, StorageError> {
    if master.name() == name {
        return Ok(master.clone());
    }
    match &options.providers {
        Some(resolver) => Ok(resolver.provider(name)?),
        None => Err(StorageError::Key(sealdb_kms::KmsError::Config(format!(
            "key provider {name} is not available to this process"
        )))),
    }
}

/// How errors and logs name a table's own key.
pub(super) fn table_kek_name(table: &str, kek: &str, provider: &str) -> String {
    format!("key {kek} of table {table} in {provider}")
}
