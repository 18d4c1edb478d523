//! `sealdb status`: the findings of `sys.security_status` from the config
//! file, the certificates it names and the catalog, whether the server runs
//! or not (nothing is changed, and the catalog is read as it was last
//! written). Exit status 1 when a finding is of high severity.

use anyhow::{Context, Result, bail};
use sealdb_config::{Settings, SslMode};
use sealdb_pki::CertsDir;
use sealdb_sql::status::{AuditState, StatusInputs, findings};

use crate::Common;

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    settings: Settings,
}

pub(crate) fn run(args: StatusArgs) -> Result<()> {
    let (settings, data) = crate::start::resolve_settings(&args.common, &args.settings)?;
    let data = crate::start::absolute(&data)?;
    if !data.join(sealdb_storage::CATALOG_FILE).exists() {
        bail!(
            "{} holds no sealdb catalog: is --data the data directory of a sealdb server?",
            data.display()
        );
    }
    let provider = crate::keys::provider(&settings, &data)?;
    let seen = sealdb_storage::inspect(&data, provider.as_ref()).context("reading the catalog")?;
    let access = match seen.sections.get(sealdb_sql::ACCESS_SECTION) {
        Some(stored) => sealdb_auth::AccessControl::import(stored).context("reading users and grants")?,
        None => sealdb_auth::AccessControl::with_bootstrap_admin(crate::start::ADMIN),
    };
    let ssl_mode = settings.ssl_mode.unwrap_or_default();
    let mut stale_crls = Vec::new();
    let certificates = if ssl_mode == SslMode::Disabled {
        Vec::new()
    } else {
        let certs = CertsDir::new(data.join("certs"), false);
        let files = crate::start::tls_files(&settings, &certs)?;
        let material = sealdb_pki::TlsMaterial::load(&files).context("loading the TLS certificates")?;
        stale_crls = sealdb_server::stale_crls(&material);
        let now = time::OffsetDateTime::now_utc();
        material
            .certificates()
            .iter()
            .map(|c| sealdb_sql::CertificateRow {
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
    };
    let period = match &settings.key_rotation_period {
        Some(text) => Some((
            text.clone(),
            sealdb_config::parse_duration("key-rotation-period", text)?,
        )),
        None => None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let due_for_rotation = match &period {
        Some((_, every)) => seen
            .tables
            .iter()
            .filter(|t| t.encryption == sealdb_storage::Encryption::Aes256Gcm)
            .map(|t| {
                (
                    t.name.clone(),
                    std::time::Duration::from_secs(now.saturating_sub(t.key_created_unix)),
                )
            })
            .filter(|(_, age)| age >= every)
            .collect(),
        None => Vec::new(),
    };
    let inputs = StatusInputs {
        plaintext_allowed: ssl_mode != SslMode::Required,
        master_key_unprotected: !provider.protected_at_rest(),
        users: access.users(),
        pki_db_client_auth: settings.pki_db_client_auth.unwrap_or(false),
        certificates,
        session_certificates: Vec::new(),
        tables: seen.tables,
        jobs: seen.jobs,
        key_rotation_period: period,
        due_for_rotation,
        kmip_hosts: provider.hosts(),
        readable_ca_keys: sealdb_server::readable(&crate::start::ca_key_candidates(&data, &settings)),
        stale_crls,
        audit: AuditState {
            off: settings.audit_log.unwrap_or_default() == sealdb_config::OnOff::Off,
            failures: 0,
            damaged: seen.audit.problems.first().cloned(),
        },
    };
    let found = findings(&inputs);
    for f in &found {
        println!("{:<7} {}: {}", f.severity.to_uppercase(), f.finding, f.detail);
        println!("        fix: {}", f.fix);
    }
    let high = found.iter().filter(|f| f.severity == "high").count();
    println!(
        "{} findings ({} high, {} medium, {} low) in {}",
        found.len(),
        high,
        found.iter().filter(|f| f.severity == "medium").count(),
        found.iter().filter(|f| f.severity == "low").count(),
        data.display()
    );
    if high > 0 {
        bail!("{high} high-severity finding(s); apply the fixes above");
    }
    Ok(())
}
