//! SQL-level `PREPARE name AS ...`, `EXECUTE name(...)` and `DEALLOCATE`.
//!
//! The session keeps its prepared plans itself rather than in DataFusion's
//! context, whose `EXECUTE` would run the stored plan directly: past the
//! privilege check and past sealdb's own handling of writes. Here `PREPARE`
//! checks its statement's privileges when it is made, and `EXECUTE`
//! becomes the stored plan with its parameters, which then takes the same
//! path as the statement typed in full: checked again with the caller's
//! current grants, and run as any other.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Deallocate, Execute, Expr, LogicalPlan, Prepare, Statement};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;

use crate::SqlError;

/// The most SQL-level prepared statements one session may keep.
const MAX_PREPARED_STATEMENTS: usize = 1_000;

/// A session's SQL-level prepared statements, by name.
#[derive(Debug, Default)]
pub(crate) struct PreparedStatements {
    plans: HashMap<String, Arc<LogicalPlan>>,
}

/// What a statement about prepared statements came to.
pub(crate) enum Prepared {
    /// `PREPARE` or `DEALLOCATE` done: the command tag to answer with.
    Done(&'static str),
    /// `EXECUTE`: the plan to run in its place.
    Run(LogicalPlan),
}

impl PreparedStatements {
    /// Keeps `prepare`'s plan under its name; its privileges were checked
    /// by the caller.
    pub(crate) fn prepare(&mut self, prepare: Prepare) -> Result<Prepared, SqlError> {
        if self.plans.contains_key(&prepare.name) {
            return Err(SqlError::DuplicatePreparedStatement(format!(
                "prepared statement \"{}\" already exists; DEALLOCATE it first",
                prepare.name
            )));
        }
        if self.plans.len() >= MAX_PREPARED_STATEMENTS {
            return Err(SqlError::TooComplex(format!(
                "a session may keep at most {MAX_PREPARED_STATEMENTS} prepared statements; DEALLOCATE some"
            )));
        }
        let name = prepare.name.clone();
        self.plans
            .insert(name, Arc::new(LogicalPlan::Statement(Statement::Prepare(prepare))));
        Ok(Prepared::Done("PREPARE"))
    }

    /// The stored plan of `execute.name` with its parameters in place.
    pub(crate) fn execute(&self, state: &SessionState, execute: Execute) -> Result<Prepared, SqlError> {
        let Some(stored) = self.plans.get(&execute.name) else {
            return Err(SqlError::UndefinedPreparedStatement(format!(
                "prepared statement \"{}\" does not exist",
                execute.name
            )));
        };
        let LogicalPlan::Statement(Statement::Prepare(prepare)) = stored.as_ref() else {
            return Err(SqlError::ServerState(
                "internal error: a stored prepared statement is not a PREPARE".into(),
            ));
        };
        let context = SimplifyContext::builder()
            .with_schema(Arc::clone(prepare.input.schema()))
            .with_config_options(Arc::clone(state.config_options()))
            .with_query_execution_start_time(state.execution_props().query_execution_start_time)
            .build();
        let simplifier = ExprSimplifier::new(context);
        let mut values = Vec::with_capacity(execute.parameters.len());
        for parameter in execute.parameters {
            match simplifier.simplify(parameter)? {
                Expr::Literal(value, _) => values.push(value),
                other => {
                    return Err(SqlError::NotSupported(format!(
                        "EXECUTE parameters must be constants, not {other}"
                    )));
                }
            }
        }
        if !prepare.fields.is_empty() {
            if values.len() != prepare.fields.len() {
                return Err(SqlError::InvalidValue(format!(
                    "prepared statement \"{}\" takes {} parameters, not {}",
                    execute.name,
                    prepare.fields.len(),
                    values.len()
                )));
            }
            values = values
                .into_iter()
                .zip(prepare.fields.iter())
                .map(|(value, field)| value.cast_to(field.data_type()))
                .collect::<Result<Vec<ScalarValue>, _>>()?;
        }
        let plan = stored.as_ref().clone().with_param_values(ParamValues::from(values))?;
        Ok(Prepared::Run(plan))
    }

    /// Forgets `deallocate.name`.
    pub(crate) fn deallocate(&mut self, deallocate: &Deallocate) -> Result<Prepared, SqlError> {
        match self.plans.remove(&deallocate.name) {
            Some(_) => Ok(Prepared::Done("DEALLOCATE")),
            None => Err(SqlError::UndefinedPreparedStatement(format!(
                "prepared statement \"{}\" does not exist",
                deallocate.name
            ))),
        }
    }
}
