//! The `sys` schema: live security state as tables.

use std::fmt::Debug;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use sealdb_auth::AccessControl;
use sealdb_storage::Store;

use crate::SessionInfo;

/// What `SHOW server_version` and the startup parameters report.
pub const SERVER_VERSION: &str = "15.0 (sealdb 0.1.0)";

/// Live server state the `sys` tables read; implemented by the server.
pub trait ServerHooks: Send + Sync + Debug {
    /// Every authenticated session.
    fn sessions(&self) -> Vec<Arc<SessionInfo>>;
    /// Every loaded certificate.
    fn certificates(&self) -> Vec<CertificateRow>;
    /// Reloads certificates, keys, CAs and CRLs; the message says what failed.
    fn reload_tls(&self) -> Result<(), String>;
    /// Whether the server accepts TLS.
    fn ssl_enabled(&self) -> bool;
    /// Whether clients may connect without TLS (`ssl-mode` other than `required`).
    fn plaintext_allowed(&self) -> bool {
        !self.ssl_enabled()
    }
    /// Who opens key providers for `ALTER SYSTEM SET key_provider`; `None`
    /// where the server cannot (no config to read them from).
    fn key_admin(&self) -> Option<Arc<dyn KeyAdmin>> {
        None
    }
    /// `pki-db-client-auth = true`.
    fn pki_db_client_auth(&self) -> bool {
        false
    }
    /// `key-rotation-period`, as written and parsed.
    fn key_rotation_period(&self) -> Option<(String, std::time::Duration)> {
        None
    }
    /// CA private keys this server process can read (it should read none).
    fn readable_ca_keys(&self) -> Vec<String> {
        Vec::new()
    }
    /// CRLs past their next update: file and issuer.
    fn stale_crls(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Opens key providers for `ALTER SYSTEM SET key_provider` and records the
/// move; implemented by the binary, which knows the config file.
pub trait KeyAdmin: Send + Sync + Debug {
    /// The provider called `name` (`local` or `kmip:GROUP`), with its
    /// settings as the config file has them now. Blocking.
    fn open(&self, name: &str) -> Result<Arc<dyn sealdb_kms::KeyProvider>, String>;

    /// After the store moved to `moved.to`: retires the old master key (the
    /// local key file is destroyed) and keeps `key-provider` in the config
    /// file. One line per action. Blocking.
    fn moved(&self, moved: &sealdb_storage::MasterKeyMove, old: Arc<dyn sealdb_kms::KeyProvider>) -> Vec<String>;
}

/// One row of `sys.certificates`.
#[derive(Debug, Clone)]
pub struct CertificateRow {
    /// `server`, `server-chain`, `trusted-ca`.
    pub role: String,
    /// File.
    pub path: String,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial, hex.
    pub serial: String,
    /// SANs, comma-separated.
    pub sans: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

type Builder = dyn Fn(&SysContext) -> Result<Vec<ArrayRef>, DataFusionError> + Send + Sync;

/// The store, once the engine has one.
pub(crate) type StoreCell = Arc<OnceLock<Store>>;

struct SysContext<'a> {
    access: &'a AccessControl,
    hooks: &'a dyn ServerHooks,
    viewer: Option<&'a SessionInfo>,
    store: Option<&'a Store>,
}

struct SysTable {
    name: &'static str,
    schema: SchemaRef,
    access: Arc<AccessControl>,
    hooks: Arc<dyn ServerHooks>,
    store: StoreCell,
    build: Box<Builder>,
}

impl Debug for SysTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sys.{}", self.name)
    }
}

#[async_trait]
impl TableProvider for SysTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let viewer = state.config().get_extension::<SessionInfo>();
        let ctx = SysContext {
            access: &self.access,
            hooks: self.hooks.as_ref(),
            viewer: viewer.as_deref(),
            store: self.store.get(),
        };
        let columns = (self.build)(&ctx)?;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn timestamp(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    )
}

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn unix(seconds: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs(seconds)
}

fn strings<I: IntoIterator<Item = Option<String>>>(values: I) -> ArrayRef {
    Arc::new(StringArray::from(values.into_iter().collect::<Vec<_>>()))
}

fn times<I: IntoIterator<Item = SystemTime>>(values: I) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values.into_iter().map(micros).collect::<Vec<_>>()).with_timezone("UTC"))
}

/// Timestamps from Unix seconds, NULL where unknown.
fn optional_times<I: IntoIterator<Item = Option<u64>>>(values: I) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from(
            values
                .into_iter()
                .map(|t| t.map(|t| micros(unix(t))))
                .collect::<Vec<_>>(),
        )
        .with_timezone("UTC"),
    )
}

/// Registers every `sys` table.
pub(crate) fn register(
    schema: &Arc<datafusion::catalog::MemorySchemaProvider>,
    access: Arc<AccessControl>,
    hooks: Arc<dyn ServerHooks>,
    store: StoreCell,
) -> DfResult<()> {
    let add = |name: &'static str, fields: Vec<Field>, build: Box<Builder>| -> DfResult<()> {
        let table = SysTable {
            name,
            schema: Arc::new(Schema::new(fields)),
            access: access.clone(),
            hooks: hooks.clone(),
            store: store.clone(),
            build,
        };
        schema.register_table(name.to_owned(), Arc::new(table))?;
        Ok(())
    };

    add(
        "sessions",
        vec![
            Field::new("session_id", DataType::Int64, false),
            text("user_name"),
            text("database"),
            text("application_name"),
            text("client_address"),
            text("auth_method"),
            Field::new("ssl", DataType::Boolean, false),
            text("tls_version"),
            text("cipher"),
            text("tls_key_exchange"),
            text("client_cert_subject"),
            text("client_cert_issuer"),
            text("client_cert_serial"),
            text("client_cert_not_after"),
            timestamp("connected_at"),
        ],
        Box::new(|c: &SysContext| {
            // Administrators see every session, other users their own.
            let admin = c.viewer.is_some_and(|v| c.access.is_superuser(&v.user));
            let rows: Vec<Arc<SessionInfo>> = c
                .hooks
                .sessions()
                .into_iter()
                .filter(|s| admin || c.viewer.is_some_and(|v| v.user == s.user))
                .collect();
            let cert = |s: &SessionInfo, f: fn(&crate::ClientCertSummary) -> String| {
                s.tls.as_ref().and_then(|t| t.client_cert.as_ref()).map(f)
            };
            Ok(vec![
                Arc::new(Int64Array::from(
                    rows.iter()
                        .map(|s| i64::try_from(s.id).unwrap_or(i64::MAX))
                        .collect::<Vec<_>>(),
                )) as ArrayRef,
                strings(rows.iter().map(|s| Some(s.user.clone()))),
                strings(rows.iter().map(|s| Some(s.database.clone()))),
                strings(rows.iter().map(|s| Some(s.application_name.clone()))),
                strings(rows.iter().map(|s| Some(s.client_addr.clone()))),
                strings(rows.iter().map(|s| Some(s.auth_method.clone()))),
                Arc::new(BooleanArray::from(
                    rows.iter().map(|s| s.tls.is_some()).collect::<Vec<_>>(),
                )),
                strings(rows.iter().map(|s| s.tls.as_ref().map(|t| t.version.clone()))),
                strings(rows.iter().map(|s| s.tls.as_ref().map(|t| t.cipher.clone()))),
                strings(rows.iter().map(|s| s.tls.as_ref().map(|t| t.key_exchange.clone()))),
                strings(rows.iter().map(|s| cert(s, |c| c.subject.clone()))),
                strings(rows.iter().map(|s| cert(s, |c| c.issuer.clone()))),
                strings(rows.iter().map(|s| cert(s, |c| c.serial.clone()))),
                strings(rows.iter().map(|s| cert(s, |c| c.not_after.clone()))),
                times(rows.iter().map(|s| s.connected_at)),
            ])
        }),
    )?;

    add(
        "users",
        vec![
            text("user_name"),
            Field::new("superuser", DataType::Boolean, false),
            Field::new("can_login", DataType::Boolean, false),
            Field::new("has_password", DataType::Boolean, false),
            text("password_storage"),
            text("require"),
            text("member_of"),
            timestamp("created"),
        ],
        Box::new(|c: &SysContext| {
            let users = c.access.users();
            Ok(vec![
                strings(users.iter().map(|u| Some(u.name.clone()))),
                Arc::new(BooleanArray::from(
                    users.iter().map(|u| u.superuser).collect::<Vec<_>>(),
                )) as ArrayRef,
                Arc::new(BooleanArray::from(users.iter().map(|u| u.login).collect::<Vec<_>>())),
                Arc::new(BooleanArray::from(
                    users.iter().map(|u| u.password.is_some()).collect::<Vec<_>>(),
                )),
                strings(users.iter().map(|u| {
                    u.password
                        .as_ref()
                        .map(|v| format!("SCRAM-SHA-256 verifier, {} iterations", v.iterations))
                })),
                strings(users.iter().map(|u| Some(u.require.to_string()))),
                strings(
                    users
                        .iter()
                        .map(|u| Some(u.member_of.iter().cloned().collect::<Vec<_>>().join(","))),
                ),
                times(users.iter().map(|u| u.created)),
            ])
        }),
    )?;

    add(
        "grants",
        vec![text("grantee"), text("object"), text("privilege"), text("grantor")],
        Box::new(|c: &SysContext| {
            let grants = c.access.grants();
            Ok(vec![
                strings(grants.iter().map(|g| Some(g.grantee.clone()))),
                strings(grants.iter().map(|g| Some(g.object.to_string()))),
                strings(grants.iter().map(|g| Some(g.privilege.as_str().to_owned()))),
                strings(grants.iter().map(|g| Some(g.grantor.clone()))),
            ])
        }),
    )?;

    add(
        "certificates",
        vec![
            text("role"),
            text("path"),
            text("subject"),
            text("issuer"),
            text("serial"),
            text("sans"),
            timestamp("not_before"),
            timestamp("not_after"),
            Field::new("days_left", DataType::Int64, false),
        ],
        Box::new(|c: &SysContext| {
            let rows = c.hooks.certificates();
            Ok(vec![
                strings(rows.iter().map(|r| Some(r.role.clone()))),
                strings(rows.iter().map(|r| Some(r.path.clone()))),
                strings(rows.iter().map(|r| Some(r.subject.clone()))),
                strings(rows.iter().map(|r| Some(r.issuer.clone()))),
                strings(rows.iter().map(|r| Some(r.serial.clone()))),
                strings(rows.iter().map(|r| Some(r.sans.clone()))),
                times(rows.iter().map(|r| r.not_before)),
                times(rows.iter().map(|r| r.not_after)),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.days_left).collect::<Vec<_>>())),
            ])
        }),
    )?;

    add(
        "tables",
        vec![
            text("table_name"),
            text("encryption"),
            Field::new("key_version", DataType::Int64, false),
            Field::new("current_key_share", DataType::Float64, false),
            Field::new("rows", DataType::Int64, false),
            Field::new("segments", DataType::Int64, false),
            Field::new("bytes_on_disk", DataType::Int64, false),
            Field::new("bytes_in_memory", DataType::Int64, false),
            timestamp("created"),
        ],
        Box::new(|c: &SysContext| {
            let rows = c.store.map(Store::table_summaries).unwrap_or_default();
            let int = |f: fn(&sealdb_storage::TableSummary) -> u64| -> ArrayRef {
                Arc::new(Int64Array::from(
                    rows.iter()
                        .map(|r| i64::try_from(f(r)).unwrap_or(i64::MAX))
                        .collect::<Vec<_>>(),
                ))
            };
            Ok(vec![
                strings(rows.iter().map(|r| Some(format!("public.{}", r.name)))),
                strings(rows.iter().map(|r| Some(r.encryption.as_str().to_owned()))),
                int(|r| u64::from(r.key_version)),
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.current_key_share).collect::<Vec<_>>(),
                )),
                int(|r| r.rows),
                int(|r| r.segments as u64),
                int(|r| r.bytes_on_disk),
                int(|r| r.bytes_in_memory),
                times(rows.iter().map(|r| unix(r.created_unix))),
            ])
        }),
    )?;

    add(
        "encryption_keys",
        vec![
            text("key_id"),
            text("scope"),
            text("provider"),
            Field::new("version", DataType::Int64, false),
            text("state"),
            timestamp("created"),
            text("wrapped_key_sha256"),
        ],
        Box::new(|c: &SysContext| {
            let rows = c.store.map(Store::key_records).unwrap_or_default();
            Ok(vec![
                strings(rows.iter().map(|r| Some(r.id.clone()))),
                strings(rows.iter().map(|r| {
                    Some(match r.scope.strip_prefix("table ") {
                        Some(name) => format!("table public.{name}"),
                        None => r.scope.clone(),
                    })
                })),
                strings(rows.iter().map(|r| Some(r.provider.clone()))),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| i64::from(r.version)).collect::<Vec<_>>(),
                )) as ArrayRef,
                strings(rows.iter().map(|r| Some(r.state.to_owned()))),
                optional_times(rows.iter().map(|r| r.created_unix)),
                strings(rows.iter().map(|r| r.wrapped_sha256.clone())),
            ])
        }),
    )?;

    add(
        "kmip_hosts",
        vec![
            text("group"),
            text("host"),
            text("status"),
            timestamp("last_success"),
            Field::new("latency_ms", DataType::Float64, true),
            text("error"),
        ],
        Box::new(|c: &SysContext| {
            let rows = kmip_hosts(c);
            Ok(vec![
                strings(rows.iter().map(|r| Some(r.group.clone()))),
                strings(rows.iter().map(|r| Some(r.host.clone()))),
                strings(rows.iter().map(|r| Some(r.status.clone()))),
                optional_times(rows.iter().map(|r| r.last_success_unix)),
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.latency_ms).collect::<Vec<_>>(),
                )),
                strings(rows.iter().map(|r| r.error.clone())),
            ])
        }),
    )?;

    add(
        "jobs",
        vec![
            Field::new("job_id", DataType::Int64, false),
            text("kind"),
            text("table_name"),
            text("state"),
            Field::new("bytes_done", DataType::Int64, false),
            Field::new("bytes_total", DataType::Int64, false),
            Field::new("progress", DataType::Float64, false),
            Field::new("rate_bytes_per_sec", DataType::Float64, true),
            timestamp("started"),
            timestamp("finished"),
            text("destroyed_key_versions"),
            text("error"),
        ],
        Box::new(|c: &SysContext| {
            let rows = c.store.map(Store::jobs).unwrap_or_default();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let int = |f: fn(&sealdb_storage::JobMeta) -> u64| -> ArrayRef {
                Arc::new(Int64Array::from(
                    rows.iter()
                        .map(|r| i64::try_from(f(r)).unwrap_or(i64::MAX))
                        .collect::<Vec<_>>(),
                ))
            };
            Ok(vec![
                int(|r| r.id),
                strings(rows.iter().map(|_| Some("rekey table".to_owned()))),
                strings(rows.iter().map(|r| Some(format!("public.{}", r.table)))),
                strings(rows.iter().map(|r| Some(r.state.as_str().to_owned()))),
                int(|r| r.bytes_done),
                int(|r| r.bytes_total),
                Arc::new(Float64Array::from(
                    rows.iter()
                        .map(|r| match r.bytes_total {
                            0 => f64::from(u8::from(r.state == sealdb_storage::JobState::Done)),
                            total => r.bytes_done as f64 / total as f64,
                        })
                        .collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    rows.iter()
                        .map(|r| {
                            let secs = r.finished_unix.unwrap_or(now).saturating_sub(r.started_unix).max(1);
                            Some(r.bytes_done as f64 / secs as f64)
                        })
                        .collect::<Vec<_>>(),
                )),
                times(rows.iter().map(|r| unix(r.started_unix))),
                optional_times(rows.iter().map(|r| r.finished_unix)),
                strings(rows.iter().map(|r| {
                    Some(
                        r.destroyed_versions
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                })),
                strings(rows.iter().map(|r| r.error.clone())),
            ])
        }),
    )?;

    add(
        "audit_log",
        vec![
            Field::new("record", DataType::Int64, false),
            timestamp("time"),
            text("event"),
            text("user_name"),
            text("detail"),
            text("prev_sha256"),
        ],
        Box::new(|c: &SysContext| {
            let log = match c.store {
                Some(store) => store.audit_log().map_err(|e| DataFusionError::External(Box::new(e)))?,
                None => sealdb_storage::AuditLog::default(),
            };
            if let Some(problem) = log.problems.first() {
                return Err(DataFusionError::Execution(format!(
                    "the audit log is damaged: {problem}; run sealdb verify"
                )));
            }
            let rows = log.records;
            Ok(vec![
                Arc::new(Int64Array::from(
                    rows.iter()
                        .map(|r| i64::try_from(r.number).unwrap_or(i64::MAX))
                        .collect::<Vec<_>>(),
                )) as ArrayRef,
                Arc::new(
                    TimestampMicrosecondArray::from(
                        rows.iter()
                            .map(|r| i64::try_from(r.time_unix_ms).unwrap_or(i64::MAX).saturating_mul(1000))
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                strings(rows.iter().map(|r| Some(r.event.clone()))),
                strings(rows.iter().map(|r| Some(r.user.clone()))),
                strings(rows.iter().map(|r| Some(r.detail.clone()))),
                strings(rows.iter().map(|r| Some(r.prev.clone()))),
            ])
        }),
    )?;

    add(
        "security_status",
        vec![text("severity"), text("finding"), text("detail"), text("fix")],
        Box::new(|c: &SysContext| {
            let rows = crate::status::findings(&status_inputs(c));
            Ok(vec![
                strings(rows.iter().map(|r| Some(r.severity.to_owned()))),
                strings(rows.iter().map(|r| Some(r.finding.to_owned()))),
                strings(rows.iter().map(|r| Some(r.detail.clone()))),
                strings(rows.iter().map(|r| Some(r.fix.clone()))),
            ])
        }),
    )?;
    Ok(())
}

/// The key servers of the store's key provider, as last seen.
fn kmip_hosts(c: &SysContext) -> Vec<sealdb_kms::ProviderHost> {
    c.store.map(|s| s.provider().hosts()).unwrap_or_default()
}

/// What `sys.security_status` is made from, live.
fn status_inputs(c: &SysContext) -> crate::status::StatusInputs {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let period = c.hooks.key_rotation_period();
    crate::status::StatusInputs {
        plaintext_allowed: c.hooks.plaintext_allowed(),
        master_key_unprotected: c.store.is_some_and(|s| !s.provider().protected_at_rest()),
        users: c.access.users(),
        pki_db_client_auth: c.hooks.pki_db_client_auth(),
        certificates: c.hooks.certificates(),
        session_certificates: c
            .hooks
            .sessions()
            .iter()
            .filter_map(|s| {
                let cert = s.tls.as_ref()?.client_cert.as_ref()?;
                Some(crate::status::SessionCertificate {
                    user: s.user.clone(),
                    subject: cert.subject.clone(),
                    days_left: (cert.not_after_unix - now).div_euclid(86_400),
                })
            })
            .collect(),
        tables: c.store.map(Store::table_summaries).unwrap_or_default(),
        jobs: c.store.map(Store::jobs).unwrap_or_default(),
        due_for_rotation: match (&period, c.store) {
            (Some((_, every)), Some(store)) => store.tables_due_for_rotation(*every),
            _ => Vec::new(),
        },
        key_rotation_period: period,
        kmip_hosts: kmip_hosts(c),
        readable_ca_keys: c.hooks.readable_ca_keys(),
        stale_crls: c.hooks.stale_crls(),
        audit: match c.store {
            Some(store) => crate::status::AuditState {
                off: !store.audit_enabled(),
                failures: store.audit_failures(),
                damaged: None,
            },
            None => crate::status::AuditState::default(),
        },
    }
}
