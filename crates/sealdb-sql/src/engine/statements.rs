//! The statements sealdb runs itself: users, roles, grants, keys, TLS reload,
//! `SHOW`, `SET` and transaction control.

use super::*;

impl Engine {
    /// Writes users and grants; on failure restores `before`.
    pub(super) async fn persist_access(&self, before: serde_json::Value) -> Result<(), SqlError> {
        let Some(durable) = &self.durable else {
            return Ok(());
        };
        if let Err(e) = durable.store.set_section(ACCESS_SECTION, self.access.export()).await {
            let _ = self.access.restore(&before);
            return Err(e.into());
        }
        Ok(())
    }

    pub(super) async fn execute_security(
        &self,
        session: &mut SqlSession,
        statement: SecurityStatement,
    ) -> Result<Output, SqlError> {
        let me = session.info.user.clone();
        let mutates = matches!(
            statement,
            SecurityStatement::CreateUser { .. }
                | SecurityStatement::AlterUser { .. }
                | SecurityStatement::DropUser { .. }
                | SecurityStatement::Grant { .. }
                | SecurityStatement::Revoke { .. }
                | SecurityStatement::GrantRole { .. }
                | SecurityStatement::RevokeRole { .. }
        );
        // One change at a time, so that undoing a failed write cannot undo
        // another session's change.
        let _serial = if mutates {
            Some(self.access_changes.lock().await)
        } else {
            None
        };
        let before = mutates.then(|| self.access.export());
        let audit = statement.audit_summary();
        let output = self.apply_security(session, statement, &me).await;
        if let Some(before) = before {
            match &output {
                Ok(_) => self.persist_access(before).await?,
                // A statement that failed half-way (one of several grantees)
                // leaves nothing behind.
                Err(_) => {
                    let _ = self.access.restore(&before);
                }
            }
        }
        if let (Ok(_), Some((event, detail)), Some(store)) = (&output, audit, self.store()) {
            store.audit(sealdb_storage::AuditEvent::new(event, me, detail)).await;
        }
        output
    }

    pub(super) async fn apply_security(
        &self,
        session: &mut SqlSession,
        statement: SecurityStatement,
        me: &str,
    ) -> Result<Output, SqlError> {
        let me = me.to_owned();
        let admin_only = |what: &str| -> Result<(), SqlError> {
            if self.access.is_superuser(&me) {
                Ok(())
            } else {
                Err(SqlError::PermissionDenied(format!("only administrators can {what}")))
            }
        };
        let access_err = |e: sealdb_auth::AccessError| match e {
            sealdb_auth::AccessError::Exists(_) => SqlError::DuplicateObject(e.to_string()),
            sealdb_auth::AccessError::NoSuchRole(_) => SqlError::UndefinedObject(e.to_string()),
            _ => SqlError::InvalidValue(e.to_string()),
        };
        Ok(match statement {
            SecurityStatement::CreateUser { name, login, options } => {
                admin_only("create users and roles")?;
                let login = options.login.unwrap_or(login);
                self.access
                    .create(&name, login, user_options(options)?)
                    .map_err(access_err)?;
                Output::Command {
                    tag: if login { "CREATE USER" } else { "CREATE ROLE" }.into(),
                    rows: None,
                }
            }
            SecurityStatement::AlterUser { name, options } => {
                // Users may change their own password; everything else is for administrators.
                let own_password_only =
                    name == me && options.require.is_none() && options.superuser.is_none() && options.login.is_none();
                if !own_password_only {
                    admin_only("alter users")?;
                }
                self.access.alter(&name, user_options(options)?).map_err(access_err)?;
                Output::Command {
                    tag: "ALTER ROLE".into(),
                    rows: None,
                }
            }
            SecurityStatement::DropUser { names, if_exists } => {
                admin_only("drop users")?;
                for name in names {
                    if name == me {
                        return Err(SqlError::InvalidValue("current user cannot be dropped".into()));
                    }
                    match self.access.drop_role(&name) {
                        Err(sealdb_auth::AccessError::NoSuchRole(_)) if if_exists => {}
                        other => other.map_err(access_err)?,
                    }
                }
                Output::Command {
                    tag: "DROP ROLE".into(),
                    rows: None,
                }
            }
            SecurityStatement::Grant {
                privileges,
                target,
                grantees,
            } => {
                admin_only("grant privileges")?;
                for object in self.grant_objects(session, target).await? {
                    for grantee in &grantees {
                        self.access
                            .grant(grantee, object.clone(), &privileges, &me)
                            .map_err(access_err)?;
                    }
                }
                Output::Command {
                    tag: "GRANT".into(),
                    rows: None,
                }
            }
            SecurityStatement::Revoke {
                privileges,
                target,
                grantees,
            } => {
                admin_only("revoke privileges")?;
                for object in self.grant_objects(session, target).await? {
                    for grantee in &grantees {
                        self.access.revoke(grantee, &object, &privileges).map_err(access_err)?;
                    }
                }
                Output::Command {
                    tag: "REVOKE".into(),
                    rows: None,
                }
            }
            SecurityStatement::GrantRole { role, members } => {
                admin_only("grant roles")?;
                for m in members {
                    self.access.grant_role(&role, &m).map_err(access_err)?;
                }
                Output::Command {
                    tag: "GRANT ROLE".into(),
                    rows: None,
                }
            }
            SecurityStatement::RevokeRole { role, members } => {
                admin_only("revoke roles")?;
                for m in members {
                    self.access.revoke_role(&role, &m).map_err(access_err)?;
                }
                Output::Command {
                    tag: "REVOKE ROLE".into(),
                    rows: None,
                }
            }
            SecurityStatement::ReloadTls => {
                admin_only("reload TLS material")?;
                self.hooks.reload_tls().map_err(SqlError::ServerState)?;
                Output::Command {
                    tag: "ALTER SYSTEM".into(),
                    rows: None,
                }
            }
            SecurityStatement::RotateMasterKey => {
                admin_only("rotate the master key")?;
                match &self.durable {
                    Some(durable) => {
                        durable.store.rotate_master_key().await?;
                    }
                    None => {
                        return Err(SqlError::NotSupported(
                            "this server keeps no data on disk, so it has no master key to rotate".into(),
                        ));
                    }
                }
                Output::Command {
                    tag: "ALTER SYSTEM".into(),
                    rows: None,
                }
            }
            SecurityStatement::RotateTableKey { table } => {
                admin_only("rotate table keys")?;
                let Some(durable) = &self.durable else {
                    return Err(SqlError::NotSupported(
                        "this server keeps no data on disk, so its tables have no keys to rotate".into(),
                    ));
                };
                let name = durable::stored_name(&TableReference::from(table.as_str()))?;
                durable.store.rotate_table_key(&name).await?;
                Output::Command {
                    tag: "ALTER TABLE".into(),
                    rows: None,
                }
            }
            SecurityStatement::RekeyTable { table } => {
                admin_only("rewrite tables under new keys")?;
                let durable = self.durable_or("its tables have no files to rewrite")?;
                let name = durable::stored_name(&TableReference::from(table.as_str()))?;
                let job = durable.store.rekey_table(&name).await?;
                tracing::info!(table = %name, job = job.id, "ALTER TABLE REKEY: job {} runs in the background", job.id);
                Output::Command {
                    tag: "ALTER TABLE".into(),
                    rows: None,
                }
            }
            SecurityStatement::SetTableEncryption { table, encryption } => {
                admin_only("change a table's encryption")?;
                let encryption = durable::encryption(&encryption)?;
                let durable = self.durable_or("its tables have no files to encrypt")?;
                let name = durable::stored_name(&TableReference::from(table.as_str()))?;
                durable.store.set_table_encryption(&name, encryption).await?;
                Output::Command {
                    tag: "ALTER TABLE".into(),
                    rows: None,
                }
            }
            SecurityStatement::RekeySystem => {
                admin_only("rekey the system files")?;
                let durable = self.durable_or("it has no system files to rewrite")?;
                durable.store.rekey_system().await?;
                Output::Command {
                    tag: "ALTER SYSTEM".into(),
                    rows: None,
                }
            }
            SecurityStatement::SetKeyProvider(name) => {
                admin_only("move the master key")?;
                let (Some(durable), Some(admin)) = (&self.durable, self.hooks.key_admin()) else {
                    return Err(SqlError::NotSupported(
                        "this server keeps no data on disk, so it has no master key to move".into(),
                    ));
                };
                let store = durable.store.clone();
                // One task from start to end: a cancelled statement cannot
                // leave the move half done (the old key file not destroyed,
                // the config file not updated).
                let moving = tokio::spawn(async move {
                    let opener = admin.clone();
                    let to = tokio::task::spawn_blocking(move || opener.open(&name))
                        .await
                        .map_err(|e| SqlError::ServerState(format!("opening the key provider: {e}")))?
                        .map_err(SqlError::ServerState)?;
                    let old = store.provider();
                    let moved = store.switch_provider(to).await?;
                    tokio::task::spawn_blocking(move || admin.moved(&moved, old))
                        .await
                        .map_err(|e| SqlError::ServerState(format!("after moving the master key: {e}")))
                });
                let done = moving
                    .await
                    .map_err(|e| SqlError::ServerState(format!("moving the master key: {e}")))??;
                for line in done {
                    tracing::info!("ALTER SYSTEM SET key_provider: {line}");
                }
                Output::Command {
                    tag: "ALTER SYSTEM".into(),
                    rows: None,
                }
            }
            SecurityStatement::Deallocate { all } => Output::Command {
                tag: if all { "DEALLOCATE ALL" } else { "DEALLOCATE" }.into(),
                rows: None,
            },
            SecurityStatement::Checkpoint => {
                admin_only("run CHECKPOINT")?;
                if let Some(durable) = &self.durable {
                    durable.store.checkpoint().await?;
                }
                Output::Command {
                    tag: "CHECKPOINT".into(),
                    rows: None,
                }
            }
            SecurityStatement::Vacuum { tables } => {
                admin_only("run VACUUM")?;
                if session.block != Block::None {
                    // PostgreSQL refuses it in a multi-statement string too.
                    return Err(SqlError::ActiveTransaction(
                        "VACUUM cannot run inside a transaction block; COMMIT or ROLLBACK first".into(),
                    ));
                }
                for name in &tables {
                    if !session.ctx.table_exist(name.as_str())? {
                        return Err(SqlError::UndefinedTable(format!("relation \"{name}\" does not exist")));
                    }
                }
                if let Some(durable) = &self.durable {
                    durable.store.checkpoint().await?;
                    durable.store.compact().await?;
                }
                Output::Command {
                    tag: "VACUUM".into(),
                    rows: None,
                }
            }
            SecurityStatement::Show(name) => {
                let value = self.show_value(session, &name)?;
                let schema = show_schema(&name);
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(StringArray::from(vec![value])) as ArrayRef],
                )
                .map_err(|e| SqlError::Query {
                    message: e.to_string(),
                    plan: false,
                })?;
                Output::Rows {
                    schema,
                    batches: vec![batch],
                    tag: "SHOW",
                }
            }
            SecurityStatement::Set(name, value) => {
                session.settings.insert(name, value);
                Output::Command {
                    tag: "SET".into(),
                    rows: None,
                }
            }
            // The wire layer tracks the transaction status from these outputs.
            SecurityStatement::Begin => {
                if matches!(session.block, Block::None | Block::Implicit) {
                    // Within a query string, the statements before BEGIN
                    // join the block, as in PostgreSQL.
                    session.block = Block::Open;
                }
                Output::Begin
            }
            SecurityStatement::Commit => {
                let block = std::mem::replace(&mut session.block, Block::None);
                let tx = session.tx.0.lock().await.take();
                match (block, tx, &self.durable) {
                    // A failed block cannot commit: as in PostgreSQL, COMMIT rolls it back.
                    (Block::Aborted, _, _) => Output::End { rolled_back: true },
                    (_, Some(tx), Some(durable)) => {
                        durable.store.commit(tx).await?;
                        Output::End { rolled_back: false }
                    }
                    _ => Output::End { rolled_back: false },
                }
            }
            SecurityStatement::Rollback => {
                session.block = Block::None;
                session.tx.0.lock().await.take();
                Output::End { rolled_back: true }
            }
        })
    }

    pub(super) async fn grant_objects(
        &self,
        session: &SqlSession,
        target: Target,
    ) -> Result<Vec<GrantObject>, SqlError> {
        match target {
            Target::AllTables => Ok(vec![GrantObject::AllTables]),
            Target::Tables(names) => {
                let mut out = Vec::new();
                for name in names {
                    let qualified = if name.contains('.') {
                        name.clone()
                    } else {
                        format!("{SCHEMA}.{name}")
                    };
                    if !session.ctx.table_exist(qualified.as_str())? {
                        return Err(SqlError::UndefinedTable(format!("relation \"{name}\" does not exist")));
                    }
                    out.push(GrantObject::Table(qualified));
                }
                Ok(out)
            }
        }
    }

    pub(super) fn show_value(&self, session: &SqlSession, name: &str) -> Result<String, SqlError> {
        if let Some(v) = session.settings.get(name) {
            return Ok(v.clone());
        }
        let fixed = match name {
            "ssl" => {
                if self.hooks.ssl_enabled() {
                    "on"
                } else {
                    "off"
                }
            }
            "server_version" => sys::SERVER_VERSION,
            "server_encoding" | "client_encoding" => "UTF8",
            "transaction_isolation" | "default_transaction_isolation" => "read committed",
            "standard_conforming_strings" | "integer_datetimes" => "on",
            "datestyle" => "ISO, MDY",
            "timezone" => "UTC",
            "search_path" => "public",
            "is_superuser" => {
                if self.access.is_superuser(&session.info.user) {
                    "on"
                } else {
                    "off"
                }
            }
            "session_authorization" => session.info.user.as_str(),
            "max_identifier_length" => "63",
            "default_transaction_read_only" | "transaction_read_only" => "off",
            _ => {
                return Err(SqlError::UndefinedObject(format!(
                    "unrecognized configuration parameter \"{name}\""
                )));
            }
        };
        Ok(fixed.to_owned())
    }
}

pub(super) fn user_options(options: security::Options) -> Result<UserOptions, SqlError> {
    let password = match options.password {
        None => None,
        Some(None) => Some(None),
        Some(Some(text)) => {
            if text.is_empty() {
                return Err(SqlError::InvalidValue(
                    "empty passwords are not allowed; use PASSWORD NULL to remove the password".into(),
                ));
            }
            // A verifier made elsewhere is taken as it is; a password becomes a verifier now.
            Some(Some(
                ScramVerifier::parse_pg_string(&text).unwrap_or_else(|| ScramVerifier::new(&text, SCRAM_ITERATIONS)),
            ))
        }
    };
    Ok(UserOptions {
        password,
        require: options.require,
        superuser: options.superuser,
        login: options.login,
    })
}
