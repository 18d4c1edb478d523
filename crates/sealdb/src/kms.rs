//! `sealdb kms`: look at the KMIP key servers of `[kmip_hosts.GROUP]`.
//!
//! - `test GROUP` connects to every host of the group (not stopping at the
//!   first) and shows the TLS version and cipher, the KMIP versions the
//!   server lists and the one sealdb uses, and whether it supports every
//!   operation sealdb needs.
//! - `list-keys` prints the key server's objects that belong to this
//!   installation (id, name, algorithm, state, dates).

use anyhow::{Context, Result, bail};
use sealdb_config::Settings;
use sealdb_kmip::KmipClient;

use crate::Common;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KmsCommand {
    /// Connect to every host of GROUP: TLS, KMIP versions, supported operations.
    Test(Box<TestArgs>),
    /// The key server's objects that belong to this sealdb: id, name, algorithm, state, dates.
    ListKeys(Box<ListArgs>),
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
        KmsCommand::Test(args) => runtime.block_on(test(*args)),
        KmsCommand::ListKeys(args) => runtime.block_on(list_keys(*args)),
    }
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
                } else {
                    " (below 1.4: no AES-GCM tag, so mode = \"wrap\" cannot work; use \"get\" or a newer server)"
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
    let Some(group) = settings.key_provider.as_deref().and_then(|p| p.strip_prefix("kmip:")) else {
        bail!("key-provider is not a KMIP group (kmip:GROUP): this sealdb keeps no keys on a key server");
    };
    let instance = data.join(crate::keys::KEYSTORE_DIR).join(crate::keys::INSTANCE_FILE);
    if !instance.exists() {
        bail!(
            "{} is missing: this data directory has never kept keys on a key server (or --data is not its data directory)",
            instance.display()
        );
    }
    let (config, _) = crate::keys::kmip_client_config(&settings, group)?;
    let client = KmipClient::new(config)?;
    let name = format!("{}/master-key", crate::keys::instance_prefix(&data)?);
    let ids = client.locate(&name).await?;
    println!(
        "{:<12} {:<48} {:<10} {:<12} {:<20} {:<20} {:<20}",
        "ID", "NAME", "ALGORITHM", "STATE", "CREATED", "ACTIVATED", "DEACTIVATED"
    );
    for id in &ids {
        let a = client.attributes(id).await?;
        let algorithm = match (a.algorithm, a.length) {
            (Some(sealdb_kmip::spec::ALGORITHM_AES), Some(bits)) => format!("AES-{bits}"),
            (Some(code), _) => format!("{code:#x}"),
            (None, _) => "?".into(),
        };
        println!(
            "{:<12} {:<48} {:<10} {:<12} {:<20} {:<20} {:<20}",
            id,
            a.names.first().map_or(name.as_str(), String::as_str),
            algorithm,
            a.state.map_or("?", |s| s.name()),
            date(a.initial_date),
            date(a.activation_date),
            date(a.deactivation_date),
        );
    }
    println!("{} object(s) named {name} on [kmip_hosts.{group}]", ids.len());
    Ok(())
}

fn date(unix: Option<i64>) -> String {
    unix.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|| "-".into())
}
