//! Checking a logical plan against the session's privileges, before it runs.

use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, WriteOp};
use sealdb_auth::{AccessControl, Privilege};

use crate::SqlError;
use crate::engine::SCHEMA;

/// Schemas every user may read: the catalogs drivers and psql query.
const PUBLIC_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];
/// `sys` tables a non-administrator may read (rows are filtered to their own).
const SELF_SERVICE_SYS_TABLES: [&str; 1] = ["sessions"];

/// `schema.table` for a table reference, with the default schema filled in.
pub(crate) fn qualified_name(table: &TableReference) -> String {
    format!("{}.{}", table.schema().unwrap_or(SCHEMA), table.table())
}

/// Refuses the plan unless `user` may run it.
pub(crate) fn check(access: &AccessControl, user: &str, plan: &LogicalPlan) -> Result<(), SqlError> {
    // Server-side files are off limits to everyone, administrators included:
    // data enters and leaves through the client connection only.
    match plan {
        LogicalPlan::Copy(_) => {
            return Err(SqlError::PermissionDenied(
                "COPY to or from server files is not allowed; use COPY ... FROM STDIN or TO STDOUT".into(),
            ));
        }
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(_)) => {
            return Err(SqlError::PermissionDenied(
                "CREATE EXTERNAL TABLE reads server files and is not allowed; load data with INSERT or COPY FROM STDIN"
                    .into(),
            ));
        }
        _ => {}
    }
    let superuser = access.is_superuser(user);
    if superuser {
        return Ok(());
    }
    match plan {
        LogicalPlan::Ddl(_) => {
            return Err(SqlError::PermissionDenied(
                "only administrators can create, alter or drop tables, views and schemas".into(),
            ));
        }
        LogicalPlan::Statement(_) => return Ok(()),
        _ => {}
    }
    let mut denied: Option<SqlError> = None;
    let mut need = |table: &TableReference, privilege: Privilege| {
        if denied.is_some() {
            return;
        }
        let schema = table.schema().unwrap_or(SCHEMA);
        if PUBLIC_SCHEMAS.contains(&schema) && privilege == Privilege::Select {
            return;
        }
        if schema == "sys" {
            if !(privilege == Privilege::Select && SELF_SERVICE_SYS_TABLES.contains(&table.table())) {
                denied = Some(SqlError::PermissionDenied(format!(
                    "sys.{} is readable by administrators only",
                    table.table()
                )));
            }
            return;
        }
        let name = qualified_name(table);
        if !access.has_privilege(user, &name, privilege) {
            denied = Some(SqlError::PermissionDenied(format!(
                "user \"{user}\" lacks {} on table {name}; an administrator can run GRANT {} ON {name} TO {user}",
                privilege.as_str(),
                privilege.as_str()
            )));
        }
    };
    // An UPDATE or DELETE reads the rows it changes; like PostgreSQL we ask
    // SELECT on the target only when a condition could reveal its contents
    // through the row count.
    let unconditional_target = match plan {
        LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::Update | WriteOp::Delete) && !has_filter(&dml.input) => {
            Some(qualified_name(&dml.table_name))
        }
        _ => None,
    };
    plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::Dml(dml) => {
                let privilege = match &dml.op {
                    WriteOp::Insert(_) => Privilege::Insert,
                    WriteOp::Update => Privilege::Update,
                    WriteOp::Delete | WriteOp::Truncate => Privilege::Delete,
                    // CTAS and MERGE write as well as change; anything newer is
                    // refused to non-administrators until it is reviewed.
                    _ => {
                        need(&dml.table_name, Privilege::Insert);
                        need(&dml.table_name, Privilege::Delete);
                        Privilege::Update
                    }
                };
                need(&dml.table_name, privilege);
            }
            LogicalPlan::TableScan(scan)
                if unconditional_target.as_deref() != Some(qualified_name(&scan.table_name).as_str()) =>
            {
                need(&scan.table_name, Privilege::Select);
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match denied {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn has_filter(plan: &LogicalPlan) -> bool {
    any_node(plan, |n| matches!(n, LogicalPlan::Filter(_)))
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
