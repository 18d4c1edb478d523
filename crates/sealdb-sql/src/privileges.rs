//! Checking a logical plan against the session's privileges, before it runs.
//!
//! Every node of the plan, subqueries included, is decided by one
//! exhaustive `match` over every plan, statement, DDL and write kind, with
//! no catch-all arm: a kind DataFusion adds fails to compile here until
//! someone decides what it needs. Table names are resolved against the
//! session's default catalog and schema (which no session can change)
//! before they are compared with grants.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ResolvedTableReference, TableReference};
use datafusion::logical_expr::{DdlStatement, Expr, LogicalPlan, Statement, WriteOp};
use sealdb_auth::{AccessControl, Privilege};

use crate::SqlError;
use crate::engine::{CATALOG, SCHEMA};

/// Schemas every user may read: the catalogs drivers and psql query.
const PUBLIC_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];
/// `sys` tables a non-administrator may read (rows are filtered to their own).
const SELF_SERVICE_SYS_TABLES: [&str; 1] = ["sessions"];

/// DataFusion settings (`SET datafusion.x = ...`) every user may change:
/// how results and plans are shown, nothing that decides where data goes,
/// how much memory a session may take or how names resolve.
const USER_SETTINGS: [&str; 3] = [
    "datafusion.execution.time_zone",
    "datafusion.explain.format",
    "datafusion.explain.show_statistics",
];

/// DataFusion settings administrators may also change, per session: plan
/// and execution tuning. Never `datafusion.runtime.*` (the spill directory
/// and memory pool, which would bypass encrypted spilling and
/// `memory-limit`) nor `datafusion.catalog.*` (name resolution).
const ADMIN_SETTINGS: [&str; 4] = [
    "datafusion.execution.batch_size",
    "datafusion.execution.target_partitions",
    "datafusion.optimizer.max_passes",
    "datafusion.optimizer.prefer_hash_join",
];

/// `schema.table` for a table reference, resolved against the default
/// catalog and schema.
pub(crate) fn qualified_name(table: &TableReference) -> String {
    let resolved = resolve(table);
    format!("{}.{}", resolved.schema, resolved.table)
}

fn resolve(table: &TableReference) -> ResolvedTableReference {
    table.clone().resolve(CATALOG, SCHEMA)
}

/// Refuses the plan unless `user` may run it.
pub(crate) fn check(access: &AccessControl, user: &str, plan: &LogicalPlan) -> Result<(), SqlError> {
    let superuser = access.is_superuser(user);
    let target_read_exempt = unread_write_target(plan);
    let mut denied: Option<SqlError> = None;
    let mut deny = |e: SqlError| {
        if denied.is_none() {
            denied = Some(e);
        }
    };
    let need = |table: &TableReference, privilege: Privilege, deny: &mut dyn FnMut(SqlError)| {
        if let Err(e) = need_privilege(access, user, superuser, table, privilege) {
            deny(e);
        }
    };
    let admin_only = |what: &str, deny: &mut dyn FnMut(SqlError)| {
        if !superuser {
            deny(SqlError::PermissionDenied(format!("only administrators can {what}")));
        }
    };
    plan.apply_with_subqueries(|node| {
        match node {
            // Server-side files are off limits to everyone, administrators
            // included: data enters and leaves through the client connection.
            LogicalPlan::Copy(_) => deny(SqlError::PermissionDenied(
                "COPY to or from server files is not allowed; use COPY ... FROM STDIN or TO STDOUT".into(),
            )),
            LogicalPlan::Ddl(ddl) => match ddl {
                DdlStatement::CreateExternalTable(_) => deny(SqlError::PermissionDenied(
                    "CREATE EXTERNAL TABLE reads server files and is not allowed; load data with INSERT or COPY FROM STDIN"
                        .into(),
                )),
                DdlStatement::CreateMemoryTable(_)
                | DdlStatement::CreateView(_)
                | DdlStatement::CreateCatalogSchema(_)
                | DdlStatement::CreateCatalog(_)
                | DdlStatement::CreateIndex(_)
                | DdlStatement::DropTable(_)
                | DdlStatement::DropView(_)
                | DdlStatement::DropCatalogSchema(_)
                | DdlStatement::CreateFunction(_)
                | DdlStatement::DropFunction(_) => {
                    admin_only("create, alter or drop tables, views, schemas and functions", &mut deny)
                }
            },
            LogicalPlan::Statement(statement) => match statement {
                Statement::TransactionStart(_) | Statement::TransactionEnd(_) | Statement::Deallocate(_) => {}
                // Its plan is a child node, checked as every other.
                Statement::Prepare(_) => {}
                Statement::SetVariable(set) => {
                    if let Err(e) = setting_allowed(&set.variable, superuser) {
                        deny(e);
                    }
                }
                Statement::ResetVariable(reset) => {
                    if let Err(e) = setting_allowed(&reset.variable, superuser) {
                        deny(e);
                    }
                }
                // The engine replaces EXECUTE with the prepared plan and its
                // parameters before checking; one reaching here is a bug.
                Statement::Execute(_) => deny(SqlError::ServerState(
                    "internal error: EXECUTE reached the privilege check unexpanded; nothing was run".into(),
                )),
            },
            LogicalPlan::Dml(dml) => match &dml.op {
                WriteOp::Insert(_) => need(&dml.table_name, Privilege::Insert, &mut deny),
                WriteOp::Update => need(&dml.table_name, Privilege::Update, &mut deny),
                WriteOp::Delete | WriteOp::Truncate => need(&dml.table_name, Privilege::Delete, &mut deny),
                WriteOp::Ctas => admin_only("create tables", &mut deny),
                WriteOp::MergeInto(_) => {
                    for privilege in [Privilege::Select, Privilege::Insert, Privilege::Update, Privilege::Delete] {
                        need(&dml.table_name, privilege, &mut deny);
                    }
                }
                // `WriteOp` is `#[non_exhaustive]`, so a catch-all arm must
                // exist: a kind of write added after this was written is
                // refused to everyone until it is reviewed here.
                _ => deny(SqlError::NotSupported(format!(
                    "{} writes are not supported by sealdb",
                    dml.op.name()
                ))),
            },
            LogicalPlan::TableScan(scan) => {
                let exempt = target_read_exempt
                    .as_ref()
                    .is_some_and(|target| *target == resolve(&scan.table_name));
                if !exempt {
                    need(&scan.table_name, Privilege::Select, &mut deny);
                }
            }
            // Nodes of kinds sealdb does not make: unreviewed, so only
            // administrators run them.
            LogicalPlan::Extension(_) => admin_only("run this kind of statement", &mut deny),
            // A table's columns are public, as in pg_catalog.
            LogicalPlan::DescribeTable(_) => {}
            // No table of their own: their inputs and subqueries are checked.
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Join(_)
            | LogicalPlan::Repartition(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::EmptyRelation(_)
            | LogicalPlan::Subquery(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Values(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Distinct(_)
            | LogicalPlan::Unnest(_)
            | LogicalPlan::RecursiveQuery(_) => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match denied {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether a session may change `name` (DataFusion's planner gives it in
/// lower case, its aliases resolved) with `SET` or `RESET`. Settings
/// outside DataFusion's (`application_name`, `DateStyle`, ...) are kept by
/// the session itself and change nothing the server decides (a `RESET` of
/// one reaches DataFusion, which knows no such name and refuses it).
pub(crate) fn setting_allowed(name: &str, superuser: bool) -> Result<(), SqlError> {
    let name = name.to_ascii_lowercase();
    if !name.starts_with("datafusion") {
        return Ok(());
    }
    if USER_SETTINGS.contains(&name.as_str()) || (superuser && ADMIN_SETTINGS.contains(&name.as_str())) {
        return Ok(());
    }
    let who = if superuser {
        ""
    } else {
        " (administrators may also change a few planner settings)"
    };
    Err(SqlError::PermissionDenied(format!(
        "parameter \"{name}\" cannot be changed by a session; the server's configuration decides it. \
         Sessions may change: {}{who}",
        USER_SETTINGS.join(", ")
    )))
}

fn need_privilege(
    access: &AccessControl,
    user: &str,
    superuser: bool,
    table: &TableReference,
    privilege: Privilege,
) -> Result<(), SqlError> {
    let resolved = resolve(table);
    if superuser {
        return Ok(());
    }
    if resolved.catalog.as_ref() != CATALOG {
        return Err(SqlError::PermissionDenied(format!(
            "catalog \"{}\" is not readable; tables live in catalog {CATALOG}",
            resolved.catalog
        )));
    }
    let schema = resolved.schema.as_ref();
    if PUBLIC_SCHEMAS.contains(&schema) {
        return if privilege == Privilege::Select {
            Ok(())
        } else {
            Err(SqlError::PermissionDenied(format!(
                "{schema}.{} is read-only",
                resolved.table
            )))
        };
    }
    if schema == "sys" {
        return if privilege == Privilege::Select && SELF_SERVICE_SYS_TABLES.contains(&resolved.table.as_ref()) {
            Ok(())
        } else {
            Err(SqlError::PermissionDenied(format!(
                "sys.{} is readable by administrators only",
                resolved.table
            )))
        };
    }
    let name = format!("{schema}.{}", resolved.table);
    if access.has_privilege(user, &name, privilege) {
        Ok(())
    } else {
        Err(SqlError::PermissionDenied(format!(
            "user \"{user}\" lacks {} on table {name}; an administrator can run GRANT {} ON {name} TO {user}",
            privilege.as_str(),
            privilege.as_str()
        )))
    }
}

/// The target of an UPDATE or DELETE that reads none of its rows' values,
/// whose own scan therefore needs no SELECT (as in PostgreSQL, where
/// `UPDATE t SET a = 1` and `DELETE FROM t` need only UPDATE or DELETE).
/// Any condition, any assigned value computed from a column or a
/// subquery, reads the table: then every scan of it needs SELECT.
fn unread_write_target(plan: &LogicalPlan) -> Option<ResolvedTableReference> {
    let LogicalPlan::Dml(dml) = plan else {
        return None;
    };
    let reads = match &dml.op {
        WriteOp::Delete => !only_the_scan(&dml.input),
        WriteOp::Update => match dml.input.as_ref() {
            LogicalPlan::Projection(projection) => {
                !only_the_scan(&projection.input) || projection.expr.iter().any(assigns_a_read_value)
            }
            _ => true,
        },
        // Every other write (a new kind too) reads its target under SELECT.
        _ => return None,
    };
    (!reads).then(|| resolve(&dml.table_name))
}

/// Whether `plan` is the bare scan of the write's target: no condition,
/// join or subquery.
fn only_the_scan(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => scan.filters.is_empty(),
        LogicalPlan::SubqueryAlias(alias) => only_the_scan(&alias.input),
        _ => false,
    }
}

/// An UPDATE's projection keeps each column (`t.c AS c`) or assigns a new
/// value; a value that uses a column or a subquery reads the table.
fn assigns_a_read_value(expr: &Expr) -> bool {
    let (inner, name) = match expr {
        Expr::Alias(alias) => (alias.expr.as_ref(), Some(alias.name.as_str())),
        other => (other, None),
    };
    if let (Expr::Column(column), Some(name)) = (inner, name)
        && column.name == name
    {
        return false;
    }
    let mut reads = false;
    let _ = inner.apply(|e| {
        if matches!(
            e,
            Expr::Column(_)
                | Expr::OuterReferenceColumn(..)
                | Expr::ScalarSubquery(_)
                | Expr::Exists(_)
                | Expr::InSubquery(_)
        ) {
            reads = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    reads
}

/// Whether any node of the plan, subqueries included, satisfies `predicate`.
pub(crate) fn any_node(plan: &LogicalPlan, predicate: impl Fn(&LogicalPlan) -> bool) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|n| {
        if predicate(n) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}
