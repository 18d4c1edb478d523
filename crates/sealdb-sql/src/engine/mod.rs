//! The engine shared by all sessions, and one session's state.

mod copy;
mod ddl;
mod statements;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use datafusion::arrow::array::{Array, ArrayRef, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::{ParamValues, ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    ColumnarValue, CreateMemoryTable, DdlStatement, DropTable, LogicalPlan, LogicalPlanBuilder, Volatility, WriteOp,
    create_udf,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{CopySource, CopyTarget, ObjectType, Statement};
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use sealdb_auth::{AccessControl, GrantObject, SCRAM_ITERATIONS, ScramVerifier, UserOptions};

use crate::cache::StatementCache;
use crate::copy::{CopyFormat, CopyParser};
use crate::durable::{self, Durable, TableOptions};
use crate::executor::QueryExecutor;
use crate::parse::SqlParser;
use crate::prepared::{self as sql_prepared, PreparedStatements};
use crate::security::{self, SecurityStatement, Target};
use crate::spill::SealSpillFactory;
use crate::storage_table::{SealTable, SegmentKeys, TxSlot, delete_or_update};
use crate::sys::{self, ServerHooks};
use crate::{SqlError, privileges};

/// The catalog section holding users and grants.
pub const ACCESS_SECTION: &str = "access";

/// The catalog name clients see as the database.
pub const CATALOG: &str = "sealdb";
/// The schema user tables live in.
pub const SCHEMA: &str = "public";

/// TLS facts of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSessionInfo {
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: String,
    /// Negotiated cipher suite.
    pub cipher: String,
    /// Negotiated key exchange group (`X25519MLKEM768` preferred).
    pub key_exchange: String,
    /// The verified client certificate, if one was presented.
    pub client_cert: Option<ClientCertSummary>,
}

/// What `sys.sessions` shows of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertSummary {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial in hex.
    pub serial: String,
    /// Expiry, `YYYY-MM-DD HH:MM:SS UTC`.
    pub not_after: String,
    /// Expiry, Unix seconds.
    pub not_after_unix: i64,
}

/// Who a session is and how it connected; fixed at login.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Server-unique id.
    pub id: u64,
    /// Authenticated user.
    pub user: String,
    /// Database asked for in the startup packet.
    pub database: String,
    /// `application_name` from the startup packet.
    pub application_name: String,
    /// Client address and port.
    pub client_addr: String,
    /// `scram-sha-256`, `scram-sha-256-plus` or `certificate`.
    pub auth_method: String,
    /// TLS facts, `None` for plaintext.
    pub tls: Option<TlsSessionInfo>,
    /// Login time.
    pub connected_at: SystemTime,
}

/// One client's session.
pub struct SqlSession {
    info: Arc<SessionInfo>,
    ctx: SessionContext,
    /// A snapshot of `ctx`'s state and its task context, made once and
    /// again only after statements that change settings: cloning them per
    /// statement costs more than planning `SELECT 1`. Tables are shared, so
    /// the snapshot always sees current data.
    state: SessionState,
    task: Arc<TaskContext>,
    settings: BTreeMap<String, String>,
    cache: StatementCache,
    /// The open transaction's writes (also a config extension of `state`,
    /// where table scans and inserts find it).
    tx: Arc<TxSlot>,
    block: Block,
    /// A `COPY ... FROM STDIN` receiving data.
    copy_in: Option<CopyIn>,
    /// A statement started and has not ended yet (see `begin_statement`).
    running: bool,
    /// SQL-level `PREPARE`d statements.
    prepared: PreparedStatements,
}

/// An incoming `COPY ... FROM STDIN`.
struct CopyIn {
    parser: CopyParser,
    table: Arc<sealdb_storage::Table>,
    lock_timeout: std::time::Duration,
    rows: u64,
    /// The first error; data after it is ignored until the client ends the copy.
    failed: Option<SqlError>,
}

/// Where a session is with respect to `BEGIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Autocommit: each statement commits.
    None,
    /// The statements of one simple-protocol query string: as in
    /// PostgreSQL they form one implicit transaction, committed when the
    /// string ends and rolled back entirely when one of them fails.
    Implicit,
    /// In a `BEGIN` block.
    Open,
    /// In a `BEGIN` block where a statement failed: only `COMMIT` (which
    /// rolls back) and `ROLLBACK` are accepted.
    Aborted,
}

impl Block {
    /// In a block the client opened with `BEGIN`.
    fn explicit(self) -> bool {
        matches!(self, Block::Open | Block::Aborted)
    }
}

impl std::fmt::Debug for SqlSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSession")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl SqlSession {
    fn refresh(&mut self) {
        self.state = self.ctx.state();
        self.task = Arc::new(TaskContext::from(&self.state));
        self.cache.clear();
    }

    /// Who this is.
    pub fn info(&self) -> &Arc<SessionInfo> {
        &self.info
    }
}

/// What a query string produced: the output of each statement that ran,
/// and the error that stopped it, if one did.
#[derive(Debug)]
pub struct Executed {
    pub outputs: Vec<Output>,
    pub error: Option<SqlError>,
}

impl Executed {
    fn ok(outputs: Vec<Output>) -> Self {
        Self { outputs, error: None }
    }

    /// The outputs if every statement succeeded, else the error.
    pub fn into_result(self) -> Result<Vec<Output>, SqlError> {
        match self.error {
            None => Ok(self.outputs),
            Some(e) => Err(e),
        }
    }
}

/// The result of one statement.
#[derive(Debug)]
pub enum Output {
    /// Rows with their schema; `tag` is the command tag (`SELECT`, `SHOW`).
    Rows {
        /// Column names and types.
        schema: SchemaRef,
        /// The rows.
        batches: Vec<RecordBatch>,
        /// Command tag.
        tag: &'static str,
    },
    /// A command without rows: `INSERT 0 n`, `CREATE TABLE`, ...
    Command {
        /// Tag word(s).
        tag: String,
        /// Affected rows, for tags that carry them.
        rows: Option<usize>,
    },
    /// `BEGIN`.
    Begin,
    /// `COMMIT` (or `ROLLBACK` with `rolled_back`).
    End {
        /// Whether this was a rollback.
        rolled_back: bool,
    },
    /// `COPY ... FROM STDIN` is ready for data: send it with
    /// [`Engine::copy_data`] and end it with [`Engine::copy_done`] or
    /// [`Engine::copy_fail`].
    CopyIn {
        /// Columns per row.
        columns: usize,
    },
    /// `COPY ... TO STDOUT`: the rows, to be sent in `format`.
    CopyOut {
        /// Column names and types.
        schema: SchemaRef,
        /// The rows.
        batches: Vec<RecordBatch>,
        /// Text or CSV and their options.
        format: CopyFormat,
    },
    /// An empty statement.
    Empty,
}

/// A statement planned for the extended protocol.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// A DataFusion plan with `$n` placeholders.
    Plan {
        /// The plan.
        plan: Arc<LogicalPlan>,
        /// Parameter types as inferred, `$1` first (`None`: unknown, sent as text).
        params: Vec<Option<DataType>>,
        /// Result columns, empty for commands.
        schema: SchemaRef,
    },
    /// One of ours, or a statement without result rows; run as simple text.
    Text {
        /// The text.
        sql: String,
        /// Result columns, if known before running.
        schema: SchemaRef,
    },
    /// Nothing.
    Empty,
}

/// Shared by every session.
pub struct Engine {
    base: SessionContext,
    access: Arc<AccessControl>,
    hooks: Arc<dyn ServerHooks>,
    parser: SqlParser,
    /// Bumped by every DDL statement; cached plans of older versions are stale.
    catalog_version: AtomicU64,
    /// Where tables, users and grants are kept durably; `None` keeps them
    /// in memory.
    durable: Option<Durable>,
    /// The same store, for the `sys` tables.
    stored: sys::StoreCell,
    /// Serializes changes of users and grants with their persistence.
    access_changes: tokio::sync::Mutex<()>,
    /// Where plans run (a runtime of their own in the server).
    executor: QueryExecutor,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

/// How much memory queries may use and where they spill beyond it.
#[derive(Debug, Clone, Default)]
pub struct QueryMemory {
    /// Bytes all running queries may hold before spilling (`memory-limit`);
    /// `None`: no limit.
    pub limit: Option<usize>,
    /// Where encrypted spill files go (`DATA/tmp`); `None`: queries never
    /// spill, and fail when they run out of memory.
    pub spill_dir: Option<std::path::PathBuf>,
}

impl Engine {
    /// The store tables, users and grants are kept in, if any.
    pub fn store(&self) -> Option<&sealdb_storage::Store> {
        self.durable.as_ref().map(|d| &d.store)
    }

    /// The store, or a clear refusal for a server that keeps no data on
    /// disk, which `why` completes.
    fn durable_or(&self, why: &str) -> Result<&Durable, SqlError> {
        self.durable
            .as_ref()
            .ok_or_else(|| SqlError::NotSupported(format!("this server keeps no data on disk, so {why}")))
    }

    /// A new engine with an empty `public` schema, `pg_catalog`,
    /// `information_schema` and `sys`, without a memory limit and without
    /// spilling.
    pub fn new(access: Arc<AccessControl>, hooks: Arc<dyn ServerHooks>) -> Result<Self, SqlError> {
        Self::with_memory(access, hooks, QueryMemory::default())
    }

    /// The same with a memory limit and encrypted spill files.
    pub fn with_memory(
        access: Arc<AccessControl>,
        hooks: Arc<dyn ServerHooks>,
        memory: QueryMemory,
    ) -> Result<Self, SqlError> {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(true)
            .with_information_schema(true);
        // Nothing is ever written to disk in the clear: without a spill
        // directory the disk manager is off.
        let disk = match &memory.spill_dir {
            Some(dir) => {
                Arc::new(SealSpillFactory::new(dir).map_err(|e| SqlError::ServerState(e.to_string()))?).disk_manager()
            }
            None => DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        };
        let mut runtime = RuntimeEnvBuilder::new().with_disk_manager_builder(disk);
        if let Some(limit) = memory.limit {
            // Fair shares among the operators that can spill, so that one
            // sort cannot starve the others' merge buffers.
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
        }
        let base = SessionContext::new_with_config_rt(config, runtime.build_arc()?);
        datafusion_pg_catalog::setup_pg_catalog(&base, CATALOG, EmptyContextProvider)
            .map_err(|e| SqlError::from(*e))?;
        let catalog = base
            .catalog(CATALOG)
            .ok_or_else(|| SqlError::ServerState("default catalog missing".into()))?;
        let sys_schema = Arc::new(MemorySchemaProvider::new());
        catalog.register_schema("sys", sys_schema.clone())?;
        let stored = sys::StoreCell::default();
        sys::register(&sys_schema, access.clone(), hooks.clone(), stored.clone())?;
        Ok(Self {
            base,
            access,
            hooks,
            parser: SqlParser::new(),
            catalog_version: AtomicU64::new(0),
            durable: None,
            stored,
            access_changes: tokio::sync::Mutex::new(()),
            executor: QueryExecutor::default(),
        })
    }

    /// Runs every query on `executor`'s runtime (see [`crate::executor`]).
    pub fn with_executor(mut self, executor: QueryExecutor) -> Self {
        self.executor = executor;
        self
    }

    /// Keeps tables, users and grants durably in `store`: every change is
    /// written (encrypted, fsynced) before it is acknowledged. Changes of
    /// users and grants are undone in memory if the write fails. New tables
    /// get `default_encryption` unless they say otherwise.
    pub fn with_store(
        mut self,
        store: sealdb_storage::Store,
        default_encryption: sealdb_storage::Encryption,
    ) -> Result<Self, SqlError> {
        let keys = SegmentKeys::new();
        for table in store.tables() {
            let name = table.name().to_owned();
            let provider = SealTable::new(table, keys.clone(), &store);
            self.base
                .register_table(TableReference::partial(SCHEMA, name), Arc::new(provider))?;
        }
        let _ = self.stored.set(store.clone());
        self.durable = Some(Durable {
            store,
            keys,
            default_encryption,
        });
        Ok(self)
    }

    /// A session for an authenticated client.
    pub fn session(&self, info: SessionInfo) -> SqlSession {
        let info = Arc::new(info);
        let mut state = self.base.state();
        let tx = TxSlot::new();
        state.config_mut().set_extension(info.clone());
        state.config_mut().set_extension(tx.clone());
        let ctx = SessionContext::new_with_state(state);
        ctx.register_udf(session_user_udf(&info.user));
        let mut settings = BTreeMap::new();
        settings.insert("application_name".to_owned(), info.application_name.clone());
        let state = ctx.state();
        let task = Arc::new(TaskContext::from(&state));
        SqlSession {
            info,
            ctx,
            state,
            task,
            settings,
            cache: StatementCache::default(),
            tx,
            block: Block::None,
            copy_in: None,
            running: false,
            prepared: PreparedStatements::default(),
        }
    }

    /// Runs a simple-protocol query string: zero or more statements.
    ///
    /// Outside a `BEGIN` block the statements of the string are one
    /// implicit transaction, as in PostgreSQL: their writes are committed
    /// together when the string ends, and the first statement that fails
    /// stops the string and rolls back the writes of those before it
    /// (whose results were already produced and are returned with the
    /// error, so the client hears of each). A table DDL statement commits
    /// the writes before it first, since DDL is not transactional here.
    pub async fn execute(&self, session: &mut SqlSession, sql: &str) -> Executed {
        let pieces = split_statements(sql);
        if pieces.is_empty() {
            return Executed::ok(vec![Output::Empty]);
        }
        let last = pieces.len() - 1;
        let mut outputs = Vec::with_capacity(pieces.len());
        for (i, piece) in pieces.into_iter().enumerate() {
            self.begin_statement(session).await;
            if i == 0 && last > 0 && session.block == Block::None {
                session.block = Block::Implicit;
            }
            let mut result = self.execute_one(session, piece).await;
            if i < last && matches!(result, Ok(Output::CopyIn { .. })) {
                session.copy_in = None;
                result = Err(SqlError::NotSupported(
                    "COPY ... FROM STDIN must be the last statement of a query string; send it on its own".into(),
                ));
            }
            let ended = self.end_statement(session, result).await;
            session.running = false;
            match ended {
                Ok(output) => outputs.push(output),
                Err(error) => {
                    return Executed {
                        outputs,
                        error: Some(error),
                    };
                }
            }
        }
        if matches!(outputs.last(), Some(Output::CopyIn { .. })) {
            // The implicit transaction ends with the copy (`copy_done`).
            return Executed::ok(outputs);
        }
        match self.end_implicit(session).await {
            Ok(()) => Executed::ok(outputs),
            Err(error) => Executed {
                outputs,
                error: Some(error),
            },
        }
    }

    /// Ends the implicit transaction of a query string, if one is open:
    /// its writes are committed (durably, before the client hears of it).
    async fn end_implicit(&self, session: &mut SqlSession) -> Result<(), SqlError> {
        if session.block != Block::Implicit {
            return Ok(());
        }
        session.block = Block::None;
        self.commit_pending(session).await
    }

    /// Commits the session's pending writes, if any.
    async fn commit_pending(&self, session: &mut SqlSession) -> Result<(), SqlError> {
        let tx = session.tx.0.lock().await.take();
        if let (Some(tx), Some(durable)) = (tx, &self.durable) {
            durable.store.commit(tx).await?;
        }
        Ok(())
    }

    /// Starts a statement. A statement that never reached its end was
    /// cancelled (the client's CancelRequest drops it mid-way): in
    /// autocommit whatever it left in the transaction is dropped, and in a
    /// `BEGIN` block the block is aborted, as PostgreSQL does.
    async fn begin_statement(&self, session: &mut SqlSession) {
        if std::mem::replace(&mut session.running, true) {
            session.copy_in = None;
            match session.block {
                Block::None | Block::Implicit => {
                    session.block = Block::None;
                    session.tx.0.lock().await.take();
                }
                Block::Open => session.block = Block::Aborted,
                Block::Aborted => {}
            }
        }
    }

    /// Ends a statement: in autocommit, commits its writes (durably, before
    /// the client hears of success) or drops them on error; in a `BEGIN`
    /// block, an error aborts the block.
    async fn end_statement(
        &self,
        session: &mut SqlSession,
        result: Result<Output, SqlError>,
    ) -> Result<Output, SqlError> {
        if matches!(result, Ok(Output::CopyIn { .. })) {
            // COPY FROM STDIN: the statement ends at copy_done.
            return result;
        }
        if result.is_err() {
            session.copy_in = None;
        }
        match session.block {
            Block::None => {
                let tx = session.tx.0.lock().await.take();
                match (result, tx, &self.durable) {
                    (Ok(output), Some(tx), Some(durable)) => {
                        durable.store.commit(tx).await?;
                        Ok(output)
                    }
                    (result, _, _) => result,
                }
            }
            Block::Implicit => {
                if result.is_err() {
                    session.block = Block::None;
                    session.tx.0.lock().await.take();
                }
                result
            }
            Block::Open => {
                if result.is_err() {
                    session.block = Block::Aborted;
                }
                result
            }
            Block::Aborted => result,
        }
    }

    /// Plans one statement for the extended protocol.
    pub async fn prepare(&self, session: &SqlSession, sql: &str) -> Result<Prepared, SqlError> {
        let pieces = split_statements(sql);
        let piece = match pieces.as_slice() {
            [] => return Ok(Prepared::Empty),
            [one] => *one,
            _ => {
                return Err(SqlError::Syntax(
                    "cannot insert multiple commands into a prepared statement".into(),
                ));
            }
        };
        if let Some(statement) = security::parse(piece)? {
            let schema = match &statement {
                SecurityStatement::Show(name) => show_schema(name),
                _ => Arc::new(Schema::empty()),
            };
            return Ok(Prepared::Text {
                sql: piece.to_owned(),
                schema,
            });
        }
        if starts_with_keyword(piece, "copy") {
            return Ok(Prepared::Text {
                sql: piece.to_owned(),
                schema: Arc::new(Schema::empty()),
            });
        }
        let (plan, _) = self.plan(session, piece).await?;
        if matches!(
            plan,
            LogicalPlan::Ddl(_)
                | LogicalPlan::Statement(
                    datafusion::logical_expr::Statement::Prepare(_)
                        | datafusion::logical_expr::Statement::Execute(_)
                        | datafusion::logical_expr::Statement::Deallocate(_)
                )
        ) {
            // Planned again at Execute, with its table options.
            return Ok(Prepared::Text {
                sql: piece.to_owned(),
                schema: Arc::new(Schema::empty()),
            });
        }
        // Refused at Parse already, so a client learns early; checked again at Execute.
        privileges::check(&self.access, &session.info.user, &plan)?;
        let types = plan.get_parameter_types()?;
        let mut params = vec![None; types.len()];
        for (name, ty) in types {
            let index = name
                .trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .filter(|i| *i >= 1 && *i <= params.len());
            let Some(index) = index else {
                return Err(SqlError::Syntax(format!(
                    "parameter {name} is not a positional parameter $1..${}",
                    params.len()
                )));
            };
            params[index - 1] = ty;
        }
        let schema = if returns_rows(&plan) {
            Arc::new(plan.schema().as_arrow().clone())
        } else {
            Arc::new(Schema::empty())
        };
        Ok(Prepared::Plan {
            plan: Arc::new(plan),
            params,
            schema,
        })
    }

    /// Runs a prepared statement with parameter values.
    pub async fn execute_prepared(
        &self,
        session: &mut SqlSession,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Result<Output, SqlError> {
        self.begin_statement(session).await;
        let result = match prepared {
            Prepared::Empty => Ok(Output::Empty),
            Prepared::Text { sql, .. } => self.execute_one(session, sql).await,
            Prepared::Plan { plan, .. } => self.execute_plan(session, plan, params).await,
        };
        let ended = self.end_statement(session, result).await;
        session.running = false;
        ended
    }

    async fn execute_plan(
        &self,
        session: &mut SqlSession,
        plan: &LogicalPlan,
        params: Vec<ScalarValue>,
    ) -> Result<Output, SqlError> {
        if session.block == Block::Aborted {
            return Err(SqlError::TransactionAborted);
        }
        session.state.mark_start_execution();
        let plan = if params.is_empty() {
            plan.clone()
        } else {
            plan.clone().with_param_values(ParamValues::from(params))?
        };
        self.run_plan(session, plan, TableOptions::default()).await
    }

    async fn execute_one(&self, session: &mut SqlSession, sql: &str) -> Result<Output, SqlError> {
        let security = security::parse(sql)?;
        if session.block == Block::Aborted
            && !matches!(security, Some(SecurityStatement::Commit | SecurityStatement::Rollback))
        {
            return Err(SqlError::TransactionAborted);
        }
        if let Some(statement) = security {
            return self.execute_security(session, statement).await;
        }
        if starts_with_keyword(sql, "copy") {
            let respelt = crate::copy::with_sql_booleans(sql);
            let mut statements = self.parser.parse(respelt.as_deref().unwrap_or(sql))?;
            if let [Statement::Copy { .. }] = statements.as_slice()
                && let Some(Statement::Copy {
                    source,
                    to,
                    target,
                    options,
                    legacy_options,
                    ..
                }) = statements.pop()
            {
                let format = CopyFormat::from_options(&options, &legacy_options)?;
                return match (to, target) {
                    (true, CopyTarget::Stdout) => self.copy_out(session, source, format).await,
                    (false, CopyTarget::Stdin) => self.copy_in(session, source, format).await,
                    (_, other) => Err(SqlError::Syntax(format!(
                        "COPY {} {other} is not valid; use COPY ... FROM STDIN or COPY ... TO STDOUT",
                        if to { "TO" } else { "FROM" }
                    ))),
                };
            }
        }
        // The statement's clock: now() and friends read this instant.
        session.state.mark_start_execution();
        let version = self.catalog_version.load(Ordering::Acquire);
        if let Some(cached) = session.cache.get(sql, version) {
            privileges::check(&self.access, &session.info.user, &cached.plan)?;
            let physical = match cached.physical {
                Some(p) => p,
                None => {
                    session
                        .state
                        .query_planner()
                        .create_physical_plan(&cached.plan, &session.state)
                        .await?
                }
            };
            let schema: SchemaRef = Arc::new(cached.plan.schema().as_arrow().clone());
            let batches = self.executor.collect(physical, session.task.clone()).await?;
            return Ok(Output::Rows {
                schema,
                batches,
                tag: "SELECT",
            });
        }
        if (starts_with_keyword(sql, "drop") || starts_with_keyword(sql, "truncate"))
            && let Some(each) = self.one_object_each(session, sql)?
        {
            let mut last = Output::Empty;
            for piece in each {
                last = Box::pin(self.execute_one(session, &piece)).await?;
            }
            return Ok(last);
        }
        let (plan, options) = self.plan(session, sql).await?;
        // EXECUTE runs its stored plan as if it had been typed in full; it
        // is not cached by its text, which names a plan that can change.
        let (plan, cacheable) = match self.sql_prepared_statement(session, plan)? {
            std::ops::ControlFlow::Break(done) => return Ok(done),
            std::ops::ControlFlow::Continue(run) => run,
        };
        if !returns_rows(&plan) {
            return self.run_plan(session, plan, options).await;
        }
        privileges::check(&self.access, &session.info.user, &plan)?;
        let optimized = Arc::new(session.state.optimize(&plan)?);
        let physical = session
            .state
            .query_planner()
            .create_physical_plan(&optimized, &session.state)
            .await?;
        let schema: SchemaRef = Arc::new(optimized.schema().as_arrow().clone());
        if cacheable {
            session.cache.insert(sql, &plan, optimized, &physical, version);
        }
        let batches = self.executor.collect(physical, session.task.clone()).await?;
        Ok(Output::Rows {
            schema,
            batches,
            tag: "SELECT",
        })
    }

    /// SQL-level `PREPARE`, `EXECUTE` and `DEALLOCATE` (see
    /// [`crate::prepared`]): `Break` with the answer, or `Continue` with
    /// the plan to run and whether it may be cached by its text.
    fn sql_prepared_statement(
        &self,
        session: &mut SqlSession,
        plan: LogicalPlan,
    ) -> Result<std::ops::ControlFlow<Output, (LogicalPlan, bool)>, SqlError> {
        use datafusion::logical_expr::Statement as S;
        let outcome = match plan {
            LogicalPlan::Statement(S::Prepare(prepare)) => {
                // Refused when made, as well as at each EXECUTE.
                privileges::check(&self.access, &session.info.user, &prepare.input)?;
                session.prepared.prepare(prepare)?
            }
            LogicalPlan::Statement(S::Execute(execute)) => session.prepared.execute(&session.state, execute)?,
            LogicalPlan::Statement(S::Deallocate(deallocate)) => session.prepared.deallocate(&deallocate)?,
            other => return Ok(std::ops::ControlFlow::Continue((other, true))),
        };
        Ok(match outcome {
            sql_prepared::Prepared::Done(tag) => std::ops::ControlFlow::Break(Output::Command {
                tag: tag.to_owned(),
                rows: None,
            }),
            sql_prepared::Prepared::Run(plan) => std::ops::ControlFlow::Continue((plan, false)),
        })
    }

    /// Plans one statement; `CREATE TABLE`'s `WITH (...)` options come
    /// back beside the plan.
    async fn plan(&self, session: &SqlSession, sql: &str) -> Result<(LogicalPlan, TableOptions), SqlError> {
        let mut statements = self.parser.parse(sql)?;
        let mut statement = match statements.len() {
            1 => statements.remove(0),
            0 => return Err(SqlError::Syntax("empty statement".into())),
            _ => return Err(SqlError::Syntax("one statement at a time".into())),
        };
        let options = durable::take_table_options(&mut statement)?;
        let plan = session
            .state
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await?;
        Ok((plan, options))
    }

    async fn run_plan(
        &self,
        session: &mut SqlSession,
        plan: LogicalPlan,
        options: TableOptions,
    ) -> Result<Output, SqlError> {
        // Checked at every execution: grants may have changed since a
        // statement was prepared.
        privileges::check(&self.access, &session.info.user, &plan)?;
        if let LogicalPlan::Ddl(ddl) = &plan {
            if session.block == Block::Implicit {
                // DDL is not transactional: the writes before it in the
                // query string are committed first.
                self.commit_pending(session).await?;
            }
            if session.block.explicit() {
                let what = match OutputKind::of(&plan) {
                    OutputKind::Command(tag) => tag,
                    _ => "this statement",
                };
                return Err(SqlError::ActiveTransaction(format!(
                    "{what} cannot run inside a transaction block; COMMIT or ROLLBACK first"
                )));
            }
            if let Some(durable) = &self.durable {
                match ddl {
                    DdlStatement::CreateMemoryTable(create) => {
                        return self.create_table(session, durable, create, options).await;
                    }
                    DdlStatement::DropTable(drop) if self.stored_table(session, &drop.name).await?.is_some() => {
                        return self.drop_table(session, durable, drop).await;
                    }
                    _ => {}
                }
            }
        }
        if options != TableOptions::default() {
            return Err(SqlError::NotSupported("table options without a data directory".into()));
        }
        if let LogicalPlan::Dml(dml) = &plan
            && matches!(dml.op, WriteOp::Delete | WriteOp::Update | WriteOp::Truncate)
            && self.durable.is_some()
        {
            let (state, statement) = (session.state.clone(), plan.clone());
            let rows = self
                .executor
                .run(async move { delete_or_update(&state, &statement).await })
                .await?;
            return Ok(match dml.op {
                WriteOp::Truncate => Output::Command {
                    tag: "TRUNCATE TABLE".into(),
                    rows: None,
                },
                WriteOp::Update => Output::Command {
                    tag: "UPDATE".into(),
                    rows: Some(usize::try_from(rows).unwrap_or(usize::MAX)),
                },
                _ => Output::Command {
                    tag: "DELETE".into(),
                    rows: Some(usize::try_from(rows).unwrap_or(usize::MAX)),
                },
            });
        }
        let kind = OutputKind::of(&plan);
        let dropped_table = match &plan {
            LogicalPlan::Ddl(DdlStatement::DropTable(d)) => Some(privileges::qualified_name(&d.name)),
            _ => None,
        };
        let (schema, batches) = if matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Statement(_)) {
            // Catalog and settings changes go through the context, and the
            // session's snapshot is taken again afterwards.
            let is_ddl = matches!(plan, LogicalPlan::Ddl(_));
            let result = match session.ctx.execute_logical_plan(plan).await {
                Ok(frame) => {
                    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
                    frame.collect().await.map(|b| (schema, b))
                }
                Err(e) => Err(e),
            };
            // After the change, so that no plan made before it carries the new version.
            if is_ddl {
                self.catalog_version.fetch_add(1, Ordering::AcqRel);
            }
            let (schema, batches) = result?;
            session.refresh();
            (schema, batches)
        } else {
            let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
            let physical = session.state.create_physical_plan(&plan).await?;
            (schema, self.executor.collect(physical, session.task.clone()).await?)
        };
        if let Some(table) = dropped_table {
            self.forget_grants(&table).await?;
        }
        Ok(match kind {
            OutputKind::Rows => Output::Rows {
                schema,
                batches,
                tag: "SELECT",
            },
            OutputKind::Count(tag) => Output::Command {
                tag: tag.to_owned(),
                rows: Some(count_of(&batches)),
            },
            OutputKind::Command(tag) => Output::Command {
                tag: tag.to_owned(),
                rows: None,
            },
        })
    }
}

fn show_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
}

enum OutputKind {
    Rows,
    Count(&'static str),
    Command(&'static str),
}

impl OutputKind {
    fn of(plan: &LogicalPlan) -> Self {
        match plan {
            LogicalPlan::Dml(d) => match &d.op {
                WriteOp::Insert(_) => Self::Count("INSERT"),
                WriteOp::Update => Self::Count("UPDATE"),
                WriteOp::Delete => Self::Count("DELETE"),
                WriteOp::Ctas => Self::Count("SELECT"),
                WriteOp::Truncate => Self::Command("TRUNCATE TABLE"),
                WriteOp::MergeInto(_) => Self::Count("MERGE"),
                _ => Self::Command("OK"),
            },
            LogicalPlan::Ddl(d) => match d {
                DdlStatement::CreateMemoryTable(c) if defines_columns_only(&c.input) => Self::Command("CREATE TABLE"),
                DdlStatement::CreateMemoryTable(_) => Self::Command("CREATE TABLE AS"),
                DdlStatement::CreateView(_) => Self::Command("CREATE VIEW"),
                DdlStatement::CreateCatalogSchema(_) => Self::Command("CREATE SCHEMA"),
                DdlStatement::DropTable(_) => Self::Command("DROP TABLE"),
                DdlStatement::DropView(_) => Self::Command("DROP VIEW"),
                DdlStatement::DropCatalogSchema(_) => Self::Command("DROP SCHEMA"),
                DdlStatement::CreateIndex(_) => Self::Command("CREATE INDEX"),
                _ => Self::Command("OK"),
            },
            LogicalPlan::Statement(_) => Self::Command("SET"),
            _ => Self::Rows,
        }
    }
}

/// `CREATE TABLE t (columns)` plans an input that produces no row at all,
/// unlike `CREATE TABLE t AS SELECT ...`.
fn defines_columns_only(input: &LogicalPlan) -> bool {
    !privileges::any_node(input, |n| {
        n.inputs().is_empty() && !matches!(n, LogicalPlan::EmptyRelation(e) if !e.produce_one_row)
    })
}

fn returns_rows(plan: &LogicalPlan) -> bool {
    matches!(OutputKind::of(plan), OutputKind::Rows)
}

fn count_of(batches: &[RecordBatch]) -> usize {
    batches
        .iter()
        .filter_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .map(|a| (0..a.len()).map(|i| a.value(i) as usize).sum::<usize>())
        })
        .sum()
}

fn session_user_udf(user: &str) -> datafusion::logical_expr::ScalarUDF {
    let user = user.to_owned();
    create_udf(
        "session_user",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(user.clone()))))),
    )
}

/// Splits a query string into statements at top-level semicolons, keeping
/// quoted strings, quoted identifiers, dollar quotes and comments whole.
/// Empty statements are dropped.
pub(crate) fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ ... $tag$
                let tag_end = sql[i + 1..].find('$').map(|p| i + 1 + p);
                if let Some(end) = tag_end
                    && sql[i + 1..end].chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !sql[i + 1..end].starts_with(|c: char| c.is_ascii_digit())
                {
                    let tag = &sql[i..=end];
                    if let Some(close) = sql[end + 1..].find(tag) {
                        i = end + 1 + close + tag.len() - 1;
                    } else {
                        i = bytes.len();
                    }
                }
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < sql.len() {
        out.push(&sql[start..]);
    }
    out.into_iter().filter(|s| !is_blank(s)).collect()
}

/// Whether `sql` begins with `keyword` (after blanks), case-insensitively.
fn starts_with_keyword(sql: &str, keyword: &str) -> bool {
    let sql = sql.trim_start();
    sql.get(..keyword.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
        && !sql[keyword.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
}

fn is_blank(s: &str) -> bool {
    let mut rest = s.trim();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map(|(_, t)| t).unwrap_or("").trim();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map(|(_, t)| t).unwrap_or("").trim();
        } else {
            return rest.is_empty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        assert_eq!(
            split_statements("select 1; select ';'"),
            vec!["select 1", " select ';'"]
        );
        assert_eq!(split_statements("select 'a'';b'; -- x;y\n"), vec!["select 'a'';b'"]);
        assert_eq!(
            split_statements("select $$a;b$$; select \"x;\""),
            vec!["select $$a;b$$", " select \"x;\""]
        );
        assert!(split_statements(" ; ;/* c */").is_empty());
        assert_eq!(split_statements("select $1; select 2"), vec!["select $1", " select 2"]);
    }
}
