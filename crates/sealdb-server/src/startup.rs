//! Authentication: TLS policy, client certificates, SCRAM, session start.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::driver::AuthOutcome;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::ScramSecret;
use pgwire::api::auth::{
    AuthDriver, AuthSource, DefaultServerParameterProvider, LoginInfo, Password, ServerParameterProvider,
    protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, METADATA_APPLICATION_NAME, METADATA_DATABASE, METADATA_USER};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::startup::PasswordMessageFamily;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use sealdb_auth::{AccessControl, AuthPlan, CertFacts, ConnectionFacts, decide};
use sealdb_config::SslMode;
use sealdb_pki::ClientCertificate;
use sealdb_sql::{ClientCertSummary, Engine, SessionInfo, SqlSession, TlsSessionInfo};

use crate::connection::ConnectionTls;
use crate::error::fatal;
use crate::refusals::{Refusal, RefusalLedger, truncated};
use crate::state::ServerState;

/// The authenticated session of a connection.
#[derive(Debug)]
pub(crate) struct SessionSlot {
    pub(crate) id: u64,
    pub(crate) session: tokio::sync::Mutex<SqlSession>,
}

/// A verified client certificate, kept between the startup message and the end of SCRAM.
#[derive(Debug)]
struct VerifiedCertificate(ClientCertificate);

/// The SCRAM mechanism the client chose, as `sys.sessions` shows it.
#[derive(Debug)]
struct ScramMechanismName(&'static str);

/// A login that fails at the end of its SCRAM exchange, as a wrong
/// password does, whatever the password: why, for the log only.
#[derive(Debug)]
struct Decoy(String);

/// Hands pgwire's SCRAM the stored verifier (never a password).
#[derive(Debug)]
pub(crate) struct VerifierSource {
    pub(crate) access: Arc<AccessControl>,
}

#[async_trait]
impl AuthSource for VerifierSource {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Err(fatal("28000", "only SCRAM-SHA-256 authentication is supported"))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let name = login.user().unwrap_or_default();
        let v = self.access.password_verifier(name);
        Ok((
            ScramSecret::Verifier {
                salt: v.salt.clone(),
                iterations: v.iterations as usize,
                stored_key: v.stored_key.to_vec(),
                server_key: v.server_key.to_vec(),
            },
            None,
        ))
    }
}

/// Startup parameters, with `is_superuser` telling the truth.
#[derive(Debug)]
pub(crate) struct ParameterProvider {
    access: Arc<AccessControl>,
    base: DefaultServerParameterProvider,
}

impl ParameterProvider {
    pub(crate) fn new(access: Arc<AccessControl>) -> Self {
        let mut base = DefaultServerParameterProvider::default();
        base.server_version = sealdb_sql::SERVER_VERSION.to_owned();
        Self { access, base }
    }
}

impl ServerParameterProvider for ParameterProvider {
    fn server_parameters<C: ClientInfo>(&self, client: &C) -> Option<HashMap<String, String>> {
        let mut params = self.base.server_parameters(client)?;
        let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
        let on_off = if self.access.is_superuser(&user) { "on" } else { "off" };
        params.insert("is_superuser".to_owned(), on_off.to_owned());
        params.insert("session_authorization".to_owned(), user);
        Some(params)
    }
}

/// Decides how each client authenticates and starts its session.
pub(crate) struct StartupHandler {
    state: Arc<ServerState>,
    engine: Arc<Engine>,
    driver: AuthDriver<ParameterProvider>,
    refusals: RefusalLedger,
}

impl Debug for StartupHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartupHandler").finish_non_exhaustive()
    }
}

impl StartupHandler {
    pub(crate) fn new(state: Arc<ServerState>, engine: Arc<Engine>, driver: AuthDriver<ParameterProvider>) -> Self {
        let refusals = RefusalLedger::new(state.settings.audit_failed_login_interval);
        Self {
            state,
            engine,
            driver,
            refusals,
        }
    }

    /// Writes the failed logins counted in intervals that have ended, one
    /// record per address; runs until the server stops.
    pub(crate) async fn write_counted_refusals(&self) {
        let Some(store) = self.engine.store() else {
            return;
        };
        let mut tick = tokio::time::interval(self.refusals.tick());
        loop {
            tick.tick().await;
            for aggregate in self.refusals.ended() {
                let from = aggregate
                    .address
                    .map_or_else(|| "addresses past the followed limit".to_owned(), |a| a.to_string());
                let detail = format!(
                    "{} more failed logins from {from} in {} s, for users {}; the last: {}",
                    aggregate.count,
                    self.refusals_interval().as_secs(),
                    aggregate.users.join(", "),
                    aggregate.last_reason
                );
                store
                    .audit(sealdb_storage::AuditEvent::new("login failed (counted)", "", detail))
                    .await;
            }
        }
    }

    fn refusals_interval(&self) -> std::time::Duration {
        self.state.settings.audit_failed_login_interval
    }

    fn plaintext_refusal(&self) -> PgWireError {
        let port = self.state.settings.port;
        fatal(
            "28000",
            format!(
                "sealdb accepts TLS connections only (ssl-mode = required) and this connection is plaintext; connect with sslmode=verify-full and the server's CA, e.g. psql \"host=localhost port={port} user=USER sslmode=verify-full sslrootcert=ca.crt\""
            ),
        )
    }

    /// Checks a presented client certificate; a bad one ends the connection.
    fn verify_certificate<C: ClientInfo>(&self, client: &C) -> PgWireResult<Option<ClientCertificate>> {
        let Some(chain) = client.client_certificates().filter(|c| !c.is_empty()) else {
            return Ok(None);
        };
        let tls = client.session_extensions().get::<ConnectionTls>();
        let Some(tls) = tls else {
            return Err(fatal(
                "28000",
                "internal error: TLS state of this connection is missing",
            ));
        };
        match tls.material.verify_client(chain) {
            Ok(cert) => Ok(Some(cert)),
            Err(message) => {
                tracing::warn!(peer = %client.socket_addr(), "client certificate refused: {message}");
                Err(fatal("28000", message))
            }
        }
    }

    /// Appends a login (or a refused one, with `refused` saying why) to the
    /// audit log: user, client address, auth method, TLS version and
    /// cipher, certificate subject. Durable before the client is answered.
    async fn audit_login<C: ClientInfo>(
        &self,
        client: &C,
        auth_method: &str,
        subject: Option<&str>,
        refused: Option<&str>,
    ) {
        let Some(store) = self.engine.store() else {
            return;
        };
        let full_user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
        if let Some(why) = refused
            && self.refusals.note(client.socket_addr().ip(), &full_user, why) == Refusal::Counted
        {
            return;
        }
        let user = truncated(&full_user);
        let tls = client.session_extensions().get::<ConnectionTls>();
        let mut detail = format!(
            "client {}, auth {auth_method}, {}",
            client.socket_addr(),
            match &tls {
                Some(t) => format!("TLS {} {}", t.version, t.cipher),
                None => "no TLS".to_owned(),
            }
        );
        if let Some(subject) = subject {
            detail.push_str(&format!(", certificate \"{subject}\""));
        }
        let event = match refused {
            Some(why) => {
                detail.push_str(&format!(": {why}"));
                "login failed"
            }
            None => "login",
        };
        store.audit(sealdb_storage::AuditEvent::new(event, user, detail)).await;
    }

    /// Starts the authenticated client's session, if it may have a slot.
    async fn establish<C: ClientInfo>(
        &self,
        client: &C,
        auth_method: &str,
        cert: Option<&ClientCertificate>,
    ) -> PgWireResult<()> {
        let metadata = client.metadata();
        let user = metadata.get(METADATA_USER).cloned().unwrap_or_default();
        let tls = client
            .session_extensions()
            .get::<ConnectionTls>()
            .map(|t| TlsSessionInfo {
                version: t.version.clone(),
                cipher: t.cipher.clone(),
                key_exchange: t.key_exchange.clone(),
                client_cert: cert.map(|c| ClientCertSummary {
                    subject: c.info.subject.clone(),
                    issuer: c.info.issuer.clone(),
                    serial: c.info.serial.clone(),
                    not_after: c.info.not_after_text(),
                    not_after_unix: c.info.not_after.unix_timestamp(),
                }),
            });
        let id = self.state.new_session_id();
        let info = SessionInfo {
            id,
            user: user.clone(),
            database: metadata.get(METADATA_DATABASE).cloned().unwrap_or_else(|| user.clone()),
            application_name: metadata.get(METADATA_APPLICATION_NAME).cloned().unwrap_or_default(),
            client_addr: client.socket_addr().to_string(),
            auth_method: auth_method.to_owned(),
            tls,
            connected_at: SystemTime::now(),
        };
        let superuser = self.state.access.is_superuser(&user);
        let with_tls = info.tls.is_some();
        let session = self.engine.session(info);
        if let Err(refusal) = self.state.register_session(session.info().clone(), superuser) {
            tracing::warn!(user = ?user, peer = %client.socket_addr(), "session refused: {refusal}");
            return Err(fatal("53300", refusal));
        }
        // Registered and held by the connection at once: it is unregistered
        // when the connection ends, whatever happens next.
        client.session_extensions().insert(SessionSlot {
            id,
            session: tokio::sync::Mutex::new(session),
        });
        self.audit_login(client, auth_method, cert.map(|c| c.info.subject.as_str()), None)
            .await;
        tracing::info!(session = id, user = ?user, peer = %client.socket_addr(), auth = auth_method, tls = with_tls, "session started");
        Ok(())
    }
}

#[async_trait]
impl pgwire::api::auth::StartupHandler for StartupHandler {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let step = match &message {
            PgWireFrontendMessage::Startup(_) => Some(if client.client_certificates().is_some_and(|c| !c.is_empty()) {
                "certificate"
            } else {
                "none"
            }),
            PgWireFrontendMessage::PasswordMessageFamily(_) => Some("scram-sha-256"),
            _ => None,
        };
        let result = self.startup_step(client, message).await;
        if let (Err(e), Some(method)) = (&result, step) {
            let subject = client
                .session_extensions()
                .get::<VerifiedCertificate>()
                .map(|c| c.0.info.subject.clone());
            self.audit_login(client, method, subject.as_deref(), Some(&e.to_string()))
                .await;
        }
        result
    }
}

impl StartupHandler {
    /// A [`Decoy`] login whose password was right fails here, exactly as a
    /// wrong password fails (`EscalateStartupErrors` words both).
    fn refuse_decoy<C: ClientInfo>(&self, client: &C) -> PgWireResult<()> {
        match client.session_extensions().get::<Decoy>() {
            Some(decoy) => {
                let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
                tracing::warn!(user = ?user, peer = %client.socket_addr(), "login refused although the password was right: {}", decoy.0);
                Err(PgWireError::InvalidPassword(user))
            }
            None => Ok(()),
        }
    }

    async fn startup_step<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let secure = client.is_secure();
                if !secure && self.state.settings.ssl_mode == SslMode::Required {
                    tracing::warn!(peer = %client.socket_addr(), "plaintext connection refused");
                    return Err(self.plaintext_refusal());
                }
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .ok_or(PgWireError::UserNameRequired)?;
                let cert = self.verify_certificate(client)?;
                let facts = ConnectionFacts {
                    tls: secure,
                    certificate: cert.as_ref().map(|c| CertFacts {
                        subject: c.info.subject.clone(),
                        subject_dn: c.info.subject_dn.clone(),
                        issuer: c.info.issuer.clone(),
                        issuer_dn: c.info.issuer_dn.clone(),
                        mapped_user: self.state.settings.cert_user_map.user_for(&c.info),
                    }),
                    certificate_required: self.state.settings.pki_db_client_auth,
                };
                let plan = decide(&self.state.access, &user, &facts);
                if let AuthPlan::Decoy { reason, .. } = &plan {
                    tracing::warn!(user = ?user, peer = %client.socket_addr(), "login cannot succeed (the client is answered as for a wrong password): {reason}");
                    client.session_extensions().insert(Decoy(reason.clone()));
                }
                match plan {
                    AuthPlan::Refuse(message) => {
                        tracing::warn!(user = ?user, peer = %client.socket_addr(), "login refused: {message}");
                        Err(fatal("28000", message))
                    }
                    AuthPlan::Certificate => {
                        self.establish(client, "certificate", cert.as_ref()).await?;
                        self.driver.complete_authentication(client, None).await
                    }
                    AuthPlan::Password(_) | AuthPlan::Decoy { .. } => {
                        if let Some(c) = cert {
                            client.session_extensions().insert(VerifiedCertificate(c));
                        }
                        // Channel binding hashes the certificate this
                        // connection's handshake used, not today's.
                        let scram = match client.session_extensions().get::<ConnectionTls>() {
                            Some(tls) => tls.scram.clone(),
                            None => self.state.scram_plain.clone(),
                        };
                        match self.driver.begin_authentication(client, scram.create()).await? {
                            AuthOutcome::InProgress => Ok(()),
                            AuthOutcome::Authenticated { final_message, .. } => {
                                self.refuse_decoy(client)?;
                                self.establish(client, "scram-sha-256", None).await?;
                                self.driver.complete_authentication(client, final_message).await
                            }
                        }
                    }
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(msg) => {
                // The first message of the exchange names the mechanism.
                if client.session_extensions().get::<ScramMechanismName>().is_none() {
                    let plus = matches!(&msg, PasswordMessageFamily::Raw(body) if body.starts_with(b"SCRAM-SHA-256-PLUS\0"))
                        || matches!(&msg, PasswordMessageFamily::SASLInitialResponse(r) if r.auth_method == "SCRAM-SHA-256-PLUS");
                    client.session_extensions().insert(ScramMechanismName(if plus {
                        "scram-sha-256-plus"
                    } else {
                        "scram-sha-256"
                    }));
                }
                match self.driver.advance_authentication(client, msg).await? {
                    AuthOutcome::InProgress => Ok(()),
                    AuthOutcome::Authenticated { final_message, .. } => {
                        self.refuse_decoy(client)?;
                        let cert = client.session_extensions().get::<VerifiedCertificate>();
                        let method = client
                            .session_extensions()
                            .get::<ScramMechanismName>()
                            .map_or("scram-sha-256", |m| m.0);
                        self.establish(client, method, cert.as_ref().map(|c| &c.0)).await?;
                        self.driver.complete_authentication(client, final_message).await
                    }
                }
            }
            _ => Ok(()),
        }
    }
}
