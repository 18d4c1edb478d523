//! `sealdb cert ...`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sealdb_pki::{CertsDir, KeyType, cert_info_pem_file};
use zeroize::Zeroizing;

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Create a CA: ca.crt and ca.key.
    CreateCa {
        #[command(flatten)]
        common: CertCommon,
        /// Days of validity.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Create a node (server) certificate for HOSTs (names or addresses), signed by the CA.
    CreateNode {
        /// Host names and IP addresses the certificate is valid for.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// The cluster the node belongs to: the certificate then also opens
        /// the node channel of that cluster (with --name).
        #[arg(long, requires = "name")]
        cluster: Option<String>,
        /// The node's name in its cluster (with --cluster).
        #[arg(long, requires = "cluster")]
        name: Option<String>,
        #[command(flatten)]
        common: CertCommon,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Create a client certificate for USER, signed by the CA.
    CreateClient {
        /// The database user the certificate names (its common name).
        user: String,
        #[command(flatten)]
        common: CertCommon,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Also write client.USER.p12 (key, certificate and CA), for Java and browsers.
        #[arg(long)]
        pkcs12: bool,
        /// File holding the PKCS#12 password (or set SEALDB_PKCS12_PASSWORD).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List the certificates in the directory with their names and expiry.
    List {
        /// Certificates directory.
        #[arg(long)]
        certs_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct CertCommon {
    /// Certificates directory.
    #[arg(long)]
    certs_dir: PathBuf,
    /// Where the signing CA's ca.crt and ca.key are, if not in --certs-dir
    /// (a fresh `sealdb start` keeps them in DATA-ca, outside the data directory).
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Key algorithm: ecdsa-p256 (default), rsa-2048, rsa-3072, ed25519.
    #[arg(long, default_value = "ecdsa-p256")]
    key_type: String,
    /// Replace existing files.
    #[arg(long)]
    overwrite: bool,
}

impl CertCommon {
    fn dir(&self) -> CertsDir {
        let dir = CertsDir::new(&self.certs_dir, self.overwrite);
        match &self.ca_dir {
            Some(ca) => dir.signed_by(ca),
            None => dir,
        }
    }
    fn key_type(&self) -> Result<KeyType> {
        Ok(self.key_type.parse()?)
    }
}

pub(crate) fn run(command: CertCommand) -> Result<()> {
    let written = match command {
        CertCommand::CreateCa { common, days } => common.dir().create_ca(common.key_type()?, days)?,
        CertCommand::CreateNode {
            hosts,
            cluster,
            name,
            common,
            days,
        } => {
            let member = match (cluster, name) {
                (Some(cluster), Some(name)) => Some(sealdb_pki::NodeName::new(&cluster, &name)?),
                _ => None,
            };
            common
                .dir()
                .create_node(&hosts, member.as_ref(), common.key_type()?, days)?
        }
        CertCommand::CreateClient {
            user,
            common,
            days,
            pkcs12,
            password_file,
        } => {
            let password = if pkcs12 {
                let p = sealdb_config::read_secret(None, password_file.as_deref(), "SEALDB_PKCS12_PASSWORD")?
                    .map(Zeroizing::new)
                    .context("--pkcs12 needs a password: --password-file FILE or SEALDB_PKCS12_PASSWORD")?;
                if p.is_empty() {
                    bail!("the PKCS#12 password is empty; Java and many tools refuse that");
                }
                Some(p)
            } else {
                if password_file.is_some() {
                    bail!("--password-file is only used with --pkcs12");
                }
                None
            };
            common
                .dir()
                .create_client(&user, common.key_type()?, days, password.as_deref().map(String::as_str))?
        }
        CertCommand::List { certs_dir } => return list(&certs_dir),
    };
    for f in written.files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

fn list(dir: &std::path::Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt" || x == "pem"))
        .collect();
    files.sort();
    if files.is_empty() {
        println!("no certificates in {}", dir.display());
        return Ok(());
    }
    let now = time::OffsetDateTime::now_utc();
    for file in files {
        let infos = match cert_info_pem_file(&file) {
            Ok(i) => i,
            Err(e) => {
                println!("{}: unreadable: {e}", file.display());
                continue;
            }
        };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, info) in infos.iter().enumerate() {
            let days = info.days_left(now);
            let state = if days < 0 {
                "  EXPIRED"
            } else if days <= 30 {
                "  EXPIRES SOON"
            } else {
                ""
            };
            println!("{name}{}", if i > 0 { format!(" (chain #{i})") } else { String::new() });
            println!("  subject:   {}", info.subject);
            println!(
                "  sans:      {}",
                if info.sans.is_empty() {
                    "-".to_owned()
                } else {
                    info.sans.join(", ")
                }
            );
            println!("  issuer:    {}", info.issuer);
            println!("  serial:    {}", info.serial);
            println!("  not after: {}", info.not_after_text());
            println!("  days left: {days}{state}");
        }
    }
    Ok(())
}
