//! The KMIP client: mutual TLS to the first host of a group that answers,
//! one connection kept and reused, every round trip under a timeout.
//!
//! Failover: hosts are tried in the configured order, as DataStax HCD does
//! with `kmip_hosts`. A request goes to the next host when it could not be
//! sent at all (connect, handshake, or a connection found broken before the
//! request was written), and, for an operation that changes nothing on the
//! server (a read, Encrypt, Decrypt), also when the host stops answering
//! after it was sent (a network partition of a kept connection). Once sent,
//! a Create, Activate, Revoke or Destroy that fails is reported, so that
//! none is made twice.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use crate::message::{self, MAX_RESPONSE_BYTES, ProtocolVersion, QueryResult};

/// Encrypt and Decrypt with AES-GCM carry the tag and the additional data
/// from KMIP 1.4 on.
const AEAD: (&str, ProtocolVersion) = ("with AES-GCM and an authenticated tag", ProtocolVersion::new(1, 4));
use crate::spec::{Operation, tag};
use crate::ttlv::{self, HEADER_LEN, Item};
use crate::{KmipError, State};

/// How a client reaches a group of key servers.
#[derive(Clone)]
pub struct KmipClientConfig {
    /// `host:port`, tried in this order.
    pub hosts: Vec<String>,
    /// Mutual TLS: the client identity and the CAs that sign the servers.
    pub tls: Arc<rustls::ClientConfig>,
    /// Limit for connecting and for each round trip.
    pub timeout: Duration,
    /// A pinned version; `None` negotiates with Discover Versions.
    pub version: Option<ProtocolVersion>,
}

impl std::fmt::Debug for KmipClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmipClientConfig")
            .field("hosts", &self.hosts)
            .field("timeout", &self.timeout)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// What the client last saw of one host, for `sys.kmip_hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStatus {
    /// `host:port`.
    pub host: String,
    /// `ok`, `unreachable` or `never tried`.
    pub status: String,
    /// The last failure, if the last attempt failed.
    pub error: Option<String>,
    /// Unix seconds of the last successful round trip.
    pub last_success_unix: Option<u64>,
    /// Duration of the last successful round trip.
    pub latency: Option<Duration>,
}

struct Connection {
    host: String,
    stream: TlsStream<TcpStream>,
    version: ProtocolVersion,
    /// The versions the server listed in Discover Versions, if asked.
    offered: Vec<ProtocolVersion>,
}

/// What `sealdb kms test` shows of one host that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTest {
    /// `TLSv1_2 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384`, say.
    pub tls: String,
    /// The versions the server lists, its preferred first.
    pub offered: Vec<ProtocolVersion>,
    /// The version sealdb uses with it.
    pub version: ProtocolVersion,
    /// Its Query answer.
    pub query: QueryResult,
}

/// A KMIP client for one group of hosts.
pub struct KmipClient {
    config: KmipClientConfig,
    connection: Mutex<Option<Connection>>,
    hosts: std::sync::Mutex<Vec<HostStatus>>,
}

impl std::fmt::Debug for KmipClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmipClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The answer to one round trip.
struct Answer {
    host: String,
    payload: Item,
}

impl KmipClient {
    /// A client; nothing is connected until the first operation.
    pub fn new(mut config: KmipClientConfig) -> Result<Self, KmipError> {
        // Every connection makes a full handshake: connections are kept,
        // so resumption saves little, and some key servers (PyKMIP among
        // them) fail a resumed session's first request.
        let mut tls = (*config.tls).clone();
        tls.resumption = rustls::client::Resumption::disabled();
        config.tls = Arc::new(tls);
        if config.hosts.is_empty() {
            return Err(KmipError::Config("a KMIP group needs at least one host".into()));
        }
        for host in &config.hosts {
            split_host(host)?;
        }
        let hosts = config
            .hosts
            .iter()
            .map(|h| HostStatus {
                host: h.clone(),
                status: "never tried".into(),
                ..HostStatus::default()
            })
            .collect();
        Ok(Self {
            config,
            connection: Mutex::new(None),
            hosts: std::sync::Mutex::new(hosts),
        })
    }

    /// What the client last saw of each host.
    pub fn host_status(&self) -> Vec<HostStatus> {
        self.hosts.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The version in use with the connected host, if connected.
    pub async fn version(&self) -> Option<ProtocolVersion> {
        self.connection.lock().await.as_ref().map(|c| c.version)
    }

    /// The host connected to, if any.
    pub async fn connected_host(&self) -> Option<String> {
        self.connection.lock().await.as_ref().map(|c| c.host.clone())
    }

    /// Drops the connection; the next operation connects again.
    pub async fn disconnect(&self) {
        self.connection.lock().await.take();
    }

    /// Connects to each host in turn (not stopping at the first) and reports
    /// for each: the negotiated version and Query result, or the failure.
    pub async fn test_hosts(&self) -> Vec<(String, Result<HostTest, KmipError>)> {
        let mut out = Vec::new();
        for host in &self.config.hosts {
            let result = async {
                let mut conn = self.connect(host).await?;
                let (_, tls) = conn.stream.get_ref();
                let tls = format!(
                    "{} {}",
                    tls.protocol_version().and_then(|v| v.as_str()).unwrap_or("?"),
                    tls.negotiated_cipher_suite()
                        .and_then(|s| s.suite().as_str())
                        .unwrap_or("?")
                );
                if conn.offered.is_empty() {
                    conn.offered = discover(&mut conn, self.config.timeout).await?;
                }
                let payload = round_trip(
                    &mut conn,
                    Operation::Query,
                    message::query_payload(),
                    None,
                    self.config.timeout,
                )
                .await
                .map_err(RoundTripError::into_error)?;
                Ok(HostTest {
                    tls,
                    offered: conn.offered.clone(),
                    version: conn.version,
                    query: message::query_result(&payload),
                })
            }
            .await;
            self.record(host, result.as_ref().err().map(|e: &KmipError| e.to_string()), None);
            out.push((host.clone(), result));
        }
        out
    }

    /// Discover Versions with the connected host: the versions it lists.
    pub async fn discover_versions(&self) -> Result<Vec<ProtocolVersion>, KmipError> {
        let answer = self
            .call(Operation::DiscoverVersions, None, |_| {
                message::discover_versions_payload(&message::SUPPORTED)
            })
            .await?;
        Ok(message::discovered_versions(&answer.payload))
    }

    /// Query: the operations the server supports and its vendor.
    pub async fn query(&self) -> Result<QueryResult, KmipError> {
        let answer = self.call(Operation::Query, None, |_| message::query_payload()).await?;
        Ok(message::query_result(&answer.payload))
    }

    /// Create an AES-256 key (encrypt and decrypt) named `name`; returns
    /// its Unique Identifier. It is Pre-Active until [`Self::activate`].
    pub async fn create_aes256(&self, name: &str) -> Result<String, KmipError> {
        let answer = self
            .call(Operation::Create, None, |v| message::create_payload(v, name))
            .await?;
        message::unique_identifier(&answer.payload).ok_or_else(|| KmipError::Unexpected {
            host: answer.host,
            operation: Operation::Create.name(),
            detail: "no Unique Identifier".into(),
        })
    }

    /// Activate key `id`.
    pub async fn activate(&self, id: &str) -> Result<(), KmipError> {
        self.call(Operation::Activate, Some(id), |_| message::id_payload(id))
            .await?;
        Ok(())
    }

    /// Get the key material of symmetric key `id`.
    pub async fn get_key(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, KmipError> {
        let answer = self.call(Operation::Get, Some(id), |_| message::id_payload(id)).await?;
        message::key_material(&answer.payload).ok_or_else(|| KmipError::Unexpected {
            host: answer.host,
            operation: Operation::Get.name(),
            detail: format!("object {id} holds no raw symmetric key"),
        })
    }

    /// The state, names and dates of key `id`.
    pub async fn attributes(&self, id: &str) -> Result<message::KeyAttributes, KmipError> {
        let answer = self
            .call(Operation::GetAttributes, Some(id), |v| {
                message::get_attributes_payload(v, id)
            })
            .await?;
        Ok(message::key_attributes(&answer.payload))
    }

    /// The state of key `id`.
    pub async fn state(&self, id: &str) -> Result<State, KmipError> {
        let attributes = self.attributes(id).await?;
        attributes.state.ok_or_else(|| KmipError::Unexpected {
            host: self.config.hosts.first().cloned().unwrap_or_default(),
            operation: Operation::GetAttributes.name(),
            detail: format!("no State for object {id}"),
        })
    }

    /// Every object this client may see (the key server decides: usually
    /// those its certificate's identity owns).
    pub async fn locate_all(&self) -> Result<Vec<String>, KmipError> {
        let answer = self.call(Operation::Locate, None, message::locate_all_payload).await?;
        Ok(message::located(&answer.payload))
    }

    /// The identifiers of objects named `name`.
    pub async fn locate(&self, name: &str) -> Result<Vec<String>, KmipError> {
        let answer = self
            .call(Operation::Locate, None, |v| message::locate_payload(v, name))
            .await?;
        Ok(message::located(&answer.payload))
    }

    /// AES-GCM encryption of `data` under key `id` with `nonce` (12 bytes)
    /// and `aad`, on the key server; returns the ciphertext and the tag.
    pub async fn encrypt_gcm(
        &self,
        id: &str,
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), KmipError> {
        let answer = self
            .call_needing(Operation::Encrypt, Some(id), Some(AEAD), |_| {
                message::encrypt_payload(id, data, nonce, aad)
            })
            .await?;
        let unexpected = |detail: &str| KmipError::Unexpected {
            host: answer.host.clone(),
            operation: Operation::Encrypt.name(),
            detail: detail.to_owned(),
        };
        let ciphertext = message::bytes(&answer.payload, tag::DATA).ok_or_else(|| unexpected("no Data"))?;
        let gcm_tag = message::bytes(&answer.payload, tag::AUTHENTICATED_ENCRYPTION_TAG)
            .ok_or_else(|| unexpected("no Authenticated Encryption Tag"))?;
        if gcm_tag.len() != 16 || ciphertext.len() != data.len() {
            return Err(unexpected("the ciphertext or tag has the wrong length"));
        }
        Ok((ciphertext.to_vec(), gcm_tag.to_vec()))
    }

    /// AES-GCM decryption on the key server; fails when the tag does not
    /// authenticate the ciphertext and `aad`.
    pub async fn decrypt_gcm(
        &self,
        id: &str,
        ciphertext: &[u8],
        nonce: &[u8],
        aad: &[u8],
        gcm_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KmipError> {
        let answer = self
            .call_needing(Operation::Decrypt, Some(id), Some(AEAD), |_| {
                message::decrypt_payload(id, ciphertext, nonce, aad, gcm_tag)
            })
            .await?;
        message::bytes(&answer.payload, tag::DATA)
            .map(|b| Zeroizing::new(b.to_vec()))
            .ok_or_else(|| KmipError::Unexpected {
                host: answer.host,
                operation: Operation::Decrypt.name(),
                detail: "no Data".into(),
            })
    }

    /// Revoke key `id`: Deactivated, or Compromised when `compromised`.
    pub async fn revoke(&self, id: &str, compromised: bool) -> Result<(), KmipError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.call(Operation::Revoke, Some(id), |_| {
            message::revoke_payload(id, compromised, now)
        })
        .await?;
        Ok(())
    }

    /// Destroy key `id`.
    pub async fn destroy(&self, id: &str) -> Result<(), KmipError> {
        self.call(Operation::Destroy, Some(id), |_| message::id_payload(id))
            .await?;
        Ok(())
    }

    /// One operation on the connected host, connecting (with failover) first
    /// if needed.
    async fn call(
        &self,
        operation: Operation,
        object: Option<&str>,
        payload: impl Fn(ProtocolVersion) -> Vec<Item>,
    ) -> Result<Answer, KmipError> {
        self.call_needing(operation, object, None, payload).await
    }

    /// As [`Self::call`], refused before anything is sent when the
    /// connection's version is older than `needs` (a feature, the version).
    async fn call_needing(
        &self,
        operation: Operation,
        object: Option<&str>,
        needs: Option<(&'static str, ProtocolVersion)>,
        payload: impl Fn(ProtocolVersion) -> Vec<Item>,
    ) -> Result<Answer, KmipError> {
        let mut slot = self.connection.lock().await;
        // A request that changes the server goes over a fresh connection:
        // a kept one the server closed meanwhile is only found out after
        // the request was written, when the server may or may not have
        // carried it out, and such a request is never sent twice.
        if !operation.is_idempotent() {
            slot.take();
        }
        // A host that stopped answering an idempotent request, and why.
        let mut gave_up: Option<(String, String)> = None;
        // A kept connection may have been closed by the server meanwhile;
        // that is found when writing, before anything was sent, so the
        // request goes once more over a fresh connection.
        for attempt in 0..3 {
            if slot.is_none() {
                *slot = Some(self.connect_any(gave_up.as_ref()).await?);
            }
            let Some(conn) = slot.as_mut() else {
                continue;
            };
            let started = Instant::now();
            let host = conn.host.clone();
            let version = conn.version;
            if let Some((what, needed)) = needs
                && version < needed
            {
                return Err(KmipError::VersionTooOld {
                    host,
                    operation: operation.name(),
                    what,
                    speaks: version.to_string(),
                    needs: needed.to_string(),
                });
            }
            match round_trip(conn, operation, payload(version), object, self.config.timeout).await {
                Ok(payload) => {
                    self.record(&host, None, Some(started.elapsed()));
                    return Ok(Answer { host, payload });
                }
                Err(RoundTripError::NotSent(_)) if attempt == 0 => {
                    slot.take();
                }
                Err(e) => {
                    let e = e.into_error();
                    if matches!(e, KmipError::Failed { .. }) {
                        // The server answered: the request was refused.
                        self.record(&host, None, Some(started.elapsed()));
                        return Err(e);
                    }
                    // The connection is in an unknown state.
                    slot.take();
                    self.record(&host, Some(e.to_string()), None);
                    if operation.is_idempotent() && gave_up.is_none() && self.config.hosts.len() > 1 {
                        gave_up = Some((host, e.to_string()));
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(KmipError::Unreachable { tried: Vec::new() })
    }

    /// A connection to the first host that answers, in the configured
    /// order; `without` (a host that just stopped answering, and why) is
    /// not tried again, and is named among the hosts tried.
    async fn connect_any(&self, without: Option<&(String, String)>) -> Result<Connection, KmipError> {
        let mut tried: Vec<(String, String)> = without.into_iter().cloned().collect();
        for host in &self.config.hosts {
            if without.is_some_and(|(h, _)| h == host) {
                continue;
            }
            match self.connect(host).await {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    self.record(host, Some(e.to_string()), None);
                    tried.push((host.clone(), e.to_string()));
                }
            }
        }
        Err(KmipError::Unreachable { tried })
    }

    /// TCP, TLS, then the version: pinned, or the first of the server's
    /// Discover Versions list that sealdb speaks.
    async fn connect(&self, host: &str) -> Result<Connection, KmipError> {
        let (name, _) = split_host(host)?;
        let timeout = self.config.timeout;
        let transport = |detail: String| KmipError::Transport {
            host: host.to_owned(),
            operation: "connect",
            detail,
        };
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| KmipError::Config(format!("{host}: not a valid host name: {e}")))?;
        let connector = TlsConnector::from(self.config.tls.clone());
        let stream = tokio::time::timeout(timeout, async {
            let tcp = TcpStream::connect(host).await.map_err(|e| transport(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| transport(format!("TLS handshake failed: {e}{}", tls_hint(&e))))
        })
        .await
        .map_err(|_| transport(format!("no answer within {} ms", timeout.as_millis())))??;
        let mut conn = Connection {
            host: host.to_owned(),
            stream,
            version: self.config.version.unwrap_or(ProtocolVersion::new(1, 0)),
            offered: Vec::new(),
        };
        if self.config.version.is_none() {
            // Discover Versions exists since KMIP 1.1; ask in 1.1 form.
            conn.version = ProtocolVersion::new(1, 1);
            let offered = discover(&mut conn, timeout).await?;
            conn.offered = offered.clone();
            conn.version = offered
                .iter()
                .copied()
                .find(|v| message::SUPPORTED.contains(v))
                .ok_or_else(|| KmipError::NoCommonVersion {
                    host: host.to_owned(),
                    offered: offered.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "),
                    supported: message::supported_list(),
                })?;
        }
        Ok(conn)
    }

    fn record(&self, host: &str, error: Option<String>, latency: Option<Duration>) {
        let Ok(mut hosts) = self.hosts.lock() else {
            return;
        };
        if let Some(h) = hosts.iter_mut().find(|h| h.host == host) {
            match error {
                Some(e) => {
                    h.status = "unreachable".into();
                    h.error = Some(e);
                }
                None => {
                    h.status = "ok".into();
                    h.error = None;
                    h.last_success_unix = SystemTime::now().duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
                    if latency.is_some() {
                        h.latency = latency;
                    }
                }
            }
        }
    }
}

enum RoundTripError {
    /// Nothing of the request reached the server.
    NotSent(KmipError),
    /// The request was sent (or partly): its outcome is unknown or failed.
    Sent(KmipError),
}

impl RoundTripError {
    fn into_error(self) -> KmipError {
        match self {
            Self::NotSent(e) | Self::Sent(e) => e,
        }
    }
}

async fn round_trip(
    conn: &mut Connection,
    operation: Operation,
    payload: Vec<Item>,
    object: Option<&str>,
    timeout: Duration,
) -> Result<Item, RoundTripError> {
    let host = conn.host.clone();
    let transport = |detail: String| KmipError::Transport {
        host: host.clone(),
        operation: operation.name(),
        detail,
    };
    // After the request left, a failure leaves unknown whether the server
    // carried it out: said so for a request that is then not sent again.
    let after_sending = |detail: String| {
        if operation.is_idempotent() {
            transport(detail)
        } else {
            transport(format!(
                "{detail}; the request may have been carried out, so it is not sent again: check the key server"
            ))
        }
    };
    let request = message::request(conn.version, operation, payload).to_bytes();
    let request = Zeroizing::new(request);
    let write = tokio::time::timeout(timeout, async {
        conn.stream.write_all(&request).await?;
        conn.stream.flush().await
    })
    .await;
    match write {
        Err(_) => {
            return Err(RoundTripError::Sent(after_sending(format!(
                "sending took over {} ms",
                timeout.as_millis()
            ))));
        }
        // A broken pipe or reset on write: the server had closed the kept
        // connection, so nothing reached it.
        Ok(Err(e)) if is_stale(&e) => return Err(RoundTripError::NotSent(transport(e.to_string()))),
        Ok(Err(e)) => return Err(RoundTripError::Sent(after_sending(e.to_string()))),
        Ok(Ok(())) => {}
    }
    let response = tokio::time::timeout(timeout, read_message(&mut conn.stream))
        .await
        .map_err(|_| RoundTripError::Sent(after_sending(format!("no answer within {} ms", timeout.as_millis()))))?;
    let bytes = match response {
        Ok(bytes) => bytes,
        // The server closed the connection without answering: a kept
        // connection it had closed before reading the request, or a server
        // that carried the request out and then went away. Only a request
        // that changes nothing may be sent again.
        Err(ReadError::Closed) if operation.is_idempotent() => {
            return Err(RoundTripError::NotSent(transport("the connection was closed".into())));
        }
        Err(ReadError::Closed) => {
            return Err(RoundTripError::Sent(after_sending(
                "the connection was closed before an answer came".into(),
            )));
        }
        Err(ReadError::Io(e)) => return Err(RoundTripError::Sent(after_sending(e.to_string()))),
        Err(ReadError::TooLarge(n)) => {
            return Err(RoundTripError::Sent(transport(format!(
                "a response of {n} bytes is over the {MAX_RESPONSE_BYTES}-byte limit"
            ))));
        }
    };
    let message = Item::decode(&bytes).map_err(RoundTripError::Sent)?;
    message::response_payload(&message, operation, &conn.host, object).map_err(RoundTripError::Sent)
}

/// Discover Versions on `conn`: the versions the server lists, its
/// preferred first.
async fn discover(conn: &mut Connection, timeout: Duration) -> Result<Vec<ProtocolVersion>, KmipError> {
    let payload = round_trip(
        conn,
        Operation::DiscoverVersions,
        message::discover_versions_payload(&message::SUPPORTED),
        None,
        timeout,
    )
    .await
    .map_err(RoundTripError::into_error)?;
    Ok(message::discovered_versions(&payload))
}

fn is_stale(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
    )
}

enum ReadError {
    /// End of stream before the first byte of a response.
    Closed,
    Io(std::io::Error),
    TooLarge(usize),
}

async fn read_message(stream: &mut TlsStream<TcpStream>) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = stream.read(&mut header[got..]).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(if got == 0 {
                ReadError::Closed
            } else {
                ReadError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        got += n;
    }
    let total = ttlv::total_len(&header);
    if total > MAX_RESPONSE_BYTES + HEADER_LEN {
        return Err(ReadError::TooLarge(total));
    }
    let mut bytes = Zeroizing::new(vec![0u8; total]);
    bytes[..HEADER_LEN].copy_from_slice(&header);
    stream
        .read_exact(&mut bytes[HEADER_LEN..])
        .await
        .map_err(ReadError::Io)?;
    Ok(bytes)
}

/// `host` and `port` of `host:port` (`[v6]:port` too).
fn split_host(host: &str) -> Result<(&str, u16), KmipError> {
    let (name, port) = host
        .rsplit_once(':')
        .ok_or_else(|| KmipError::Config(format!("KMIP host {host:?} needs a port, for example {host}:5696")))?;
    let port = port
        .parse()
        .map_err(|_| KmipError::Config(format!("KMIP host {host:?}: {port:?} is not a port number")))?;
    Ok((name.trim_start_matches('[').trim_end_matches(']'), port))
}

/// What a failed handshake means for the operator, from rustls's error.
fn tls_hint(e: &std::io::Error) -> &'static str {
    use rustls::{AlertDescription, CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(
            CertificateError::BadSignature | CertificateError::UnknownIssuer | CertificateError::BadEncoding,
        )) => {
            " (the key server's certificate is not signed by the CA sealdb trusts for it: check ca, truststore or ssl-trust-ca-server)"
        }
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => " (the key server's certificate does not name this host: use the name it was issued for in hosts)",
        Some(Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
            " (the key server's certificate has expired: renew it on the key server)"
        }
        Some(Error::AlertReceived(
            AlertDescription::UnknownCA | AlertDescription::BadCertificate | AlertDescription::CertificateUnknown,
        )) => {
            " (the key server refused sealdb's client certificate: it must be signed by a CA the key server trusts; check client-cert or keystore)"
        }
        Some(Error::AlertReceived(AlertDescription::CertificateExpired)) => {
            " (the key server says a certificate expired: renew sealdb's client certificate)"
        }
        Some(Error::AlertReceived(AlertDescription::CertificateRevoked)) => {
            " (the key server says sealdb's client certificate is revoked: issue a new one)"
        }
        Some(Error::AlertReceived(AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion)) => {
            " (no TLS version or cipher suite in common: sealdb offers TLS 1.2 and 1.3 with AES-GCM and ChaCha20)"
        }
        _ => "",
    }
}
