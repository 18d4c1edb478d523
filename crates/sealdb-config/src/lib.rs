//! sealdb configuration.
//!
//! One struct, [`Settings`], is both the TOML file's schema and the
//! `sealdb start` flags, so every key has the same name as its flag by
//! construction: `--ssl-cert X` and `ssl-cert = "X"` mean the same, and the
//! flag wins ([`Settings::merged_over`]). Unknown keys and bad values are
//! refused with the key and the line.
//!
//! This crate only parses; what a value means (loading files, checking
//! certificates) is up to the crates that use it.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A configuration error: which file, which key, what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write config file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for sealdb (unknown key, bad value).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the line, the key and what was expected.
        message: String,
    },
    /// A value is inconsistent with another one.
    #[error("{0}")]
    Invalid(String),
}

/// `"512 MB"` as `(512, "mb")`: leading digits, then the rest trimmed and
/// in lower case; `None` without digits or beyond `u64`.
fn number_and_unit(text: &str) -> Option<(u64, String)> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    Some((digits.parse().ok()?, unit.trim().to_ascii_lowercase()))
}

/// Parses a byte size such as `512MB`, `2GB`, `1GiB`, `64kB` or `1048576`
/// (KB/MB/GB/TB are powers of 1024, as in PostgreSQL's settings).
pub fn parse_byte_size(key: &str, text: &str) -> Result<u64, ConfigError> {
    let invalid = || {
        ConfigError::Invalid(format!(
            "{key} = \"{text}\" is not a size; write a whole number with an optional unit, e.g. 512MB or 2GB"
        ))
    };
    let (number, unit) = number_and_unit(text).ok_or_else(invalid)?;
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(invalid()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(invalid)
}

/// Parses a duration such as `90d`, `12h`, `30m`, `45s` or `500ms` (also
/// `w` for weeks); a bare number is seconds.
pub fn parse_duration(key: &str, text: &str) -> Result<std::time::Duration, ConfigError> {
    let invalid = || {
        ConfigError::Invalid(format!(
            "{key} = \"{text}\" is not a duration; write a whole number with a unit, e.g. 90d, 12h, 30m, 45s or 500ms"
        ))
    };
    let (number, unit) = number_and_unit(text).ok_or_else(invalid)?;
    let millis_per = match unit.as_str() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => return Err(invalid()),
    };
    let millis = number.checked_mul(millis_per).ok_or_else(invalid)?;
    if millis == 0 {
        return Err(ConfigError::Invalid(format!(
            "{key} = \"{text}\": give a duration above zero"
        )));
    }
    Ok(std::time::Duration::from_millis(millis))
}

/// A password or passphrase: never printed by `Debug`, wiped from memory on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret text, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// How TLS is required of clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Only TLS connections (the default).
    #[default]
    Required,
    /// TLS and plaintext, for migrating clients; reported by sys.security_status.
    Allowed,
    /// No TLS at all; refused unless `insecure = true` as well.
    Disabled,
}

/// A node's part in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// One process serving clients with its own data (the default).
    #[default]
    Single,
    /// Serves clients and owns the catalog, log, keys and writes; plans
    /// queries over its leaves.
    Aggregator,
    /// Stateless compute for an aggregator, on the node port only: no
    /// catalog, no master key, no log.
    Leaf,
}

/// Encryption of new tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TableEncryption {
    /// AES-256-GCM (the default).
    #[default]
    #[serde(rename = "aes-256-gcm")]
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    /// No encryption; reported by sys.security_status.
    None,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OnOff {
    /// Enabled.
    #[default]
    On,
    /// Disabled.
    Off,
}

/// One `[kmip_hosts.GROUP]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KmipGroup {
    /// `host:port` entries, tried in order.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// CA bundle of the KMIP servers.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM).
    pub client_key: Option<PathBuf>,
    /// Client PKCS#12 keystore.
    pub keystore: Option<PathBuf>,
    /// Its password.
    pub keystore_password: Option<Secret>,
    /// Its password, from a file.
    pub keystore_password_file: Option<PathBuf>,
    /// PKCS#12 trust store.
    pub truststore: Option<PathBuf>,
    /// Its password.
    pub truststore_password: Option<Secret>,
    /// Its password, from a file.
    pub truststore_password_file: Option<PathBuf>,
    /// `1.4` (the default), `1.2` or `2.0`.
    pub kmip_version: Option<String>,
    /// Timeout of one request.
    pub timeout_ms: Option<u64>,
    /// How long unwrapped keys stay cached.
    pub key_cache_ms: Option<u64>,
    /// How long past expiry a cached key may serve while the server is down.
    pub key_cache_grace_ms: Option<u64>,
    /// `wrap` (keys never leave the KMIP server) or `get`.
    pub mode: Option<String>,
}

/// Every setting of `sealdb start`, as flags and as TOML keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Data directory [default: ./sealdb-data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port to listen on [default: 5433].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,

    /// Server certificate chain, PEM, leaf first [default: DATA/certs/node.crt].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_cert: Option<PathBuf>,
    /// Server private key, PEM, mode 0600 [default: DATA/certs/node.key].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_private_key: Option<PathBuf>,
    /// Server certificate and key as one PKCS#12 file (instead of ssl-cert and ssl-private-key).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_keystore: Option<PathBuf>,
    /// Password of ssl-keystore: in the config file only (refused as a
    /// flag); or ssl-keystore-password-file, or SEALDB_SSL_KEYSTORE_PASSWORD.
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_keystore_password: Option<Secret>,
    /// File holding the password of ssl-keystore.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_keystore_password_file: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to [default: DATA/certs/ca.crt].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_trust_ca: Option<PathBuf>,
    /// The same as a PKCS#12 trust store.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_trust_store: Option<PathBuf>,
    /// Password of ssl-trust-store: in the config file only (refused as a
    /// flag); or ssl-trust-password-file, or SEALDB_SSL_TRUST_PASSWORD.
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_trust_password: Option<Secret>,
    /// File holding the password of ssl-trust-store.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_trust_password_file: Option<PathBuf>,
    /// CA bundle this node trusts when it is the client (KMIP servers, other nodes).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_trust_ca_server: Option<PathBuf>,
    /// CRL files (PEM); revoked client certificates are refused. Repeatable.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssl_crl: Vec<PathBuf>,
    /// When a CRL is past its next update: allow (default: certificates are
    /// accepted, with a warning and a finding) or refuse.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_crl_expired: Option<String>,
    /// required (default), allowed (TLS optional) or disabled (needs --insecure).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<SslMode>,
    /// Lowest TLS version: 1.2 (default) or 1.3.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_min_version: Option<String>,
    /// Allowed cipher suites, comma-separated (IANA names).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssl_cipher_suites: Vec<String>,
    /// true: every client must present a verified certificate, which names the user.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pki_db_client_auth: Option<bool>,
    /// Certificate-to-user rules "FIELD REGEX USER" (FIELD: cn, subject, san, email, dns). Repeatable.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_user_map: Vec<String>,

    /// aes-256-gcm (default) or none.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_table_encryption: Option<TableEncryption>,
    /// local (default) or kmip:GROUP.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_provider: Option<String>,
    /// Passphrase file sealing the local master key (or SEALDB_KEYSTORE_PASSWORD).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keystore_password_file: Option<PathBuf>,
    /// KMIP server groups (config file only).
    #[arg(skip)]
    #[serde(default, rename = "kmip_hosts", skip_serializing_if = "BTreeMap::is_empty")]
    pub kmip_hosts: BTreeMap<String, KmipGroup>,
    /// Rotate table keys this often, e.g. "90d".
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_rotation_period: Option<String>,
    /// Bytes of old files ALTER TABLE ... REKEY rewrites per second, at most, e.g. "64MB" (0: no limit) [default: 8MB].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rekey_max_bytes_per_sec: Option<String>,
    /// true: keep older table-key versions after a REKEY (by default they are destroyed).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_old_keys: Option<bool>,
    /// Query memory before spilling, e.g. "2GB".
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// on (default) or off.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<OnOff>,
    /// Most concurrent sessions (authenticated connections) [default: 200].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Of max-connections, the slots only administrators may take [default: 3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superuser_reserved_connections: Option<u32>,
    /// Most connections still negotiating TLS or logging in [default: 256].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unauthenticated_connections: Option<u32>,
    /// Of those, the most from one client address [default: 64].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unauthenticated_per_address: Option<u32>,
    /// The longest message an authenticated client may send, e.g. "64MB"
    /// (before authentication: 16 KB) [default: 64MB].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<String>,
    /// Rows a transaction (or a COPY) holds in memory per table before it
    /// writes them to an encrypted segment file, e.g. "16MB" [default: 16MB].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_spill_bytes: Option<String>,
    /// single (default), aggregator or leaf.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Port of the node channel, between the nodes of a cluster [default: 5434].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// This node's certificate for the node channel, PEM, leaf first (made
    /// with `sealdb cert create-node HOST... --cluster ID --name NAME`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_cert: Option<PathBuf>,
    /// Its private key, PEM, mode 0600.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_key: Option<PathBuf>,
    /// CA bundle of node certificates (two CAs during a rollover).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_ca: Option<PathBuf>,
    /// CRL files of node certificates. Repeatable.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_crl: Vec<PathBuf>,
    /// Failed logins from one address after the first within this time are
    /// counted into one audit record, e.g. "60s" [default: 60s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_failed_login_interval: Option<String>,
    /// Time a client has to finish TLS and authentication [default: 5000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_ms: Option<u64>,
    /// Allow ssl-mode = disabled. Plaintext exposes passwords and data.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
}

impl Settings {
    /// Refuses passwords given as command-line flags: every user of the
    /// machine reads a process's command line (`/proc/PID/cmdline`, `ps`).
    /// The message names the key, never the value.
    pub fn refuse_secrets_as_flags(&self) -> Result<(), ConfigError> {
        for (given, key, env) in [
            (
                self.ssl_keystore_password.is_some(),
                "ssl-keystore-password",
                "SEALDB_SSL_KEYSTORE_PASSWORD",
            ),
            (
                self.ssl_trust_password.is_some(),
                "ssl-trust-password",
                "SEALDB_SSL_TRUST_PASSWORD",
            ),
        ] {
            if given {
                return Err(ConfigError::Invalid(format!(
                    "--{key} is refused: a password on the command line is visible to every user of this machine \
                     (ps, /proc/PID/cmdline); give it with --{key}-file, the environment variable {env}, or in the \
                     config file (mode 0600)"
                )));
            }
        }
        Ok(())
    }

    /// Parses TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// These settings (flags) over `file`: every key set here wins.
    pub fn merged_over(&self, file: &Settings) -> Result<Settings, ConfigError> {
        let to_table = |s: &Settings| {
            toml::Table::try_from(s).map_err(|e| ConfigError::Invalid(format!("cannot merge settings: {e}")))
        };
        let mut merged = to_table(file)?;
        for (key, value) in to_table(self)? {
            merged.insert(key, value);
        }
        merged
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(format!("cannot merge settings: {e}")))
    }

    /// Renders as TOML (for `kms set` and for showing the effective config).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(format!("cannot render settings: {e}")))
    }
}

/// Writes `[kmip_hosts.NAME]` into the config file at `path` (created,
/// mode 0600, if missing), replacing that section and keeping every other
/// key and comment. The result must still be a valid sealdb config, or
/// nothing is written.
pub fn set_kmip_group(path: &Path, name: &str, group: &KmipGroup) -> Result<(), ConfigError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ConfigError::Invalid(format!(
            "KMIP group name {name:?}: use letters, digits, '-' and '_'"
        )));
    }
    let section = toml::to_string(group).map_err(|e| ConfigError::Invalid(format!("cannot render the group: {e}")))?;
    let section = parse_document(path, &section)?.as_table().clone();
    rewrite(path, |doc| {
        let hosts = doc
            .entry("kmip_hosts")
            .or_insert(toml_edit::table())
            .as_table_mut()
            .ok_or_else(|| ConfigError::Parse {
                path: path.to_path_buf(),
                message: "kmip_hosts is not a table".into(),
            })?;
        hosts.set_implicit(true);
        hosts.insert(name, toml_edit::Item::Table(section));
        Ok(())
    })
}

/// Sets `key-provider` in the config file at `path` (created if missing),
/// keeping the rest of the file, its comments and layout.
pub fn set_key_provider(path: &Path, provider: &str) -> Result<(), ConfigError> {
    rewrite(path, |doc| {
        // A top-level key goes before the first table, where TOML wants it.
        doc.insert("key-provider", toml_edit::value(provider));
        Ok(())
    })
}

fn parse_document(path: &Path, text: &str) -> Result<toml_edit::DocumentMut, ConfigError> {
    text.parse::<toml_edit::DocumentMut>().map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads the config file at `path` (empty if missing), changes it, checks
/// that the result is a valid config, and replaces the file atomically
/// (mode 0600).
fn rewrite(
    path: &Path,
    change: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut doc = parse_document(path, &text)?;
    change(&mut doc)?;
    let out = doc.to_string();
    Settings::from_toml(&out, path)?;
    let write_err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("conf.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        file.write_all(out.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write_err)?;
    }
    std::fs::rename(&tmp, path).map_err(write_err)
}

/// Secrets of `SEALDB_*PASSWORD*` environment variables, taken at start by
/// [`capture_secret_environment`] so that the variables can be wiped.
static SECRET_ENVIRONMENT: std::sync::Mutex<BTreeMap<String, Secret>> = std::sync::Mutex::new(BTreeMap::new());

/// Whether the environment variable `name` holds a secret sealdb reads.
pub fn is_secret_variable(name: &str) -> bool {
    name.starts_with("SEALDB_") && name.contains("PASSWORD")
}

/// Keeps the values of the secret environment variables
/// ([`is_secret_variable`]) for [`read_secret`], and returns their names,
/// for the caller to wipe from the process's environment (readable by the
/// same user, and by anything the process starts).
pub fn capture_secret_environment() -> Vec<String> {
    let mut names = Vec::new();
    let Ok(mut captured) = SECRET_ENVIRONMENT.lock() else {
        return names;
    };
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        if is_secret_variable(name) {
            captured.insert(name.to_owned(), Secret(value.to_owned()));
            names.push(name.to_owned());
        }
    }
    names
}

/// Reads a secret: the direct value, else the `*-file` key, else the
/// environment variable (as captured at start, or as it is now). The
/// file's trailing newline is dropped.
pub fn read_secret(direct: Option<&str>, file: Option<&Path>, env_var: &str) -> Result<Option<String>, ConfigError> {
    if let Some(v) = direct {
        return Ok(Some(v.to_owned()));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
    }
    if let Some(value) = SECRET_ENVIRONMENT.lock().ok().and_then(|c| c.get(env_var).cloned()) {
        return Ok(Some(value.expose().to_owned()));
    }
    Ok(std::env::var(env_var).ok())
}

/// Entry points of the fuzz targets (`fuzz/fuzz_targets/`), which the test
/// suite also replays over the committed corpus; not a stable API.
#[doc(hidden)]
pub mod internal {
    use std::path::Path;

    use crate::{Settings, parse_byte_size, parse_duration};

    /// The config parser on any text: a config or an error; a config
    /// renders back to TOML that parses to the same keys, and merges.
    pub fn fuzz_config(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let _ = parse_byte_size("memory-limit", text);
        let _ = parse_duration("key-rotation-period", text);
        let Ok(settings) = Settings::from_toml(text, Path::new("fuzz.toml")) else {
            return;
        };
        let rendered = settings.to_toml().expect("a parsed config renders");
        let again = Settings::from_toml(&rendered, Path::new("rendered.toml")).expect("a rendered config parses");
        assert_eq!(again.to_toml().expect("renders"), rendered, "rendering is not stable");
        let _ = Settings::default().merged_over(&settings);
    }
}

#[cfg(test)]
mod kmip_set_tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    #[test]
    fn kms_set_writes_its_section_and_keeps_every_other_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealdb.conf");
        std::fs::write(
            &path,
            "# my settings\nport = 5433\n\n[kmip_hosts.old]\nhosts = [\"a:1\"]\n",
        )
        .unwrap();
        let group = KmipGroup {
            hosts: vec!["k1:5696".into(), "k2:5696".into()],
            mode: Some("wrap".into()),
            timeout_ms: Some(500),
            ..KmipGroup::default()
        };
        set_kmip_group(&path, "hsm", &group).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# my settings\nport = 5433\n"), "{text}");
        let settings = Settings::from_file(&path).unwrap();
        assert_eq!(settings.kmip_hosts["hsm"], group);
        assert_eq!(settings.kmip_hosts["old"].hosts, vec!["a:1".to_owned()]);
        // Setting it again replaces it.
        let again = KmipGroup {
            hosts: vec!["k3:5696".into()],
            ..KmipGroup::default()
        };
        set_kmip_group(&path, "hsm", &again).unwrap();
        assert_eq!(Settings::from_file(&path).unwrap().kmip_hosts["hsm"], again);
        assert!(set_kmip_group(&path, "bad name", &again).is_err());
        // A file that is not valid stays as it was.
        std::fs::write(&path, "port = \"x\"\n").unwrap();
        assert!(set_kmip_group(&path, "hsm", &again).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "port = \"x\"\n");
    }

    #[test]
    fn durations_take_a_unit_and_refuse_zero_and_nonsense() {
        use std::time::Duration;
        assert_eq!(parse_duration("k", "90d").unwrap(), Duration::from_secs(90 * 86_400));
        assert_eq!(parse_duration("k", "12h").unwrap(), Duration::from_secs(12 * 3_600));
        assert_eq!(parse_duration("k", " 30m ").unwrap(), Duration::from_secs(1_800));
        assert_eq!(parse_duration("k", "45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("k", "500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("k", "2w").unwrap(), Duration::from_secs(14 * 86_400));
        for bad in ["", "0d", "d", "-1d", "3 fortnights", "99999999999999999999d"] {
            let e = parse_duration("key-rotation-period", bad).unwrap_err().to_string();
            assert!(e.contains("key-rotation-period"), "{bad}: {e}");
        }
    }

    #[test]
    fn set_key_provider_puts_the_key_at_the_top_level_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealdb.conf");
        std::fs::write(
            &path,
            "# my settings\nport = 5433\n\n[kmip_hosts.hsm]\nhosts = [\"a:1\"]\n",
        )
        .unwrap();
        set_key_provider(&path, "kmip:hsm").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# my settings\nport = 5433\n"), "{text}");
        let settings = Settings::from_file(&path).unwrap();
        assert_eq!(settings.key_provider.as_deref(), Some("kmip:hsm"));
        assert_eq!(settings.kmip_hosts["hsm"].hosts, vec!["a:1".to_owned()]);
        set_key_provider(&path, "local").unwrap();
        assert_eq!(
            Settings::from_file(&path).unwrap().key_provider.as_deref(),
            Some("local")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Path::new("sealdb.conf"))
    }

    #[test]
    fn byte_sizes_take_units_and_refuse_garbage() {
        assert_eq!(parse_byte_size("memory-limit", "512MB").unwrap(), 512 << 20);
        assert_eq!(parse_byte_size("memory-limit", "2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_byte_size("memory-limit", "4096").unwrap(), 4096);
        let e = parse_byte_size("memory-limit", "lots").unwrap_err().to_string();
        assert!(e.contains("memory-limit") && e.contains("512MB"), "{e}");
        assert!(parse_byte_size("memory-limit", "2PB").is_err());
        assert!(parse_byte_size("memory-limit", "99999999999TB").is_err());
    }

    #[test]
    fn keys_use_the_flag_names() {
        let s = parse("port = 6000\nssl-cert = \"a.crt\"\nssl-mode = \"allowed\"\npki-db-client-auth = true\ncert-user-map = [\"cn (.*) $1\"]\n").unwrap();
        assert_eq!(s.port, Some(6000));
        assert_eq!(s.ssl_cert.as_deref(), Some(Path::new("a.crt")));
        assert_eq!(s.ssl_mode, Some(SslMode::Allowed));
        assert_eq!(s.pki_db_client_auth, Some(true));
        assert_eq!(s.cert_user_map.len(), 1);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name_and_line() {
        let err = parse("port = 6000\n\nssl-certificate = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ssl-certificate"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_value_is_refused_with_the_allowed_values_and_line() {
        let err = parse("ssl-mode = \"sometimes\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("required"), "{err}");
        let err = parse("\nport = \"high\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = parse("port = 6000\nhost = \"0.0.0.0\"\n").unwrap();
        let flags = Settings {
            port: Some(7000),
            ..Default::default()
        };
        let merged = flags.merged_over(&file).unwrap();
        assert_eq!(merged.port, Some(7000));
        assert_eq!(merged.host.as_deref(), Some("0.0.0.0"));
    }

    #[test]
    fn kmip_groups_parse_and_reject_unknown_keys() {
        let s = parse("[kmip_hosts.hsm]\nhosts = [\"k1:5696\"]\ntimeout-ms = 500\n").unwrap();
        assert_eq!(s.kmip_hosts["hsm"].timeout_ms, Some(500));
        assert!(parse("[kmip_hosts.hsm]\nhostz = []\n").is_err());
    }
}
