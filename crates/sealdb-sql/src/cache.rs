//! A per-session cache of planned statements, keyed by their text.
//!
//! Planning dominates the cost of small statements: parsing, SQL-to-plan and
//! logical optimization are skipped for a statement seen before, and for
//! statements that read no table (`SELECT 1`, the health check of every
//! connection pool) the physical plan is reused as well.
//!
//! What may be cached, and why it stays correct:
//! - only row-returning statements whose functions are all immutable: the
//!   optimizer folds `now()` and other stable functions into constants, so
//!   such plans are planned afresh every time;
//! - every entry remembers the catalog version it was planned under, and any
//!   DDL in any session bumps the version, so a dropped or changed table is
//!   never served from an old plan;
//! - privileges are checked on every execution, cached or not;
//! - a physical plan is kept only for statements that read no table, and
//!   only when its operators hold no per-execution state: table scans
//!   snapshot rows when they are planned, and statistics can fold a whole
//!   scan into a constant.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::ExecutionPlan;

/// Bounds the memory one session's cache may hold.
const MAX_ENTRIES: usize = 256;
/// Statements longer than this are not cached (bulk INSERTs and the like).
const MAX_SQL_BYTES: usize = 4096;
/// Physical operators that may be executed again: no data snapshot, no
/// state kept between executions.
const REUSABLE_OPERATORS: [&str; 4] = ["ProjectionExec", "PlaceholderRowExec", "EmptyExec", "FilterExec"];

/// One planned statement.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    /// The optimized logical plan.
    pub(crate) plan: Arc<LogicalPlan>,
    /// The physical plan, when it may be executed again.
    pub(crate) physical: Option<Arc<dyn ExecutionPlan>>,
    catalog_version: u64,
}

/// The cache of one session.
#[derive(Debug, Default)]
pub(crate) struct StatementCache {
    entries: HashMap<String, Cached>,
}

impl StatementCache {
    /// The entry for `sql` if it was planned under `catalog_version`.
    pub(crate) fn get(&self, sql: &str, catalog_version: u64) -> Option<Cached> {
        self.entries
            .get(sql)
            .filter(|c| c.catalog_version == catalog_version)
            .cloned()
    }

    /// Remembers a plan, if the statement qualifies. `planned` is the plan
    /// before optimization (which folds `now()` into a constant), `optimized`
    /// the one to cache.
    pub(crate) fn insert(
        &mut self,
        sql: &str,
        planned: &LogicalPlan,
        optimized: Arc<LogicalPlan>,
        physical: &Arc<dyn ExecutionPlan>,
        catalog_version: u64,
    ) {
        if sql.len() > MAX_SQL_BYTES || !is_deterministic(planned) {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        // Statistics can turn a scan into a constant (`count(*)` of a table
        // becomes a number), so a physical plan is kept only for statements
        // that read no table at all.
        let physical = (reads_no_table(planned) && is_reusable(physical.as_ref())).then(|| physical.clone());
        self.entries.insert(
            sql.to_owned(),
            Cached {
                plan: optimized,
                physical,
                catalog_version,
            },
        );
    }

    /// Forgets everything (after the session's settings change).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Whether every function in the plan is immutable.
fn is_deterministic(plan: &LogicalPlan) -> bool {
    let mut deterministic = true;
    let _ = plan.apply_with_subqueries(|node| {
        let _ = node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    deterministic = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        });
        Ok(if deterministic {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    deterministic
}

fn reads_no_table(plan: &LogicalPlan) -> bool {
    !crate::privileges::any_node(plan, |n| matches!(n, LogicalPlan::TableScan(_)))
}

fn is_reusable(plan: &dyn ExecutionPlan) -> bool {
    REUSABLE_OPERATORS.contains(&plan.name()) && plan.children().iter().all(|c| is_reusable(c.as_ref()))
}
