//! `sealdb kms`: set up and look at the KMIP key servers of
//! `[kmip_hosts.GROUP]`.
//!
//! - `set GROUP --hosts ...` writes the group's section into the config
//!   file, keeping the rest of the file.
//! - `test GROUP` connects to every host of the group (not stopping at the
//!   first) and shows the TLS version and cipher, the KMIP versions the
//!   server lists and the one sealdb uses, and whether it supports every
//!   operation sealdb needs.
//! - `list-keys` prints the key server's objects that belong to this
//!   installation (id, name, algorithm, state, dates).
//! - `enable GROUP` moves a stopped data directory's master key to a new
//!   key on the group's key server (Create + Activate, re-wrap the key
//!   ring, then destroy the local master key file), and sets
//!   `key-provider` in the config file.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sealdb_config::{KmipGroup, Settings};
use sealdb_kmip::KmipClient;

use crate::Common;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KmsCommand {
    /// Write a `[kmip_hosts.GROUP]` section into the config file
    /// (`--config`, else DATA/sealdb.conf), keeping everything else in it.
    Set(Box<SetArgs>),
    /// Connect to every host of GROUP: TLS, KMIP versions, supported operations.
    Test(Box<TestArgs>),
    /// The KMIP groups, and the master key: provider, id, state on the key
    /// server, and the SHA-256 of the key ring it wraps.
    Info(Box<ListArgs>),
    /// The key server's objects that belong to this sealdb: id, name, algorithm, state, dates.
    ListKeys(Box<ListArgs>),
    /// Move the master key of a stopped data directory to a new key on
    /// GROUP's key server, destroy the local master key file, and set
    /// key-provider = "kmip:GROUP" in the config file.
    Enable(Box<TestArgs>),
}

#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// The `[kmip_hosts.GROUP]` to test.
    group: String,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SetArgs {
    /// The group's name, used as `key-provider = "kmip:GROUP"`.
    group: String,
    /// `host:port` of each key server, tried in this order.
    #[arg(long, value_delimiter = ',', required = true)]
    hosts: Vec<String>,
    /// CA bundle (PEM) that signs the key servers' certificates.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This node's client certificate (PEM).
    #[arg(long)]
    client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    client_key: Option<PathBuf>,
    /// The client identity as a PKCS#12 keystore instead.
    #[arg(long)]
    keystore: Option<PathBuf>,
    /// The file holding the keystore's password.
    #[arg(long)]
    keystore_password_file: Option<PathBuf>,
    /// Pin the KMIP version (1.0 to 1.4, 2.0); otherwise it is negotiated.
    #[arg(long)]
    kmip_version: Option<String>,
    /// Limit of one round trip, in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// How long unwrapped keys stay cached, in milliseconds.
    #[arg(long)]
    key_cache_ms: Option<u64>,
    /// How long past that a cached key may serve while no host answers.
    #[arg(long)]
    key_cache_grace_ms: Option<u64>,
    /// `wrap` (the key never leaves the key server) or `get`.
    #[arg(long)]
    mode: Option<String>,
    /// The config file to write [default: DATA/sealdb.conf].
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory [default: ./sealdb-data].
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    settings: Settings,
}

pub(crate) fn run(command: KmsCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match command {
        KmsCommand::Set(args) => set(*args),
        KmsCommand::Test(args) => runtime.block_on(test(*args)),
        KmsCommand::ListKeys(args) => runtime.block_on(list_keys(*args)),
        KmsCommand::Info(args) => runtime.block_on(info(*args)),
        KmsCommand::Enable(args) => {
            drop(runtime);
            enable(*args)
        }
    }
}

fn set(args: SetArgs) -> Result<()> {
    if let Some(v) = &args.kmip_version {
        v.parse::<sealdb_kmip::ProtocolVersion>()?;
    }
    if let Some(m) = &args.mode {
        m.parse::<sealdb_kms::KmipMode>()?;
    }
    match (&args.client_cert, &args.client_key, &args.keystore) {
        (Some(_), Some(_), None) | (None, None, Some(_)) => {}
        _ => bail!("give the client identity as --client-cert and --client-key (PEM), or as --keystore (PKCS#12)"),
    }
    let path = match &args.config {
        Some(p) => p.clone(),
        None => args
            .data
            .clone()
            .unwrap_or_else(|| PathBuf::from("sealdb-data"))
            .join("sealdb.conf"),
    };
    let group = KmipGroup {
        hosts: args.hosts.clone(),
        ca: args.ca.map(|p| crate::start::absolute(&p)).transpose()?,
        client_cert: args.client_cert.map(|p| crate::start::absolute(&p)).transpose()?,
        client_key: args.client_key.map(|p| crate::start::absolute(&p)).transpose()?,
        keystore: args.keystore.map(|p| crate::start::absolute(&p)).transpose()?,
        keystore_password_file: args
            .keystore_password_file
            .map(|p| crate::start::absolute(&p))
            .transpose()?,
        kmip_version: args.kmip_version,
        timeout_ms: args.timeout_ms,
        key_cache_ms: args.key_cache_ms,
        key_cache_grace_ms: args.key_cache_grace_ms,
        mode: args.mode,
        ..KmipGroup::default()
    };
    sealdb_config::set_kmip_group(&path, &args.group, &group)?;
    println!("wrote [kmip_hosts.{}] to {}", args.group, path.display());
    println!(
        "check it with `sealdb kms test {} --config {}`; keep the master key there with key-provider = \"kmip:{}\"",
        args.group,
        path.display(),
        args.group
    );
    Ok(())
}

async fn test(args: TestArgs) -> Result<()> {
    let (settings, _) = crate::start::resolve_settings(&args.common, &args.settings)?;
    let (config, mode) = crate::keys::kmip_client_config(&settings, &args.group)?;
    let client = KmipClient::new(config)?;
    let results = client.test_hosts().await;
    let mut failed = 0;
    for (host, result) in &results {
        match result {
            Ok(t) => {
                let offered = t.offered.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
                let missing = t.query.missing();
                let operations = if missing.is_empty() {
                    "supports every operation sealdb uses".to_owned()
                } else {
                    failed += usize::from(mode == sealdb_kms::KmipMode::Wrap);
                    format!(
                        "LACKS {}",
                        missing.iter().map(|op| op.name()).collect::<Vec<_>>().join(", ")
                    )
                };
                let aead = if t.version.has_aead() {
                    ""
                } else if mode == sealdb_kms::KmipMode::Wrap {
                    failed += 1;
                    " (below 1.4: no AES-GCM tag, so mode = \"wrap\" cannot work; use mode = \"get\" or a newer server)"
                } else {
                    " (below 1.4: mode = \"get\" works; \"wrap\" would need 1.4)"
                };
                println!("ok      {host}");
                println!("        TLS     {}", t.tls);
                println!("        KMIP    {} (the server offers {offered}){aead}", t.version);
                println!("        vendor  {}", t.query.vendor.as_deref().unwrap_or("(not given)"));
                println!("        ops     {operations}");
            }
            Err(e) => {
                failed += 1;
                println!("FAILED  {host}: {e}");
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} hosts of [kmip_hosts.{}] failed",
            results.len(),
            args.group
        );
    }
    println!("all {} hosts of [kmip_hosts.{}] answered", results.len(), args.group);
    Ok(())
}

async fn list_keys(args: ListArgs) -> Result<()> {
    let (settings, data) = crate::start::resolve_settings(&args.common, &args.settings)?;
    let data = crate::start::absolute(&data)?;
    if settings.kmip_hosts.is_empty() {
        bail!("no [kmip_hosts.GROUP] in the config: this sealdb keeps no keys on a key server");
    }
    let instance = data.join(crate::keys::KEYSTORE_DIR).join(crate::keys::INSTANCE_FILE);
    if !instance.exists() {
        bail!(
            "{} is missing: this data directory has never kept keys on a key server (or --data is not its data directory)",
            instance.display()
        );
    }
    // Every object whose Name starts with this installation's prefix: the
    // master key versions and the tables' own keys.
    let prefix = format!("{}/", crate::keys::instance_prefix(&data)?);
    println!(
        "{:<10} {:<12} {:<56} {:<10} {:<12} {:<23} {:<23} {:<23}",
        "GROUP", "ID", "NAME", "ALGORITHM", "STATE", "CREATED", "ACTIVATED", "DEACTIVATED"
    );
    let mut failed = Vec::new();
    for group in settings.kmip_hosts.keys() {
        let (config, _) = crate::keys::kmip_client_config(&settings, group)?;
        let client = KmipClient::new(config)?;
        let listed = async {
            let mut rows = Vec::new();
            for id in client.locate_all().await? {
                let a = client.attributes(&id).await?;
                if let Some(name) = a.names.iter().find(|n| n.starts_with(&prefix)).cloned() {
                    rows.push((id, name, a));
                }
            }
            Ok::<_, sealdb_kmip::KmipError>(rows)
        }
        .await;
        let rows = match listed {
            Ok(rows) => rows,
            Err(e) => {
                println!("FAILED  [kmip_hosts.{group}]: {e}");
                failed.push(group.clone());
                continue;
            }
        };
        for (id, name, a) in &rows {
            let algorithm = match (a.algorithm, a.length) {
                (Some(sealdb_kmip::spec::ALGORITHM_AES), Some(bits)) => format!("AES-{bits}"),
                (Some(code), _) => format!("{code:#x}"),
                (None, _) => "?".into(),
            };
            println!(
                "{:<10} {:<12} {:<56} {:<10} {:<12} {:<23} {:<23} {:<23}",
                group,
                id,
                name,
                algorithm,
                a.state.map_or("?", |s| s.name()),
                date(a.initial_date),
                date(a.activation_date),
                date(a.deactivation_date),
            );
        }
        println!("{} object(s) named {prefix}... on [kmip_hosts.{group}]", rows.len());
    }
    if !failed.is_empty() {
        bail!(
            "could not list the keys on [kmip_hosts.{}]",
            failed.join("], [kmip_hosts.")
        );
    }
    Ok(())
}

async fn info(args: ListArgs) -> Result<()> {
    let (settings, data) = crate::start::resolve_settings(&args.common, &args.settings)?;
    let data = crate::start::absolute(&data)?;
    println!(
        "key-provider    {}",
        settings.key_provider.as_deref().unwrap_or("local")
    );
    for (name, group) in &settings.kmip_hosts {
        println!(
            "[kmip_hosts.{name}] hosts {}; mode {}; KMIP {}; timeout {} ms",
            group.hosts.join(", "),
            group.mode.as_deref().unwrap_or("wrap"),
            group.kmip_version.as_deref().unwrap_or("negotiated"),
            group.timeout_ms.unwrap_or(crate::keys::DEFAULT_KMIP_TIMEOUT_MS)
        );
    }
    let record = sealdb_storage::master_key_record(&data)
        .with_context(|| format!("reading the catalog of {}", data.display()))?;
    println!(
        "master key      {} at {}; the key ring it wraps has SHA-256 {}",
        record.master_id, record.provider, record.wrapped_ring_sha256
    );
    if let Some(group) = record.provider.strip_prefix("kmip:") {
        let (config, _) = crate::keys::kmip_client_config(&settings, group)?;
        let client = KmipClient::new(config)?;
        match client.attributes(&record.master_id).await {
            Ok(a) => println!(
                "on the server   state {}, name {}, created {}, activated {}",
                a.state.map_or("?", |s| s.name()),
                a.names.first().map_or("-", String::as_str),
                date(a.initial_date),
                date(a.activation_date)
            ),
            Err(e) if e.is_not_found() => {
                println!("on the server   NOT FOUND: the master key was destroyed; the data under it cannot be read");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Every wrapped key, by the SHA-256 of what the catalog stores (the
    // key ring is unwrapped to read the encrypted catalog; nothing is
    // written).
    let provider = crate::keys::provider_named(&settings, &data, &record.provider)?;
    let keys = tokio::task::spawn_blocking(move || sealdb_storage::key_inventory(&data, provider.as_ref()))
        .await
        .context("the key inventory thread failed")??;
    println!("wrapped keys    {}", keys.len());
    for k in keys {
        println!(
            "  {:<44} {:<24} {:<10} v{:<3} {:<12} {}",
            k.scope,
            k.id,
            k.provider,
            k.version,
            k.state,
            k.wrapped_sha256.as_deref().unwrap_or("(held by its provider)")
        );
    }
    Ok(())
}

fn enable(args: TestArgs) -> Result<()> {
    let (settings, data) = crate::start::resolve_settings(&args.common, &args.settings)?;
    let data = crate::start::absolute(&data)?;
    let target = format!("kmip:{}", args.group);
    let record = sealdb_storage::master_key_record(&data)
        .with_context(|| format!("reading the catalog of {}", data.display()))?;
    if record.provider == target {
        bail!(
            "{} already keeps its master key in {target} (master key {}); nothing to do",
            data.display(),
            record.master_id
        );
    }
    let from = crate::keys::provider_named(&settings, &data, &record.provider)
        .with_context(|| format!("opening the current master key's provider, {}", record.provider))?;
    let to = crate::keys::kmip_provider(&settings, &data, &args.group)?;
    let name = format!("{}/master-key", crate::keys::instance_prefix(&data)?);
    let moved = sealdb_storage::move_master_key(&data, from.as_ref(), to.as_ref())?;
    println!(
        "created master key {} ({name}) on {target} and activated it",
        moved.to.1
    );
    for line in crate::keys::after_move(&args.common, &data, &moved, from.as_ref()) {
        println!("{line}");
    }
    Ok(())
}

fn date(unix: Option<i64>) -> String {
    unix.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .map_or_else(|| "-".into(), sealdb_pki::format_time)
}
