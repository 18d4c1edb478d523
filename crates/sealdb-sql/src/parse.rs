//! The one door SQL text goes through to become statements, with a bound
//! on how deeply they nest.
//!
//! sqlparser limits its own recursion (50 nested subqueries, parentheses
//! or function calls: an error, not an overflow), but it builds a chain
//! of operators (`1+1+...+1`, `a OR b OR ...`, `x::int::int...`) in a
//! loop, one level deeper per operator, with no limit. Everything after
//! the parser walks that tree recursively: the PostgreSQL compatibility
//! rewrites, DataFusion's planner and optimizer (which grow their stack
//! on the heap with `recursive_protection`), expression naming and
//! evaluation, and the drop of the tree itself. Unchecked, one statement
//! of a few kilobytes overflows a server thread's stack and aborts the
//! whole process, for every session.
//!
//! So a statement is refused (SQLSTATE 54001, as PostgreSQL's "stack
//! depth limit exceeded") when its expressions nest more than
//! [`MAX_EXPRESSION_DEPTH`] levels deep. The depth is measured only when
//! a cheap upper bound says it could exceed the limit: each level of a
//! chain takes at least one operator or one word of the text, and the
//! parser's own recursion adds at most [`PARSER_NESTING_LEVELS`]. Parsing
//! such a statement, measuring it and, when it is refused, dropping it run
//! on a stack of their own sized from that bound, so that no depth the
//! text can express overflows anything.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, Query, Statement, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use crate::SqlError;

/// The deepest a statement's expressions and subqueries may nest. Server
/// threads have stack enough for several times this in every recursive
/// step after parsing, in an unoptimized build (`sql.rs` runs a statement
/// at the limit through the real server).
pub const MAX_EXPRESSION_DEPTH: usize = 1_000;

/// AST levels sqlparser's recursion can add above what operators and words
/// account for: 50 nested calls (its recursion limit), each a handful of
/// levels (a function's arguments, a subquery in `FROM`).
const PARSER_NESTING_LEVELS: usize = 50 * 8;

/// Stack bytes per level of nesting for parsing, rewriting, measuring and
/// dropping a statement; measured at under 160 in an unoptimized build.
const STACK_BYTES_PER_LEVEL: usize = 512;

/// The largest stack a statement's analysis gets (virtual memory: only
/// what is used is touched). A statement whose bound needs more has over
/// two million operators and words, and is refused as too large.
const MAX_ANALYSIS_STACK_BYTES: usize = 1 << 30;

/// Parses SQL text into statements, as PostgreSQL's dialect with the
/// rewrites psql's and drivers' catalog queries need.
#[derive(Debug)]
pub(crate) struct SqlParser {
    compat: PostgresCompatibilityParser,
}

impl SqlParser {
    pub(crate) fn new() -> Self {
        Self {
            compat: PostgresCompatibilityParser::new(),
        }
    }

    /// The statements of `sql`, or the reason they cannot be: a syntax
    /// error (42601), or nesting past [`MAX_EXPRESSION_DEPTH`] (54001).
    pub(crate) fn parse(&self, sql: &str) -> Result<Vec<Statement>, SqlError> {
        let mut bound = PARSER_NESTING_LEVELS.saturating_add(text_bound(sql));
        if bound > MAX_EXPRESSION_DEPTH {
            // Words and operator characters inside string literals count
            // in the text's bound; tokens are exact.
            bound = PARSER_NESTING_LEVELS.saturating_add(token_bound(sql)?);
        }
        if bound <= MAX_EXPRESSION_DEPTH {
            return self.compat.parse(sql).map_err(parse_error);
        }
        let stack = bound.saturating_mul(STACK_BYTES_PER_LEVEL).saturating_add(1 << 20);
        if stack > MAX_ANALYSIS_STACK_BYTES {
            return Err(SqlError::TooComplex(format!(
                "the statement is too large to analyse ({bound} operators and names); \
                 split it, or load rows with COPY ... FROM STDIN"
            )));
        }
        stacker::grow(stack, || {
            let statements = self.compat.parse(sql).map_err(parse_error)?;
            let depth = nesting_depth(&statements, MAX_EXPRESSION_DEPTH);
            if depth > MAX_EXPRESSION_DEPTH {
                // Dropped here, on the stack sized for it.
                drop(statements);
                return Err(too_deep());
            }
            Ok(statements)
        })
    }
}

fn too_deep() -> SqlError {
    SqlError::TooComplex(format!(
        "expressions or subqueries nest more than {MAX_EXPRESSION_DEPTH} levels deep; \
         simplify the statement (a long chain of OR or + is one level per operator: use IN (...) or sum())"
    ))
}

fn parse_error(e: ParserError) -> SqlError {
    match e {
        ParserError::RecursionLimitExceeded => SqlError::TooComplex(
            "parentheses, function calls or subqueries nest more than 50 levels deep; simplify the statement".into(),
        ),
        other => SqlError::Syntax(other.to_string()),
    }
}

/// An upper bound on the chain levels `sql` can build: its words and its
/// operator characters, counted on the bytes (string literals included).
fn text_bound(sql: &str) -> usize {
    let mut count = 0usize;
    let mut in_word = false;
    for byte in sql.bytes() {
        let word_byte = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80;
        if word_byte {
            if !in_word {
                count += 1;
            }
        } else if !byte.is_ascii_whitespace() && !matches!(byte, b',' | b'(' | b')' | b';' | b'\'' | b'"') {
            count += 1;
        }
        in_word = word_byte;
    }
    count
}

/// The same bound from the tokens: every word and operator token (a
/// literal, a comma or a parenthesis starts no level of a chain).
fn token_bound(sql: &str) -> Result<usize, SqlError> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| SqlError::Syntax(e.to_string()))?;
    Ok(tokens
        .iter()
        .filter(|token| {
            !matches!(
                token,
                Token::Whitespace(_)
                    | Token::Comma
                    | Token::LParen
                    | Token::RParen
                    | Token::SemiColon
                    | Token::Number(..)
                    | Token::SingleQuotedString(_)
                    | Token::DoubleQuotedString(_)
                    | Token::DollarQuotedString(_)
                    | Token::EscapedStringLiteral(_)
                    | Token::NationalStringLiteral(_)
                    | Token::HexStringLiteral(_)
                    | Token::Placeholder(_)
            )
        })
        .count())
}

/// How deeply expressions and queries nest in `statements`, counted up to
/// one past `limit` (the walk stops there, so its own recursion is bounded).
fn nesting_depth(statements: &[Statement], limit: usize) -> usize {
    let mut depth = Depth {
        current: 0,
        deepest: 0,
        limit,
    };
    for statement in statements {
        if statement.visit(&mut depth).is_break() {
            break;
        }
    }
    depth.deepest
}

struct Depth {
    current: usize,
    deepest: usize,
    limit: usize,
}

impl Depth {
    fn enter(&mut self) -> ControlFlow<()> {
        self.current += 1;
        self.deepest = self.deepest.max(self.current);
        if self.current > self.limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.current -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.current -= 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    /// Runs `f` on a thread with a small stack (256 KiB), as a worst case
    /// for what a caller's thread has left.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn a_chain_at_the_limit_parses_and_one_past_it_is_refused_with_54001() {
        let chain = |n: usize| format!("SELECT 1{}", "+1".repeat(n - 1));
        let parser = SqlParser::new();
        let at = parser.parse(&chain(MAX_EXPRESSION_DEPTH - 10)).unwrap();
        assert_eq!(nesting_depth(&at, usize::MAX), MAX_EXPRESSION_DEPTH - 10 + 1);
        let past = parser.parse(&chain(MAX_EXPRESSION_DEPTH + 1)).unwrap_err();
        assert_eq!(past.sqlstate(), "54001", "{past}");
    }

    #[test]
    fn chains_hundreds_of_thousands_deep_are_refused_without_overflowing_a_small_stack() {
        for sql in [
            format!("SELECT 1{}", "+1".repeat(200_000)),
            format!("SELECT 1 WHERE {}", vec!["a = 1"; 200_000].join(" OR ")),
            format!("SELECT 1{}", "::int".repeat(200_000)),
            format!("SELECT x{}", " IS NULL".repeat(200_000)),
        ] {
            let err = on_small_stack(move || SqlParser::new().parse(&sql).unwrap_err());
            assert_eq!(err.sqlstate(), "54001", "{err}");
        }
    }

    #[test]
    fn nested_parentheses_and_subqueries_are_refused_by_the_parsers_limit() {
        for sql in [
            format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
            format!("SELECT {}1{}", "abs(".repeat(10_000), ")".repeat(10_000)),
            format!(
                "SELECT * FROM {}t{}",
                "(SELECT * FROM ".repeat(5_000),
                ") s".repeat(5_000)
            ),
        ] {
            let err = on_small_stack(move || SqlParser::new().parse(&sql).unwrap_err());
            assert_eq!(err.sqlstate(), "54001", "{err}");
        }
    }

    #[test]
    fn a_large_statement_of_literals_takes_the_exact_bound_and_parses() {
        let rows = vec!["(1, 'a+b OR c', -2.5)"; 50_000].join(", ");
        let sql = format!("INSERT INTO t VALUES {rows}");
        assert!(text_bound(&sql) > MAX_EXPRESSION_DEPTH);
        let statements = on_small_stack(move || SqlParser::new().parse(&sql).unwrap());
        assert_eq!(statements.len(), 1);
    }

    #[test]
    fn the_bounds_are_never_below_the_depth_they_bound() {
        for sql in [
            "SELECT a.b + c::int * -d FROM t WHERE x IS NOT NULL AND y IN (1, 2) OR z BETWEEN 1 AND 2",
            "SELECT CASE WHEN a THEN b ELSE c END, f(g(h(1))), x[1][2], j -> 'k' ->> 'l' FROM t",
            "SELECT * FROM (SELECT * FROM (SELECT 1) a) b WHERE EXISTS (SELECT 1 WHERE NOT NOT true)",
            "SELECT 'x' COLLATE \"C\", now() AT TIME ZONE 'UTC', a LIKE 'b%' ESCAPE '!'",
        ] {
            let statements = SqlParser::new().parse(sql).unwrap();
            let depth = nesting_depth(&statements, usize::MAX);
            let bound = PARSER_NESTING_LEVELS + token_bound(sql).unwrap().min(text_bound(sql));
            assert!(depth <= bound, "{sql}: depth {depth} over bound {bound}");
        }
    }
}
