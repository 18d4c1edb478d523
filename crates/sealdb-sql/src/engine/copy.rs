//! `COPY ... TO STDOUT` and `COPY ... FROM STDIN`.

use super::*;

impl Engine {
    /// `COPY table|(query) TO STDOUT`: runs the query as a `SELECT`.
    pub(super) async fn copy_out(
        &self,
        session: &mut SqlSession,
        source: CopySource,
        format: CopyFormat,
    ) -> Result<Output, SqlError> {
        let query = match source {
            CopySource::Query(query) => query.to_string(),
            CopySource::Table { table_name, columns } => {
                let columns = if columns.is_empty() {
                    "*".to_owned()
                } else {
                    columns.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
                };
                format!("SELECT {columns} FROM {table_name}")
            }
        };
        let (plan, _) = self.plan(session, &query).await?;
        if !returns_rows(&plan) {
            return Err(SqlError::Syntax(
                "COPY (...) TO STDOUT needs a query that returns rows".into(),
            ));
        }
        privileges::check(&self.access, &session.info.user, &plan)?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let physical = session.state.create_physical_plan(&plan).await?;
        let batches = self.executor.collect(physical, session.task.clone()).await?;
        Ok(Output::CopyOut {
            schema,
            batches,
            format,
        })
    }

    /// `COPY table [(columns)] FROM STDIN`: checks the table, the columns
    /// and the INSERT privilege, then waits for data.
    pub(super) async fn copy_in(
        &self,
        session: &mut SqlSession,
        source: CopySource,
        format: CopyFormat,
    ) -> Result<Output, SqlError> {
        let CopySource::Table { table_name, columns } = source else {
            return Err(SqlError::Syntax(
                "COPY (query) FROM STDIN is not valid; name a table".into(),
            ));
        };
        let Some(durable) = &self.durable else {
            return Err(SqlError::NotSupported(
                "COPY FROM STDIN without a data directory".into(),
            ));
        };
        let name = TableReference::from(table_name.to_string());
        let Some(target) = self.stored_table(session, &name).await? else {
            return Err(SqlError::UndefinedTable(format!(
                "relation \"{table_name}\" does not exist"
            )));
        };
        let schema = target.storage_table().schema().clone();
        // The INSERT privilege, checked the way an INSERT is.
        let insert = LogicalPlanBuilder::insert_into(
            LogicalPlanBuilder::empty(false).build()?,
            name.clone(),
            provider_as_source(Arc::new(target.clone())),
            InsertOp::Append,
        )?
        .build()?;
        privileges::check(&self.access, &session.info.user, &insert)?;
        let columns: Vec<String> = if columns.is_empty() {
            schema.fields().iter().map(|f| f.name().clone()).collect()
        } else {
            let mut out: Vec<String> = Vec::with_capacity(columns.len());
            for c in columns {
                // Unquoted names fold to lower case, as in PostgreSQL.
                let column = match c.quote_style {
                    None => c.value.to_lowercase(),
                    Some(_) => c.value.clone(),
                };
                if schema.field_with_name(&column).is_err() {
                    return Err(SqlError::UndefinedColumn(format!(
                        "column \"{column}\" of relation \"{table_name}\" does not exist"
                    )));
                }
                if out.contains(&column) {
                    return Err(SqlError::Syntax(format!(
                        "column \"{column}\" specified more than once"
                    )));
                }
                out.push(column);
            }
            out
        };
        let count = columns.len();
        session.copy_in = Some(CopyIn {
            parser: CopyParser::new(format, columns),
            table: target.storage_table().clone(),
            lock_timeout: durable.store.options().lock_timeout,
            rows: 0,
            failed: None,
        });
        Ok(Output::CopyIn { columns: count })
    }

    /// Data of the running `COPY ... FROM STDIN`. An error is kept and
    /// reported when the client ends the copy.
    pub async fn copy_data(&self, session: &mut SqlSession, data: &[u8]) {
        let Some(mut copy) = session.copy_in.take() else {
            return;
        };
        if copy.failed.is_none()
            && let Err(e) = self.copy_step(session, &mut copy, data, false).await
        {
            copy.failed = Some(e);
        }
        session.copy_in = Some(copy);
    }

    pub(super) async fn copy_step(
        &self,
        session: &SqlSession,
        copy: &mut CopyIn,
        data: &[u8],
        last: bool,
    ) -> Result<(), SqlError> {
        copy.parser.feed(data, last)?;
        if !(last || copy.parser.batch_ready()) {
            return Ok(());
        }
        if last && copy.parser.unfinished() {
            return Err(SqlError::BadData {
                code: "22P04",
                message: "COPY data ended inside a record".into(),
            });
        }
        let Some(batch) = copy.parser.take_batch(copy.table.schema())? else {
            return Ok(());
        };
        let Some(durable) = &self.durable else {
            return Err(SqlError::ServerState("COPY FROM STDIN needs the store".into()));
        };
        copy.rows += session
            .tx
            .insert(&durable.store, &copy.table, copy.lock_timeout, &batch)
            .await?;
        Ok(())
    }

    /// The client ended the copy: the rest is parsed and added, and in
    /// autocommit everything is committed before `COPY n` is returned.
    pub async fn copy_done(&self, session: &mut SqlSession) -> Result<Output, SqlError> {
        session.running = false;
        let result = match session.copy_in.take() {
            None => Err(SqlError::ServerState("no COPY FROM STDIN is running".into())),
            Some(mut copy) => match copy.failed.take() {
                Some(e) => Err(e),
                None => self
                    .copy_step(session, &mut copy, &[], true)
                    .await
                    .map(|()| Output::Command {
                        tag: "COPY".into(),
                        rows: Some(usize::try_from(copy.rows).unwrap_or(usize::MAX)),
                    }),
            },
        };
        let output = self.end_statement(session, result).await?;
        self.end_implicit(session).await?;
        Ok(output)
    }

    /// The client abandoned the copy: nothing of it is kept.
    pub async fn copy_fail(&self, session: &mut SqlSession, message: &str) -> SqlError {
        session.running = false;
        session.copy_in = None;
        let error = SqlError::CopyAborted(format!("COPY from stdin failed: {message}"));
        match self.end_statement(session, Err(error)).await {
            Err(e) => e,
            Ok(_) => SqlError::CopyAborted(format!("COPY from stdin failed: {message}")),
        }
    }
}
