//! Tables: creation (with their keys), publication, and `DROP TABLE`, which
//! shreds.

use super::*;

impl Store {
    /// Creates a table, durably, with a fresh table key.
    pub async fn create_table(
        &self,
        name: &str,
        schema: Schema,
        encryption: Encryption,
    ) -> Result<Arc<Table>, StorageError> {
        self.create_keyed(name, schema, encryption, false, None).await
    }

    /// Creates a table that a statement still has to fill (`CREATE TABLE
    /// AS`): until [`Store::publish_table`] makes it durable as a finished
    /// table, a crash leaves nothing of it, as for any statement that was
    /// never acknowledged.
    pub async fn create_unpublished_table(
        &self,
        name: &str,
        schema: Schema,
        encryption: Encryption,
    ) -> Result<Arc<Table>, StorageError> {
        self.create_keyed(name, schema, encryption, true, None).await
    }

    /// Marks a table from [`Store::create_unpublished_table`] finished, durably.
    pub async fn publish_table(&self, name: &str) -> Result<(), StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move { s.publish_table_now(&name).await })
            .await
    }

    pub(super) async fn publish_table_now(&self, name: &str) -> Result<(), StorageError> {
        let table = self
            .table(name)
            .ok_or_else(|| StorageError::NoSuchTable(name.to_owned()))?;
        let mut state = self.inner.catalog.lock().await;
        self.persist(&mut state, |body| {
            for meta in body.tables.iter_mut().filter(|t| t.id == table.id) {
                meta.unpublished = false;
            }
            Ok(())
        })
        .await
    }

    /// Creates a table whose key versions are wrapped by keys of their own
    /// on `key_provider` (a key server: the table's data is shredded by
    /// destroying them there), or by the key ring when `None`.
    /// `unpublished` as for [`Store::create_unpublished_table`].
    pub async fn create_table_with_keys(
        &self,
        name: &str,
        schema: Schema,
        encryption: Encryption,
        key_provider: Option<TableKeyProvider>,
        unpublished: bool,
    ) -> Result<Arc<Table>, StorageError> {
        self.create_keyed(name, schema, encryption, unpublished, key_provider)
            .await
    }

    pub(super) async fn create_keyed(
        &self,
        name: &str,
        schema: Schema,
        encryption: Encryption,
        unpublished: bool,
        key_provider: Option<TableKeyProvider>,
    ) -> Result<Arc<Table>, StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move {
            s.create_keyed_now(&name, schema, encryption, unpublished, key_provider)
                .await
        })
        .await
    }

    pub(super) async fn create_keyed_now(
        &self,
        name: &str,
        schema: Schema,
        encryption: Encryption,
        unpublished: bool,
        key_provider: Option<TableKeyProvider>,
    ) -> Result<Arc<Table>, StorageError> {
        let key_provider_name = key_provider.as_ref().map(|kp| kp.provider.clone());
        // The id is taken under the catalog lock; a key-server round trip
        // for the table's own key happens outside it.
        let id = {
            let mut state = self.inner.catalog.lock().await;
            if self.table(name).is_some() {
                return Err(StorageError::TableExists(name.to_owned()));
            }
            let id = state.body.next_table_id;
            state.body.next_table_id += 1;
            id
        };
        let key = Key256::random()?;
        let (wrapped, kek) = match &key_provider {
            // Wrapped by the key ring below, under the catalog lock.
            None => (Vec::new(), None),
            Some(kp) => {
                let (store, kp, table, k) = (self.clone(), kp.clone(), name.to_owned(), key.clone());
                let (kek, mut wrapped) = tokio::task::spawn_blocking(move || {
                    let provider = store.resolve(&kp.provider)?;
                    Self::new_kek(provider.as_ref(), &kp, &table, &[(&k, table_key_aad(id, 1))])
                })
                .await
                .map_err(|e| StorageError::Internal(format!("creating the table key: {e}")))??;
                (wrapped.pop().unwrap_or_default(), Some(kek))
            }
        };
        let mut state = self.inner.catalog.lock().await;
        if self.table(name).is_some() {
            // Created meanwhile by another session: this key goes.
            if let (Some(kek), Some(kp)) = (kek, &key_provider) {
                let queued = KeyToDestroy {
                    provider: kp.provider.clone(),
                    id: kek,
                    table: name.to_owned(),
                };
                self.persist(&mut state, |body| {
                    body.keys_to_destroy.push(queued);
                    Ok(())
                })
                .await?;
            }
            return Err(StorageError::TableExists(name.to_owned()));
        }
        let wrapped = match key_provider {
            None => wrap_key(&lock(&self.inner.ring).key, &key, &table_key_aad(id, 1))?,
            Some(_) => wrapped,
        };
        let meta = TableMeta {
            id,
            name: name.to_owned(),
            schema: schema.clone(),
            encryption,
            created_unix: now_unix(),
            keys: vec![TableKeyMeta {
                version: 1,
                wrapped,
                created_unix: now_unix(),
                kek,
            }],
            next_rowid: 0,
            segments: Vec::new(),
            deleted: Vec::new(),
            unpublished,
            key_provider,
            retired_keks: Vec::new(),
        };
        let table = Arc::new(Table::new(id, name.to_owned(), schema, encryption, 0));
        lock(&table.keys).push((1, Arc::new(key)));
        self.persist(&mut state, |body| {
            body.next_table_id = body.next_table_id.max(id + 1);
            body.tables.push(meta);
            Ok(())
        })
        .await?;
        self.inner
            .tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), table.clone());
        self.audit_key(
            "table key created",
            format!(
                "table {name}: version 1{}",
                match &key_provider_name {
                    Some(p) => format!(", wrapped by its own key in {p}"),
                    None => String::new(),
                }
            ),
        )
        .await;
        Ok(table)
    }

    /// Drops a table: its keys are destroyed (the catalog without them is
    /// durable) before its files are removed.
    pub async fn drop_table(&self, name: &str) -> Result<(), StorageError> {
        let name = name.to_owned();
        self.detached(move |s| async move { s.drop_table_now(&name).await })
            .await
    }

    pub(super) async fn drop_table_now(&self, name: &str) -> Result<(), StorageError> {
        let table = self
            .table(name)
            .ok_or_else(|| StorageError::NoSuchTable(name.to_owned()))?;
        // No transaction may be writing it.
        let _write = tokio::time::timeout(self.inner.options.lock_timeout, table.write_lock.clone().lock_owned())
            .await
            .map_err(|_| StorageError::LockTimeout(name.to_owned()))?;
        let mut state = self.inner.catalog.lock().await;
        // The table's own keys on key servers go too (crypto-shredding: a
        // copy of its files or of an old catalog is then unreadable): queued
        // in the same catalog write, destroyed below and, if that fails, by
        // the next key check.
        let keks: Vec<KeyToDestroy> = state
            .body
            .tables
            .iter()
            .filter(|t| t.id == table.id)
            .flat_map(TableMeta::keks_to_destroy)
            .collect();
        // A table under the key ring: the ring is replaced and the master
        // key with it, and the old master key is queued for destruction, so
        // that no copy of an older catalog (which holds the table's keys
        // under the old ring) opens with the keys that remain.
        let ring_wrapped = state
            .body
            .tables
            .iter()
            .filter(|t| t.id == table.id)
            .any(|t| t.keys.iter().any(|k| k.kek.is_none()));
        let rotated = if ring_wrapped {
            Some(self.ring_without(&state, table.id, name).await?)
        } else {
            None
        };
        let has_keks = !keks.is_empty();
        let queued = has_keks || rotated.is_some();
        match &rotated {
            Some(rotated) => {
                let (master_id, wrapped_ring, wrapped_system) = (
                    rotated.master.0.clone(),
                    rotated.wrapped_ring.clone(),
                    rotated.wrapped_system.clone(),
                );
                self.persist_with_header(
                    &mut state,
                    |header| {
                        header.master_id = master_id;
                        header.wrapped_ring = wrapped_ring;
                        header.wrapped_system = wrapped_system;
                    },
                    |body| {
                        body.tables = rotated.tables.clone();
                        body.retired_system_keys = rotated.retired.clone();
                        body.keys_to_destroy.extend(keks);
                        body.keys_to_destroy.push(rotated.old_master.clone());
                        Ok(())
                    },
                )
                .await?;
                *lock(&self.inner.ring) = Ring {
                    key: AeadKey::new(&rotated.ring),
                    raw: rotated.ring.clone(),
                };
            }
            None => {
                self.persist(&mut state, |body| {
                    body.tables.retain(|t| t.id != table.id);
                    body.keys_to_destroy.extend(keks);
                    Ok(())
                })
                .await?;
            }
        }
        drop(state);
        table.dropped.store(true, Ordering::Release);
        self.inner
            .tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        table.forget_keys();
        self.audit_key(
            "table keys destroyed",
            format!(
                "table {name} dropped: its table keys left the catalog{}{}",
                match &rotated {
                    Some(r) => format!(
                        "; the key ring is replaced under master key {} and master key {} is queued for destruction",
                        r.master, r.old_master.id
                    ),
                    None => String::new(),
                },
                if has_keks {
                    "; its keys on the key server are queued for destruction"
                } else {
                    ""
                }
            ),
        )
        .await;
        let data = table.snapshot();
        for s in &data.segments {
            s.mark_obsolete();
        }
        let freed: u64 = data.chunks.iter().map(|c| c.batch.get_array_memory_size() as u64).sum();
        self.release_memory(freed);
        table.install(&data.chunks, &data.segments, Vec::new(), None);
        drop(data);
        let table_dir = self.inner.dir.join(TABLES_DIR).join(table.id.to_string());
        // Files still read by running queries go when those queries end.
        let _ = std::fs::remove_dir(&table_dir);
        if queued {
            // Before the drop is acknowledged; what fails stays queued for
            // the next key check.
            self.destroy_pending_keys().await;
        }
        Ok(())
    }
}
