//! The findings of `sys.security_status` and `sealdb status`: what weakens
//! this installation, each with its severity and its fix. One function
//! over plain inputs, so that the server (live state) and the command line
//! (config file and catalog, server running or not) report the same.

use std::time::Duration;

use sealdb_auth::{Requirement, User};
use sealdb_storage::{Encryption, JobMeta, JobState, TableSummary};

use crate::CertificateRow;

/// Days before expiry from which a certificate is reported.
pub const CERTIFICATE_WARNING_DAYS: i64 = 30;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `high`, `medium` or `low`.
    pub severity: &'static str,
    /// What, in a few words.
    pub finding: &'static str,
    /// Which object and why.
    pub detail: String,
    /// What to do.
    pub fix: String,
}

/// A client certificate of a live session.
#[derive(Debug, Clone)]
pub struct SessionCertificate {
    /// The session's user.
    pub user: String,
    /// Subject DN.
    pub subject: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

/// The state of the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditState {
    /// `audit-log = off`.
    pub off: bool,
    /// Records that could not be written since start.
    pub failures: u64,
    /// The first problem reading it back, if any.
    pub damaged: Option<String>,
}

/// Everything the findings are made from.
#[derive(Debug, Clone, Default)]
pub struct StatusInputs {
    /// `ssl-mode` other than `required`.
    pub plaintext_allowed: bool,
    /// The master key sits unsealed in `DATA/keystore`.
    pub master_key_unprotected: bool,
    /// Users and roles.
    pub users: Vec<User>,
    /// `pki-db-client-auth = true`.
    pub pki_db_client_auth: bool,
    /// Loaded certificates (server, chain, trusted CAs).
    pub certificates: Vec<CertificateRow>,
    /// Client certificates of live sessions.
    pub session_certificates: Vec<SessionCertificate>,
    /// Tables.
    pub tables: Vec<TableSummary>,
    /// Rekey jobs.
    pub jobs: Vec<JobMeta>,
    /// `key-rotation-period`, as written and parsed.
    pub key_rotation_period: Option<(String, Duration)>,
    /// Tables whose current key version is older than the period, with its age.
    pub due_for_rotation: Vec<(String, Duration)>,
    /// Key servers.
    pub kmip_hosts: Vec<sealdb_kms::ProviderHost>,
    /// The audit log.
    pub audit: AuditState,
    /// CA private keys the server's user can read.
    pub readable_ca_keys: Vec<String>,
    /// CRLs past their next update.
    pub stale_crls: Vec<String>,
}

fn finding(severity: &'static str, finding: &'static str, detail: String, fix: impl Into<String>) -> Finding {
    Finding {
        severity,
        finding,
        detail,
        fix: fix.into(),
    }
}

/// What weakens this installation, most severe first.
pub fn findings(i: &StatusInputs) -> Vec<Finding> {
    let mut out = Vec::new();
    if i.plaintext_allowed {
        out.push(finding(
            "high",
            "plaintext allowed",
            "clients may connect without TLS".to_owned(),
            "set ssl-mode = required",
        ));
    }
    if i.master_key_unprotected {
        out.push(finding(
            "high",
            "master key unprotected on local disk",
            "DATA/keystore/master.keys holds the master key unsealed (mode 0600)".to_owned(),
            "set keystore-password-file or SEALDB_KEYSTORE_PASSWORD (or use a KMIP key provider) and restart",
        ));
    }
    if !i.stale_crls.is_empty() {
        out.push(finding(
            "high",
            "CRL past its next update",
            format!(
                "{}: a certificate revoked since it was issued may be missing from it and still be accepted",
                i.stale_crls.join("; ")
            ),
            "install the current CRL from its CA and run ALTER SYSTEM RELOAD TLS; set ssl-crl-expired = refuse to refuse certificates until then",
        ));
    }
    if !i.readable_ca_keys.is_empty() {
        out.push(finding(
            "medium",
            "CA private key readable by the server",
            format!(
                "{}: whoever reads it (a backup, a snapshot, a compromised server) can make a certificate for any user, admin included",
                i.readable_ca_keys.join(", ")
            ),
            "move ca.key offline (or make it unreadable to the server's user) and bring it back only to make certificates",
        ));
    }
    if i.audit.off {
        out.push(finding(
            "medium",
            "audit log off",
            "audit-log = off: logins, changes of users and grants and key operations are not recorded".to_owned(),
            "set audit-log = on (the default) and restart",
        ));
    }
    if i.audit.failures > 0 {
        out.push(finding(
            "high",
            "audit records lost",
            format!(
                "{} audit records could not be written since start (see the server log)",
                i.audit.failures
            ),
            "free space under the data directory; records written from then on are kept",
        ));
    }
    if let Some(problem) = &i.audit.damaged {
        out.push(finding(
            "high",
            "audit log damaged",
            problem.clone(),
            "run sealdb verify and investigate: a record was removed or altered",
        ));
    }
    for u in i.users.iter().filter(|u| u.login) {
        if u.require == Requirement::None {
            out.push(finding(
                "medium",
                "user without REQUIRE SSL",
                format!("user \"{}\" may log in over any connection the server accepts", u.name),
                format!("ALTER USER {} REQUIRE SSL (or REQUIRE X509)", u.name),
            ));
        }
        if i.pki_db_client_auth && u.password.is_some() {
            out.push(finding(
                "low",
                "password kept although certificates authenticate",
                format!(
                    "user \"{}\" has a password, and pki-db-client-auth = true makes every client present a certificate: the password is one more secret to leak",
                    u.name
                ),
                format!("ALTER USER {} PASSWORD NULL", u.name),
            ));
        }
    }
    for cert in &i.certificates {
        if cert.days_left < 0 {
            out.push(finding(
                "high",
                "certificate expired",
                format!("{} ({}) expired {} days ago", cert.path, cert.subject, -cert.days_left),
                "replace the file and run ALTER SYSTEM RELOAD TLS",
            ));
        } else if cert.days_left <= CERTIFICATE_WARNING_DAYS {
            out.push(finding(
                "medium",
                "certificate expires soon",
                format!("{} ({}) expires in {} days", cert.path, cert.subject, cert.days_left),
                "replace the file and run ALTER SYSTEM RELOAD TLS",
            ));
        }
    }
    for s in &i.session_certificates {
        if s.days_left <= CERTIFICATE_WARNING_DAYS {
            out.push(finding(
                "medium",
                "client certificate expires soon",
                format!(
                    "a session of user \"{}\" uses a client certificate ({}) that expires in {} days",
                    s.user, s.subject, s.days_left
                ),
                "issue the client a new certificate (sealdb cert create-client)",
            ));
        }
    }
    for table in &i.tables {
        if table.encryption == Encryption::None {
            out.push(finding(
                "medium",
                "unencrypted table",
                format!(
                    "table public.{} has encryption = 'none': its segment files are stored in the clear (checked by SHA-256 only)",
                    table.name
                ),
                format!("ALTER TABLE {} SET (encryption = 'aes-256-gcm')", table.name),
            ));
        }
        let rekeying = i
            .jobs
            .iter()
            .find(|j| j.table == table.name && j.state == JobState::Running);
        if table.current_key_share < 1.0 {
            let share = format!("{:.0}%", (1.0 - table.current_key_share) * 100.0);
            out.push(match rekeying {
                Some(job) => finding(
                    "low",
                    "old key versions still in use",
                    format!(
                        "{share} of table public.{}'s bytes are stored under an older key version or encryption; rekey job {} is at {} of {} bytes",
                        table.name, job.id, job.bytes_done, job.bytes_total
                    ),
                    "wait for the job (sys.jobs)",
                ),
                None => finding(
                    "medium",
                    "old key versions still in use",
                    format!(
                        "{share} of table public.{}'s bytes are stored under an older key version (or otherwise than its encryption says)",
                        table.name
                    ),
                    format!("ALTER TABLE {} REKEY", table.name),
                ),
            });
        }
    }
    for job in i.jobs.iter().filter(|j| j.state == JobState::Failed) {
        if i.tables
            .iter()
            .any(|t| t.name == job.table && t.current_key_share < 1.0)
        {
            out.push(finding(
                "medium",
                "rekey failed",
                format!(
                    "rekey job {} of table public.{} failed: {}",
                    job.id,
                    job.table,
                    job.error.clone().unwrap_or_default()
                ),
                format!("fix the cause and run ALTER TABLE {} REKEY again", job.table),
            ));
        }
    }
    match &i.key_rotation_period {
        Some((text, _)) => {
            for (table, age) in &i.due_for_rotation {
                out.push(finding(
                    "medium",
                    "key older than the rotation period",
                    format!(
                        "the current key of table public.{table} is {} days old (key-rotation-period = \"{text}\")",
                        age.as_secs() / 86_400
                    ),
                    format!(
                        "ALTER TABLE {table} ROTATE KEY (the server does it by itself within a minute while it runs)"
                    ),
                ));
            }
        }
        None => out.push(finding(
            "low",
            "no key rotation period",
            "key-rotation-period is not set: table keys are rotated only when asked".to_owned(),
            "set key-rotation-period, e.g. \"90d\"",
        )),
    }
    for host in i.kmip_hosts.iter().filter(|h| h.status == "unreachable") {
        out.push(finding(
            "medium",
            "kmip host unreachable",
            format!(
                "key server {} of [kmip_hosts.{}] failed its last request: {}",
                host.host,
                host.group,
                host.error.clone().unwrap_or_default()
            ),
            "check that the key server runs and is reachable with this node's certificate; sealdb uses the next host of the group meanwhile",
        ));
    }
    let rank = |s: &str| match s {
        "high" => 0,
        "medium" => 1,
        _ => 2,
    };
    out.sort_by_key(|f| rank(f.severity));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, encryption: Encryption, share: f64) -> TableSummary {
        TableSummary {
            name: name.into(),
            encryption,
            key_version: 2,
            key_created_unix: 0,
            created_unix: 0,
            rows: 1,
            segments: 1,
            bytes_on_disk: 10,
            bytes_in_memory: 0,
            current_key_share: share,
        }
    }

    fn names(f: &[Finding]) -> Vec<(&'static str, &'static str)> {
        f.iter().map(|f| (f.severity, f.finding)).collect()
    }

    #[test]
    fn a_clean_installation_has_only_the_rotation_period_hint() {
        let found = findings(&StatusInputs::default());
        assert_eq!(names(&found), [("low", "no key rotation period")]);
        let found = findings(&StatusInputs {
            key_rotation_period: Some(("90d".into(), Duration::from_secs(90 * 86_400))),
            ..StatusInputs::default()
        });
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn each_weakness_is_a_finding_with_its_fix() {
        let mut clerk = User {
            name: "clerk".into(),
            password: None,
            require: Requirement::Ssl,
            superuser: false,
            login: true,
            member_of: Default::default(),
            created: std::time::SystemTime::UNIX_EPOCH,
        };
        clerk.password = Some(sealdb_auth::ScramVerifier::new("pw", 4096));
        let found = findings(&StatusInputs {
            users: vec![clerk],
            pki_db_client_auth: true,
            session_certificates: vec![SessionCertificate {
                user: "clerk".into(),
                subject: "CN=clerk".into(),
                days_left: 3,
            }],
            tables: vec![
                table("old", Encryption::Aes256Gcm, 0.5),
                table("bare", Encryption::None, 1.0),
            ],
            key_rotation_period: Some(("90d".into(), Duration::from_secs(90 * 86_400))),
            due_for_rotation: vec![("old".into(), Duration::from_secs(100 * 86_400))],
            audit: AuditState {
                off: true,
                failures: 2,
                damaged: Some("audit/1.audit: record 3 does not follow".into()),
            },
            ..StatusInputs::default()
        });
        let got = names(&found);
        for want in [
            ("high", "audit records lost"),
            ("high", "audit log damaged"),
            ("medium", "audit log off"),
            ("low", "password kept although certificates authenticate"),
            ("medium", "client certificate expires soon"),
            ("medium", "old key versions still in use"),
            ("medium", "unencrypted table"),
            ("medium", "key older than the rotation period"),
        ] {
            assert!(got.contains(&want), "{want:?} missing from {got:?}");
        }
        assert!(!got.iter().any(|(_, f)| *f == "user without REQUIRE SSL"));
        let fixes: Vec<&str> = found.iter().map(|f| f.fix.as_str()).collect();
        assert!(fixes.contains(&"ALTER USER clerk PASSWORD NULL"), "{fixes:?}");
        assert!(fixes.contains(&"ALTER TABLE old REKEY"), "{fixes:?}");
        assert!(
            found
                .windows(2)
                .all(|w| (w[0].severity == "high") >= (w[1].severity == "high"))
        );
    }
}
