//! Server-wide state: settings, TLS material, sessions, the SQL engine.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use pgwire::api::auth::sasl::scram::ScramAuth;
use sealdb_auth::AccessControl;
use sealdb_config::SslMode;
use sealdb_pki::{CertUserMap, TlsFiles, TlsMaterial, TlsReloader};
use sealdb_sql::{CertificateRow, Engine, ServerHooks, SessionInfo};
use tokio::net::TcpListener;

use crate::ServerError;
use crate::startup::VerifierSource;

/// What the server needs to run, resolved from flags and config.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address to listen on.
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// TLS policy.
    pub ssl_mode: SslMode,
    /// TLS files; required unless `ssl_mode` is `Disabled`.
    pub tls: Option<TlsFiles>,
    /// Every client must present a verified certificate.
    pub pki_db_client_auth: bool,
    /// Certificate-to-user rules.
    pub cert_user_map: CertUserMap,
    /// Most concurrent sessions (authenticated connections).
    pub max_connections: usize,
    /// Of those, the ones only administrators may take.
    pub superuser_reserved_connections: usize,
    /// Most connections still negotiating TLS or logging in.
    pub max_unauthenticated_connections: usize,
    /// Of those, the most from one client address.
    pub max_unauthenticated_per_address: usize,
    /// The longest message an authenticated client may send.
    pub max_message_bytes: usize,
    /// Time to finish TLS and authentication.
    pub handshake_timeout: Duration,
    /// Query memory before spilling to encrypted files (`memory-limit`).
    pub memory_limit: Option<usize>,
    /// What new tables get unless `CREATE TABLE ... WITH (encryption = ...)` says otherwise.
    pub default_table_encryption: sealdb_storage::Encryption,
    /// Where queries run: a runtime of their own, so that heavy queries
    /// never hold up connections and handshakes (default: the caller's).
    pub queries: sealdb_sql::executor::QueryExecutor,
    /// Opens key providers for `ALTER SYSTEM SET key_provider`.
    pub key_admin: Option<Arc<dyn sealdb_sql::KeyAdmin>>,
    /// `key-rotation-period`, as written and parsed.
    pub key_rotation_period: Option<(String, Duration)>,
    /// Where a CA private key could be that the server should not read.
    pub ca_key_candidates: Vec<std::path::PathBuf>,
    /// Failed logins from one address after the first in this interval
    /// are counted into one audit record.
    pub audit_failed_login_interval: Duration,
}

/// Live state shared by every connection; also the `sys` tables' view of the server.
pub(crate) struct ServerState {
    pub(crate) settings: ServerSettings,
    pub(crate) access: Arc<AccessControl>,
    tls: Option<TlsReloader>,
    /// SCRAM for TLS connections: offers SCRAM-SHA-256-PLUS bound to the
    /// server certificate of the current material.
    scram_tls: ArcSwap<Option<ScramForMaterial>>,
    /// SCRAM for plaintext connections (`ssl-mode = allowed`): no PLUS.
    pub(crate) scram_plain: Arc<ScramAuth>,
    sessions: Mutex<BTreeMap<u64, Arc<SessionInfo>>>,
    next_session_id: AtomicU64,
    /// Cancel requests per address (see `connection.rs`).
    pub(crate) cancel_budget: crate::admission::CancelBudget,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ServerState {
    fn new(settings: ServerSettings, access: Arc<AccessControl>) -> Result<Self, ServerError> {
        let tls =
            match (&settings.ssl_mode, &settings.tls) {
                (SslMode::Disabled, _) => None,
                (_, Some(files)) => Some(TlsReloader::new(files.clone())?),
                (_, None) => return Err(ServerError::Settings(
                    "TLS is required but no certificate is configured (ssl-cert and ssl-private-key, or ssl-keystore)"
                        .into(),
                )),
            };
        let source = Arc::new(VerifierSource { access: access.clone() });
        let scram_plain = Arc::new(ScramAuth::new(source.clone()));
        let scram_tls = tls.as_ref().map(|t| {
            let material = t.current();
            ScramForMaterial {
                scram: Arc::new(scram_for(&source, &material)),
                material,
            }
        });
        Ok(Self {
            settings,
            access,
            tls,
            scram_tls: ArcSwap::from_pointee(scram_tls),
            scram_plain,
            sessions: Mutex::new(BTreeMap::new()),
            next_session_id: AtomicU64::new(1),
            cancel_budget: crate::admission::CancelBudget::default(),
        })
    }

    pub(crate) fn tls_material(&self) -> Option<Arc<TlsMaterial>> {
        self.tls.as_ref().map(|t| t.current())
    }

    /// SCRAM for a connection whose handshake used `material`: its
    /// channel binding (SCRAM-SHA-256-PLUS) hashes that material's server
    /// certificate, even when a reload has replaced it since.
    pub(crate) fn scram_for_connection(&self, material: &Arc<TlsMaterial>) -> Arc<ScramAuth> {
        if let Some(current) = self.scram_tls.load().as_ref()
            && Arc::ptr_eq(&current.material, material)
        {
            return current.scram.clone();
        }
        let source = Arc::new(VerifierSource {
            access: self.access.clone(),
        });
        Arc::new(scram_for(&source, material))
    }

    pub(crate) fn new_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a newly authenticated session if it may have a slot
    /// (see [`crate::admission::session_slot`]); the refusal otherwise.
    pub(crate) fn register_session(&self, info: Arc<SessionInfo>, superuser: bool) -> Result<(), String> {
        let mut sessions = self
            .sessions
            .lock()
            .map_err(|_| "internal error: the session table is poisoned".to_owned())?;
        crate::admission::session_slot(
            sessions.len(),
            self.settings.max_connections,
            self.settings.superuser_reserved_connections,
            superuser,
        )?;
        sessions.insert(info.id, info);
        Ok(())
    }

    pub(crate) fn unregister_session(&self, id: u64) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(&id);
        }
    }
}

/// The CRLs of `material` past their next update, as `FILE (issuer ...)`.
pub fn stale_crls(material: &TlsMaterial) -> Vec<String> {
    let now = time::OffsetDateTime::now_utc();
    material
        .crls()
        .iter()
        .filter(|c| c.expired(now))
        .map(|c| {
            format!(
                "{} (issuer \"{}\", next update was {})",
                c.path.display(),
                c.issuer,
                c.next_update.map(sealdb_pki::format_time).unwrap_or_default()
            )
        })
        .collect()
}

/// Those of `paths` this process can open for reading.
pub fn readable(paths: &[std::path::PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter(|p| std::fs::File::open(p).is_ok())
        .map(|p| p.display().to_string())
        .collect()
}

/// SCRAM made for one TLS material.
struct ScramForMaterial {
    material: Arc<TlsMaterial>,
    scram: Arc<ScramAuth>,
}

fn scram_for(source: &Arc<VerifierSource>, material: &TlsMaterial) -> ScramAuth {
    let mut scram = ScramAuth::new(source.clone());
    if let Some(pem) = material.server_certificate_pem()
        && let Err(e) = scram.configure_certificate(pem.as_bytes())
    {
        tracing::warn!("SCRAM-SHA-256-PLUS (channel binding) is unavailable with this server certificate: {e}");
    }
    scram
}

impl ServerHooks for ServerState {
    fn sessions(&self) -> Vec<Arc<SessionInfo>> {
        self.sessions
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    fn certificates(&self) -> Vec<CertificateRow> {
        let Some(material) = self.tls_material() else {
            return Vec::new();
        };
        let now = time::OffsetDateTime::now_utc();
        material
            .certificates()
            .iter()
            .map(|c| CertificateRow {
                role: c.role.to_owned(),
                path: c.path.display().to_string(),
                subject: c.info.subject.clone(),
                issuer: c.info.issuer.clone(),
                serial: c.info.serial.clone(),
                sans: c.info.sans.join(", "),
                not_before: c.info.not_before.into(),
                not_after: c.info.not_after.into(),
                days_left: c.info.days_left(now),
            })
            .collect()
    }

    fn plaintext_allowed(&self) -> bool {
        self.settings.ssl_mode != SslMode::Required
    }

    fn key_admin(&self) -> Option<Arc<dyn sealdb_sql::KeyAdmin>> {
        self.settings.key_admin.clone()
    }

    fn pki_db_client_auth(&self) -> bool {
        self.settings.pki_db_client_auth
    }

    fn key_rotation_period(&self) -> Option<(String, Duration)> {
        self.settings.key_rotation_period.clone()
    }

    fn readable_ca_keys(&self) -> Vec<String> {
        readable(&self.settings.ca_key_candidates)
    }

    fn stale_crls(&self) -> Vec<String> {
        let Some(material) = self.tls_material() else {
            return Vec::new();
        };
        stale_crls(&material)
    }

    fn reload_tls(&self) -> Result<(), String> {
        let Some(tls) = &self.tls else {
            return Err("TLS is disabled (ssl-mode = disabled); there is nothing to reload".into());
        };
        match tls.reload() {
            Ok(material) => {
                let source = Arc::new(VerifierSource {
                    access: self.access.clone(),
                });
                self.scram_tls.store(Arc::new(Some(ScramForMaterial {
                    scram: Arc::new(scram_for(&source, &material)),
                    material: material.clone(),
                })));
                tracing::info!(
                    certificates = material.certificates().len(),
                    crls = material.crl_count(),
                    "TLS material reloaded"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!("TLS reload refused, the previous certificates stay in use: {e}");
                Err(format!(
                    "TLS reload refused, the previous certificates stay in use: {e}"
                ))
            }
        }
    }

    fn ssl_enabled(&self) -> bool {
        self.tls.is_some()
    }
}

/// Connections closed at the door, logged at most once a second with
/// their counts, so that a flood cannot flood the log too.
#[derive(Debug, Default)]
struct TurnedAway {
    full: u64,
    address_full: u64,
    last_logged: Option<std::time::Instant>,
}

impl TurnedAway {
    fn count(&mut self, why: crate::admission::Turned, peer: SocketAddr, settings: &ServerSettings) {
        match why {
            crate::admission::Turned::Full => self.full += 1,
            crate::admission::Turned::AddressFull => self.address_full += 1,
        }
        let now = std::time::Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_logged = Some(now);
        tracing::warn!(
            last = %peer,
            all_slots_taken = self.full,
            address_over_its_share = self.address_full,
            max_unauthenticated_connections = settings.max_unauthenticated_connections,
            max_unauthenticated_per_address = settings.max_unauthenticated_per_address,
            "connections closed before TLS: too many connections are not authenticated yet"
        );
        self.full = 0;
        self.address_full = 0;
    }
}

/// A bound, ready-to-run server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: Arc<ServerState>,
    engine: Arc<Engine>,
}

impl Server {
    /// Loads the TLS material, sets up the engine and binds the port.
    pub async fn bind(
        settings: ServerSettings,
        access: Arc<AccessControl>,
        store: Option<sealdb_storage::Store>,
    ) -> Result<Self, ServerError> {
        sealdb_pki::install_crypto_provider();
        let address = format!("{}:{}", settings.host, settings.port);
        let state = Arc::new(ServerState::new(settings, access.clone())?);
        let memory = sealdb_sql::QueryMemory {
            limit: state.settings.memory_limit,
            spill_dir: store.as_ref().map(|s| s.dir().join(sealdb_sql::spill::SPILL_DIR)),
        };
        let mut engine =
            Engine::with_memory(access, state.clone(), memory)?.with_executor(state.settings.queries.clone());
        if let Some(store) = store {
            engine = engine.with_store(store, state.settings.default_table_encryption)?;
        }
        let engine = Arc::new(engine);
        let listener = TcpListener::bind(&address)
            .await
            .map_err(|source| ServerError::Listen { address, source })?;
        Ok(Self {
            listener,
            state,
            engine,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Reloads TLS material (what SIGHUP does).
    pub fn reloader(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let state = self.state.clone();
        move || state.reload_tls()
    }

    /// Serves until the process ends.
    pub async fn run(self) {
        let doorway = crate::admission::Doorway::new(
            self.state.settings.max_unauthenticated_connections,
            self.state.settings.max_unauthenticated_per_address,
        );
        let mut turned_away = TurnedAway::default();
        let handlers = Arc::new(crate::connection::Handlers::new(
            self.state.clone(),
            self.engine.clone(),
        ));
        tokio::spawn({
            let handlers = handlers.clone();
            async move { handlers.write_counted_refusals().await }
        });
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match doorway.enter(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    // Closed before any TLS work: explaining would cost
                    // the handshake the limit is there to save.
                    drop(socket);
                    turned_away.count(why, peer, &self.state.settings);
                    continue;
                }
            };
            let handlers = handlers.clone();
            let state = self.state.clone();
            tokio::spawn(crate::connection::serve(socket, peer, state, handlers, slot));
        }
    }
}
