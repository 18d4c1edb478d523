//! Tables in the store: lookup, `CREATE TABLE` (and `AS SELECT`), `DROP TABLE`.

use super::*;

impl Engine {
    /// Removes the grants on a dropped table, durably.
    pub(super) async fn forget_grants(&self, qualified: &str) -> Result<(), SqlError> {
        let _serial = self.access_changes.lock().await;
        let before = self.access.export();
        self.access.forget_table(qualified);
        self.persist_access(before).await
    }

    /// `DROP TABLE a, b` and `TRUNCATE a, b` (pgbench -i sends both) as one
    /// statement per table, or `None` for any other statement. The tables
    /// of a `DROP` without `IF EXISTS` must all exist before any goes. The
    /// truncations join one transaction, so in autocommit they commit
    /// together at the statement's end.
    pub(super) fn one_object_each(&self, session: &SqlSession, sql: &str) -> Result<Option<Vec<String>>, SqlError> {
        let mut statements = self.parser.parse(sql)?;
        let Some(statement) = statements.pop().filter(|_| statements.is_empty()) else {
            return Ok(None);
        };
        Ok(match &statement {
            Statement::Drop {
                object_type: ObjectType::Table,
                names,
                if_exists,
                ..
            } if names.len() > 1 => {
                if !if_exists {
                    for name in names {
                        if !session.ctx.table_exist(name.to_string().as_str())? {
                            return Err(SqlError::UndefinedTable(format!("table \"{name}\" does not exist")));
                        }
                    }
                }
                Some(
                    names
                        .iter()
                        .map(|name| {
                            let mut one = statement.clone();
                            if let Statement::Drop { names, .. } = &mut one {
                                *names = vec![name.clone()];
                            }
                            one.to_string()
                        })
                        .collect(),
                )
            }
            Statement::Truncate(truncate) if truncate.table_names.len() > 1 => Some(
                truncate
                    .table_names
                    .iter()
                    .map(|target| {
                        let mut one = truncate.clone();
                        one.table_names = vec![target.clone()];
                        Statement::Truncate(one).to_string()
                    })
                    .collect(),
            ),
            _ => None,
        })
    }

    /// The storage engine's table `name`, if it is one.
    pub(super) async fn stored_table(
        &self,
        session: &SqlSession,
        name: &TableReference,
    ) -> Result<Option<SealTable>, SqlError> {
        let provider = match session.ctx.table_provider(name.clone()).await {
            Ok(p) => p,
            Err(_) => return Ok(None),
        };
        Ok(provider.downcast_ref::<SealTable>().cloned())
    }

    /// `CREATE TABLE`, durably, with a fresh table key; `AS SELECT` fills
    /// it in one transaction (and drops it again if that fails).
    pub(super) async fn create_table(
        &self,
        session: &mut SqlSession,
        durable: &Durable,
        create: &CreateMemoryTable,
        options: TableOptions,
    ) -> Result<Output, SqlError> {
        if create.temporary {
            return Err(SqlError::NotSupported(
                "TEMPORARY tables; create a regular table and drop it when done".into(),
            ));
        }
        if create.or_replace {
            return Err(SqlError::NotSupported(
                "CREATE OR REPLACE TABLE; DROP TABLE first, then CREATE TABLE".into(),
            ));
        }
        let name = durable::stored_name(&create.name)?;
        let schema = durable::table_schema(create)?;
        let fill = !defines_columns_only(&create.input);
        if session
            .ctx
            .table_exist(TableReference::partial(SCHEMA, name.as_str()))?
        {
            if create.if_not_exists {
                return Ok(Output::Command {
                    tag: "CREATE TABLE".into(),
                    rows: None,
                });
            }
            return Err(SqlError::DuplicateTable(format!("relation \"{name}\" already exists")));
        }
        let encryption = options.encryption.unwrap_or(durable.default_encryption);
        if options.key_provider.is_some() && encryption == sealdb_storage::Encryption::None {
            return Err(SqlError::InvalidValue(
                "key_provider names where the table's keys live, and encryption = 'none' gives it none; drop one of the two"
                    .into(),
            ));
        }
        // `AS SELECT` creates the table unpublished: a crash before it is
        // filled and published leaves nothing, as for any statement that
        // was never acknowledged.
        let table = durable
            .store
            .create_table_with_keys(&name, schema, encryption, options.key_provider, fill)
            .await?;
        let provider = Arc::new(SealTable::new(table, durable.keys.clone(), &durable.store));
        // `AS SELECT` fills the table before anyone else can see it: no other
        // session can write to it, and a failure drops it unseen.
        if fill {
            let filled = async {
                let insert = LogicalPlanBuilder::insert_into(
                    Arc::unwrap_or_clone(create.input.clone()),
                    TableReference::partial(SCHEMA, name.as_str()),
                    provider_as_source(provider.clone()),
                    InsertOp::Append,
                )?
                .build()?;
                let physical = session.state.create_physical_plan(&insert).await?;
                let batches = self.executor.collect(physical, session.task.clone()).await?;
                let tx = session.tx.0.lock().await.take();
                if let Some(tx) = tx {
                    durable.store.commit(tx).await?;
                }
                durable.store.publish_table(&name).await?;
                Ok::<_, SqlError>(count_of(&batches))
            }
            .await;
            let rows = match filled {
                Ok(rows) => rows,
                Err(e) => {
                    session.tx.0.lock().await.take();
                    if let Err(undo) = durable.store.drop_table(&name).await {
                        tracing::warn!("could not drop table {name} after CREATE TABLE AS failed: {undo}");
                    }
                    return Err(e);
                }
            };
            self.register_new_table(session, &name, provider)?;
            return Ok(Output::Command {
                tag: "SELECT".into(),
                rows: Some(rows),
            });
        }
        self.register_new_table(session, &name, provider)?;
        Ok(Output::Command {
            tag: "CREATE TABLE".into(),
            rows: None,
        })
    }

    pub(super) fn register_new_table(
        &self,
        session: &mut SqlSession,
        name: &str,
        provider: Arc<SealTable>,
    ) -> Result<(), SqlError> {
        self.base
            .register_table(TableReference::partial(SCHEMA, name), provider)?;
        self.catalog_version.fetch_add(1, Ordering::AcqRel);
        session.refresh();
        Ok(())
    }

    /// `DROP TABLE` of a stored table: its keys are destroyed durably
    /// before its files go.
    pub(super) async fn drop_table(
        &self,
        session: &mut SqlSession,
        durable: &Durable,
        drop: &DropTable,
    ) -> Result<Output, SqlError> {
        let name = durable::stored_name(&drop.name)?;
        durable.store.drop_table(&name).await?;
        durable.keys.forget_obsolete();
        self.base
            .deregister_table(TableReference::partial(SCHEMA, name.as_str()))?;
        self.catalog_version.fetch_add(1, Ordering::AcqRel);
        session.refresh();
        self.forget_grants(&format!("{SCHEMA}.{name}")).await?;
        Ok(Output::Command {
            tag: "DROP TABLE".into(),
            rows: None,
        })
    }
}
