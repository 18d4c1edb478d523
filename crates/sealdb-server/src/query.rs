//! Simple and extended query protocol on top of the SQL engine.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, stream};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use sealdb_sql::{Engine, Output, Prepared, SqlError};

use crate::encode;
use crate::error::{sql_error_to_wire, wire_error};
use crate::startup::SessionSlot;

/// Runs statements for authenticated sessions.
pub(crate) struct QueryHandler {
    engine: Arc<Engine>,
    parser: Arc<Parser>,
}

impl Debug for QueryHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryHandler").finish_non_exhaustive()
    }
}

impl QueryHandler {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine: engine.clone(),
            parser: Arc::new(Parser { engine }),
        }
    }
}

pub(crate) fn session_of<C: ClientInfo>(client: &C) -> PgWireResult<Arc<SessionSlot>> {
    client
        .session_extensions()
        .get::<SessionSlot>()
        .ok_or_else(|| wire_error("FATAL", "28000", "not authenticated"))
}

fn response(output: Output, format: &Format) -> PgWireResult<Response> {
    Ok(match output {
        Output::Rows { schema, batches, tag } => {
            let fields = encode::fields(&schema, format);
            let rows = encode::rows(&fields, &batches)?;
            let mut r = QueryResponse::new(fields, stream::iter(rows.into_iter().map(Ok)));
            r.set_command_tag(tag);
            Response::Query(r)
        }
        Output::Command { tag, rows } => {
            let mut t = Tag::new(&tag);
            if tag == "INSERT" {
                t = t.with_oid(0);
            }
            if let Some(n) = rows {
                t = t.with_rows(n);
            }
            Response::Execution(t)
        }
        Output::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Output::End { rolled_back } => {
            Response::TransactionEnd(Tag::new(if rolled_back { "ROLLBACK" } else { "COMMIT" }))
        }
        Output::CopyIn { columns } => Response::CopyIn(crate::copy::copy_in(columns)),
        Output::CopyOut {
            schema,
            batches,
            format,
        } => Response::CopyOut(crate::copy::copy_out(&schema, &batches, &format)?),
        Output::Empty => Response::EmptyQuery,
    })
}

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let slot = session_of(client)?;
        let mut session = slot.session.lock().await;
        let executed = self.engine.execute(&mut session, query).await;
        let mut responses = executed
            .outputs
            .into_iter()
            .map(|o| response(o, &Format::UnifiedText))
            .collect::<PgWireResult<Vec<_>>>()?;
        if let Some(error) = executed.error {
            // The statements before the failed one were answered; the
            // error ends the string, as in PostgreSQL.
            match log_error(&session, error) {
                PgWireError::UserError(info) if !responses.is_empty() => responses.push(Response::Error(info)),
                other => return Err(other),
            }
        }
        Ok(responses)
    }
}

fn log_error(session: &sealdb_sql::SqlSession, e: SqlError) -> PgWireError {
    if matches!(e, SqlError::PermissionDenied(_)) {
        tracing::warn!(session = session.info().id, user = ?session.info().user, "{e}");
    }
    sql_error_to_wire(&e)
}

/// Plans statements for Parse/Describe.
pub(crate) struct Parser {
    engine: Arc<Engine>,
}

impl Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parser")
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Arc<Prepared>;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let slot = session_of(client)?;
        let session = slot.session.lock().await;
        match self.engine.prepare(&session, sql).await {
            Ok(Prepared::Empty) => Ok(None),
            Ok(p) => Ok(Some(Arc::new(p))),
            Err(e) => Err(log_error(&session, e)),
        }
    }

    fn get_parameter_types(&self, statement: &Self::Statement) -> PgWireResult<Vec<Type>> {
        Ok(match statement.as_ref() {
            Prepared::Plan { params, .. } => params.iter().map(|p| encode::param_type(p.as_ref())).collect(),
            _ => Vec::new(),
        })
    }

    fn get_result_schema(&self, statement: &Self::Statement, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        let schema = match statement.as_ref() {
            Prepared::Plan { schema, .. } | Prepared::Text { schema, .. } => schema.clone(),
            Prepared::Empty => return Ok(Vec::new()),
        };
        let format = format.cloned().unwrap_or(Format::UnifiedText);
        Ok(encode::fields(&schema, &format).as_ref().clone())
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = Arc<Prepared>;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let slot = session_of(client)?;
        let mut session = slot.session.lock().await;
        let prepared = portal.statement.statement.clone();
        let mut values = Vec::new();
        if let Prepared::Plan { params, .. } = prepared.as_ref() {
            if portal.parameters.len() != params.len() {
                return Err(wire_error(
                    "ERROR",
                    "08P01",
                    format!(
                        "bind message supplies {} parameters, but the statement needs {}",
                        portal.parameters.len(),
                        params.len()
                    ),
                ));
            }
            for (i, target) in params.iter().enumerate() {
                let declared = portal.statement.parameter_types.get(i).cloned().flatten();
                let binary = matches!(encode::format_for(&portal.parameter_format, i), FieldFormat::Binary);
                let value = encode::decode_param(
                    portal.parameters[i].as_ref(),
                    binary,
                    declared.as_ref(),
                    target.as_ref(),
                )
                .map_err(|m| wire_error("ERROR", "22P02", format!("parameter ${}: {m}", i + 1)))?;
                values.push(value);
            }
        }
        let output = self
            .engine
            .execute_prepared(&mut session, &prepared, values)
            .await
            .map_err(|e| log_error(&session, e))?;
        response(output, &portal.result_column_format)
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        statement: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = self.parser.get_parameter_types(&statement.statement)?;
        // Types the client declared win over inferred ones.
        let params = params
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                statement
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|d| *d != Type::UNKNOWN)
                    .unwrap_or(t)
            })
            .collect();
        let fields = self.parser.get_result_schema(&statement.statement, None)?;
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = self
            .parser
            .get_result_schema(&portal.statement.statement, Some(&portal.result_column_format))?;
        Ok(DescribePortalResponse::new(fields))
    }
}
