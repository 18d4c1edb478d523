//! Tables kept by the storage engine: `CREATE TABLE` options, and the
//! checks a definition must pass before the store creates it.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::TableReference;
use datafusion::logical_expr::CreateMemoryTable;
use datafusion::sql::sqlparser::ast::{CreateTableOptions, SqlOption, Statement};
use sealdb_storage::{Encryption, ROWID_COLUMN, Store, TableKeyProvider};

use crate::SqlError;
use crate::engine::{CATALOG, SCHEMA};
use crate::storage_table::SegmentKeys;

/// The store behind an engine, with what new tables default to.
pub(crate) struct Durable {
    pub(crate) store: Store,
    /// Hands the Parquet reader each segment's keys; shared by every table.
    pub(crate) keys: Arc<SegmentKeys>,
    /// `default-table-encryption`.
    pub(crate) default_encryption: Encryption,
}

/// `CREATE TABLE ... WITH (...)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TableOptions {
    /// `encryption = 'aes-256-gcm' | 'none'`.
    pub(crate) encryption: Option<Encryption>,
    /// `key_provider = 'kmip:GROUP'` (with `key_namespace`): the table's
    /// keys are wrapped by keys of its own on that key server.
    pub(crate) key_provider: Option<TableKeyProvider>,
}

/// The namespace of a table's keys on the key server when none is given.
const DEFAULT_KEY_NAMESPACE: &str = "tables";

/// Takes the `WITH (...)` options off a `CREATE TABLE`, which DataFusion
/// would refuse, and checks them.
pub(crate) fn take_table_options(statement: &mut Statement) -> Result<TableOptions, SqlError> {
    let Statement::CreateTable(create) = statement else {
        return Ok(TableOptions::default());
    };
    let options = match std::mem::replace(&mut create.table_options, CreateTableOptions::None) {
        CreateTableOptions::None => return Ok(TableOptions::default()),
        CreateTableOptions::With(options) => options,
        other => {
            return Err(SqlError::NotSupported(format!(
                "table options {other}; use WITH (encryption = 'aes-256-gcm' | 'none')"
            )));
        }
    };
    let mut out = TableOptions::default();
    let (mut provider, mut namespace) = (None, None);
    for option in options {
        let SqlOption::KeyValue { key, value } = &option else {
            return Err(SqlError::Syntax(format!(
                "table option {option} is not of the form name = 'value'"
            )));
        };
        let name = key.value.to_ascii_lowercase();
        let value = value.to_string();
        let raw = value.trim_matches('\'').to_owned();
        let value = raw.to_ascii_lowercase();
        match name.as_str() {
            "encryption" => {
                out.encryption = Some(encryption(&value)?);
            }
            "key_provider" if value == "local" => provider = Some(None),
            "key_provider" => match raw.strip_prefix("kmip:") {
                Some(group) if !group.is_empty() => provider = Some(Some(raw.clone())),
                _ => {
                    return Err(SqlError::InvalidValue(format!(
                        "invalid value for table option key_provider: '{raw}'; use 'local' (keys wrapped by the key ring) or 'kmip:GROUP' (keys of its own on that key server)"
                    )));
                }
            },
            "key_namespace" => {
                if raw.is_empty()
                    || raw.len() > 64
                    || !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(SqlError::InvalidValue(format!(
                        "invalid value for table option key_namespace: '{raw}'; use up to 64 letters, digits, '-' and '_'"
                    )));
                }
                namespace = Some(raw.clone());
            }
            // PostgreSQL's fill factor leaves room in heap pages for
            // updates in place (pgbench -i sets it). Segments are written
            // once and never updated in place, so any valid value means the
            // same; an invalid one is refused as PostgreSQL refuses it.
            "fillfactor" => match raw.parse::<u8>() {
                Ok(10..=100) => {}
                _ => {
                    return Err(SqlError::InvalidValue(format!(
                        "invalid value for table option fillfactor: '{raw}'; use a whole number from 10 to 100"
                    )));
                }
            },
            _ => {
                return Err(SqlError::InvalidValue(format!(
                    "unknown table option \"{name}\"; known options: encryption, key_provider, key_namespace, fillfactor"
                )));
            }
        }
    }
    out.key_provider = match (provider, namespace) {
        (Some(Some(provider)), namespace) => Some(TableKeyProvider {
            provider,
            namespace: namespace.unwrap_or_else(|| DEFAULT_KEY_NAMESPACE.to_owned()),
        }),
        (_, Some(_)) => {
            return Err(SqlError::InvalidValue(
                "key_namespace names the table's keys on a key server: give key_provider = 'kmip:GROUP' with it".into(),
            ));
        }
        _ => None,
    };
    Ok(out)
}

/// The name a table of `public` is stored under, or why it cannot be one.
pub(crate) fn stored_name(name: &TableReference) -> Result<String, SqlError> {
    let schema_ok = name.schema().is_none_or(|s| s == SCHEMA);
    let catalog_ok = name.catalog().is_none_or(|c| c == CATALOG);
    if !schema_ok || !catalog_ok {
        return Err(SqlError::NotSupported(format!(
            "tables are kept in schema {SCHEMA}; cannot create or drop \"{name}\""
        )));
    }
    Ok(name.table().to_owned())
}

/// The columns of a new table, checked: no reserved name, no constraint
/// or default that would not be enforced.
pub(crate) fn table_schema(create: &CreateMemoryTable) -> Result<Schema, SqlError> {
    if !create.constraints.is_empty() {
        return Err(SqlError::NotSupported(
            "PRIMARY KEY, UNIQUE and other table constraints are not enforced by sealdb; remove them (NOT NULL is enforced)"
                .into(),
        ));
    }
    if !create.column_defaults.is_empty() {
        return Err(SqlError::NotSupported(
            "column DEFAULT values are not supported yet; give every column's value in INSERT".into(),
        ));
    }
    let arrow = create.input.schema().as_arrow();
    let mut fields = Vec::with_capacity(arrow.fields().len());
    for field in arrow.fields() {
        if field.name() == ROWID_COLUMN {
            return Err(SqlError::InvalidValue(format!(
                "column name \"{ROWID_COLUMN}\" is reserved by sealdb; choose another name"
            )));
        }
        // Field metadata from the planner is not part of the definition.
        fields.push(Field::new(field.name(), field.data_type().clone(), field.is_nullable()));
    }
    Ok(Schema::new(fields))
}

/// The value of the table option `encryption`.
pub(crate) fn encryption(value: &str) -> Result<Encryption, SqlError> {
    match value.to_ascii_lowercase().as_str() {
        "aes-256-gcm" => Ok(Encryption::Aes256Gcm),
        "none" => Ok(Encryption::None),
        _ => Err(SqlError::InvalidValue(format!(
            "invalid value for table option encryption: '{value}'; use 'aes-256-gcm' or 'none'"
        ))),
    }
}
