//! One client connection: TLS negotiation, the message loop, cleanup.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use pgwire::api::auth::AuthDriver;
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{ClientInfo, ConnectionManager, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::PgWireError;
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::server::{MaybeTls, negotiate_tls, process_error, process_message};
use sealdb_config::SslMode;
use sealdb_pki::TlsMaterial;
use sealdb_sql::Engine;
use tokio::net::TcpStream;

use crate::admission::DoorwaySlot;
use crate::error::fatal;
use crate::query::QueryHandler;
use crate::startup::{ParameterProvider, SessionSlot, StartupHandler};
use crate::state::ServerState;

/// TLS facts of a connection, recorded right after the handshake.
#[derive(Debug)]
pub(crate) struct ConnectionTls {
    /// The material the handshake used (its CAs and CRLs check the client certificate).
    pub(crate) material: Arc<TlsMaterial>,
    /// `TLSv1_3`, ...
    pub(crate) version: String,
    /// Cipher suite name.
    pub(crate) cipher: String,
    /// Key exchange group (`X25519MLKEM768`, ...).
    pub(crate) key_exchange: String,
    /// SCRAM bound to the server certificate this handshake used.
    pub(crate) scram: Arc<pgwire::api::auth::sasl::scram::ScramAuth>,
}

/// The handlers every connection shares.
#[derive(Debug)]
pub(crate) struct Handlers {
    startup: Arc<StartupHandler>,
    query: Arc<QueryHandler>,
    copy: Arc<crate::copy::CopyIn>,
    errors: Arc<EscalateStartupErrors>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Handlers {
    pub(crate) fn new(state: Arc<ServerState>, engine: Arc<Engine>) -> Self {
        let connections = Arc::new(ConnectionManager::new());
        let driver =
            AuthDriver::new(ParameterProvider::new(state.access.clone())).with_connection_manager(connections.clone());
        Self {
            startup: Arc::new(StartupHandler::new(state, engine.clone(), driver)),
            query: Arc::new(QueryHandler::new(engine.clone())),
            copy: Arc::new(crate::copy::CopyIn::new(engine)),
            errors: Arc::new(EscalateStartupErrors),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }
}

impl Handlers {
    /// See [`StartupHandler::write_counted_refusals`].
    pub(crate) async fn write_counted_refusals(&self) {
        self.startup.write_counted_refusals().await;
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.query.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.query.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        self.copy.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        self.errors.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Any error before authentication completes ends the connection: pgwire
/// would otherwise treat a non-FATAL startup error as a finished login.
/// Also names the user in password failures (libpq sends no name in SCRAM).
#[derive(Debug)]
pub(crate) struct EscalateStartupErrors;

impl ErrorHandler for EscalateStartupErrors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        let in_startup = matches!(
            client.state(),
            PgWireConnectionState::AwaitingSslRequest
                | PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        if let PgWireError::InvalidPassword(_) = error {
            let user = client
                .metadata()
                .get(pgwire::api::METADATA_USER)
                .cloned()
                .unwrap_or_default();
            tracing::warn!(user = ?user, peer = %client.socket_addr(), "password authentication failed");
            *error = fatal("28P01", format!("password authentication failed for user \"{user}\""));
            return;
        }
        if in_startup && !error.is_fatal() {
            let info: pgwire::error::ErrorInfo = std::mem::replace(error, PgWireError::UserNameRequired).into();
            *error = fatal(&info.code, info.message);
        }
    }
}

/// The longest message a client may send before it has authenticated:
/// startup, SSL and SCRAM messages are far shorter.
const MAX_MESSAGE_BYTES_BEFORE_LOGIN: usize = 16 << 10;

/// The length a message announces, once its header is in `buffer`: a type
/// byte then a length (`typed`), or the length alone (the startup message).
fn declared_length(buffer: &[u8], typed: bool) -> Option<usize> {
    let at = usize::from(typed);
    let field = buffer.get(at..at + 4)?;
    Some(u32::from_be_bytes([field[0], field[1], field[2], field[3]]) as usize)
}

/// Serves one TCP connection until the client leaves, fails or times out.
pub(crate) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    state: Arc<ServerState>,
    handlers: Arc<Handlers>,
    doorway: DoorwaySlot,
) {
    // Given back once the client has authenticated (its session then
    // holds one of `max-connections`) or when the connection ends.
    let mut doorway = Some(doorway);
    let deadline = tokio::time::sleep(state.settings.handshake_timeout);
    tokio::pin!(deadline);
    let material = state.tls_material();
    let acceptor = match (&material, state.settings.ssl_mode) {
        (Some(m), SslMode::Required | SslMode::Allowed) => Some(TlsAcceptor::from(m.server_config())),
        _ => None,
    };
    let negotiated = tokio::select! {
        _ = &mut deadline => {
            tracing::info!(%peer, "connection closed: TLS negotiation did not finish within handshake-timeout-ms");
            return;
        }
        n = negotiate_tls(socket, acceptor) => n,
    };
    let mut socket = match negotiated {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            // Bad TLS (old versions, wrong ALPN, garbage): only this connection ends.
            tracing::info!(%peer, "connection closed during TLS negotiation: {e}");
            return;
        }
    };
    // Bytes that came with the SSLRequest, before the TLS handshake, were
    // sent in the clear: read after it, they would pass for the client's
    // own (a man in the middle appends a startup message and a query to
    // the victim's SSLRequest, and they run as the victim once its
    // certificate is verified: CVE-2021-23214). Refused, as PostgreSQL does.
    if matches!(socket.get_ref(), MaybeTls::Tls(_)) && !socket.read_buffer().is_empty() {
        tracing::warn!(
            %peer,
            bytes = socket.read_buffer().len(),
            "connection closed: unencrypted data followed the SSL request (a client bug, or a man in the middle injecting commands)"
        );
        let refusal = fatal(
            "08P01",
            "received unencrypted data after SSL request; this is either a client bug or a man-in-the-middle attack",
        );
        let _ = process_error(&mut socket, refusal, false).await;
        return;
    }
    if let (MaybeTls::Tls(tls), Some(material)) = (socket.get_ref(), material) {
        let (_, conn) = tls.get_ref();
        let version = conn
            .protocol_version()
            .map(|v| v.as_str().unwrap_or("TLS").to_owned())
            .unwrap_or_default();
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| s.suite().as_str().unwrap_or("unknown").to_owned())
            .unwrap_or_default();
        let key_exchange = conn
            .negotiated_key_exchange_group()
            .map(|g| g.name().as_str().unwrap_or("unknown").to_owned())
            .unwrap_or_default();
        let scram = state.scram_for_connection(&material);
        socket.session_extensions().insert(ConnectionTls {
            material,
            version,
            cipher,
            key_exchange,
            scram,
        });
    }

    // A panic while decoding or handling a message (a dependency's decoder
    // meeting bytes it did not expect, say) ends this connection only, with
    // a line in the log, and its session is still unregistered.
    let served = std::panic::AssertUnwindSafe(async {
        let startup = handlers.startup_handler();
        let simple = handlers.simple_query_handler();
        let extended = handlers.extended_query_handler();
        let copy = handlers.copy_handler();
        let cancel = handlers.cancel_handler();
        let errors = handlers.error_handler();
        loop {
            let in_startup = matches!(
                socket.state(),
                PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
            );
            // A message may be no longer than the limit of the moment,
            // checked on its length field as soon as that has arrived,
            // before its body is buffered.
            let limit = if in_startup {
                MAX_MESSAGE_BYTES_BEFORE_LOGIN
            } else {
                state.settings.max_message_bytes
            };
            let typed = !matches!(socket.state(), PgWireConnectionState::AwaitingStartup);
            let next = futures::future::poll_fn(|cx| match socket.poll_next_unpin(cx) {
                std::task::Poll::Pending => match declared_length(socket.read_buffer(), typed) {
                    Some(length) if length > limit => std::task::Poll::Ready(Err(length)),
                    _ => std::task::Poll::Pending,
                },
                ready => std::task::Poll::Ready(Ok(ready)),
            });
            let message = if in_startup {
                tokio::select! {
                    _ = &mut deadline => {
                        tracing::info!(%peer, "connection closed: authentication did not finish within handshake-timeout-ms");
                        Ok(std::task::Poll::Ready(None))
                    }
                    m = next => m,
                }
            } else {
                next.await
            };
            let message = match message {
                Ok(std::task::Poll::Ready(Some(Ok(m)))) => m,
                Ok(std::task::Poll::Ready(Some(Err(e)))) => {
                    tracing::info!(%peer, "connection closed: malformed protocol message: {e}");
                    let refusal = fatal("08P01", format!("malformed protocol message: {e}; the connection is closed"));
                    let _ = process_error(&mut socket, refusal, false).await;
                    break;
                }
                Ok(_) => break,
                Err(length) => {
                    let (code, why) = if in_startup {
                        (
                            "08P01",
                            format!("a message of {length} bytes before authentication (at most {limit}); the connection is closed"),
                        )
                    } else {
                        (
                            "54000",
                            format!("a message of {length} bytes is over max-message-bytes = {limit}; send less at once (COPY ... FROM STDIN streams rows in pieces)"),
                        )
                    };
                    tracing::info!(%peer, "connection closed: {why}");
                    let _ = process_error(&mut socket, fatal(code, why), false).await;
                    break;
                }
            };
            if matches!(message, PgWireFrontendMessage::Terminate(_)) {
                break;
            }
            let extended_query = match socket.state() {
                PgWireConnectionState::CopyInProgress(e) => e,
                _ => message.is_extended_query(),
            };
            let is_cancel = matches!(message, PgWireFrontendMessage::CancelRequest(_));
            if is_cancel {
                // A cancel request is honoured only as securely as the
                // session it cancels was opened, and only so often.
                let over_tls = matches!(socket.get_ref(), MaybeTls::Tls(_));
                if !over_tls && state.settings.ssl_mode == SslMode::Required {
                    tracing::info!(%peer, "cancel request refused: it came in plaintext and ssl-mode = required (clients from libpq 17 send it over TLS)");
                    break;
                }
                if !state.cancel_budget.take(peer.ip()) {
                    tracing::info!(%peer, "cancel request refused: more than {} a second from this address", crate::admission::CANCELS_PER_SECOND_PER_ADDRESS);
                    break;
                }
            }
            if let Err(mut e) = process_message(
                message,
                &mut socket,
                startup.clone(),
                simple.clone(),
                extended.clone(),
                copy.clone(),
                cancel.clone(),
            )
            .await
            {
                errors.on_error(&socket, &mut e);
                let fatal = e.is_fatal();
                if process_error(&mut socket, e, extended_query).await.is_err() || fatal {
                    break;
                }
            }
            if is_cancel {
                break;
            }
            if doorway.is_some() && socket.session_extensions().get::<SessionSlot>().is_some() {
                doorway = None;
            }
        }
    })
    .catch_unwind()
    .await;
    if let Err(panic) = served {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        tracing::warn!(%peer, "connection closed: a malformed protocol message made its handling fail ({what})");
    }
    if let Some(slot) = socket.session_extensions().get::<SessionSlot>() {
        state.unregister_session(slot.id);
    }
}
