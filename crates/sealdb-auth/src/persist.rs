//! The durable form of [`AccessControl`]: a JSON value that the storage
//! layer keeps, encrypted, in the catalog. Passwords appear only as SCRAM
//! verifiers.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::access::{AccessControl, Grant, GrantObject, Privilege, Requirement, User};
use base64::Engine as _;

use crate::{AccessError, ScramVerifier};

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    bootstrap: Option<String>,
    users: Vec<StoredUser>,
    grants: Vec<StoredGrant>,
    /// Base64 of the key of the salts shown for names that cannot log in
    /// (absent in catalogs written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dummy_salt_key: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredUser {
    name: String,
    /// `SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey`.
    verifier: Option<String>,
    require: String,
    subject: Option<String>,
    issuer: Option<String>,
    superuser: bool,
    login: bool,
    member_of: BTreeSet<String>,
    created_unix: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredGrant {
    grantee: String,
    table: Option<String>,
    privilege: String,
    grantor: String,
}

const SNAPSHOT_VERSION: u32 = 1;

impl AccessControl {
    /// Everything, in its durable form.
    pub fn export(&self) -> serde_json::Value {
        let (users, grants, bootstrap) = self.parts();
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            bootstrap,
            dummy_salt_key: Some(base64::engine::general_purpose::STANDARD.encode(self.dummy_salt_key().0.as_slice())),
            users: users
                .into_iter()
                .map(|u| {
                    let (require, subject, issuer) = match u.require {
                        Requirement::None => ("none", None, None),
                        Requirement::Ssl => ("ssl", None, None),
                        Requirement::X509 => ("x509", None, None),
                        Requirement::Subject { subject, issuer } => ("subject", subject, issuer),
                    };
                    StoredUser {
                        name: u.name,
                        verifier: u.password.map(|v| v.to_pg_string()),
                        require: require.into(),
                        subject,
                        issuer,
                        superuser: u.superuser,
                        login: u.login,
                        member_of: u.member_of,
                        created_unix: u.created.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    }
                })
                .collect(),
            grants: grants
                .into_iter()
                .map(|g| StoredGrant {
                    grantee: g.grantee,
                    table: match g.object {
                        GrantObject::Table(t) => Some(t),
                        GrantObject::AllTables => None,
                    },
                    privilege: g.privilege.as_str().into(),
                    grantor: g.grantor,
                })
                .collect(),
        };
        serde_json::to_value(snapshot).unwrap_or(serde_json::Value::Null)
    }

    /// Rebuilds the state [`Self::export`] gave.
    pub fn import(value: &serde_json::Value) -> Result<Self, AccessError> {
        let access = Self::default();
        access.restore(value)?;
        Ok(access)
    }

    /// Replaces the whole state with `value` (undoing a change whose
    /// persistence failed).
    pub fn restore(&self, value: &serde_json::Value) -> Result<(), AccessError> {
        let bad = |why: String| AccessError::Stored(why);
        let snapshot: Snapshot = Snapshot::deserialize(value).map_err(|e| bad(e.to_string()))?;
        if snapshot.version > SNAPSHOT_VERSION {
            return Err(bad(format!(
                "version {} is newer than this sealdb reads",
                snapshot.version
            )));
        }
        let mut users = Vec::with_capacity(snapshot.users.len());
        for u in snapshot.users {
            let password = match &u.verifier {
                None => None,
                Some(text) => Some(
                    ScramVerifier::parse_pg_string(text)
                        .ok_or_else(|| bad(format!("the verifier of \"{}\" is malformed", u.name)))?,
                ),
            };
            let require = match u.require.as_str() {
                "none" => Requirement::None,
                "ssl" => Requirement::Ssl,
                "x509" => Requirement::X509,
                "subject" => Requirement::Subject {
                    subject: u.subject,
                    issuer: u.issuer,
                },
                other => return Err(bad(format!("unknown requirement {other}"))),
            };
            users.push(User {
                name: u.name,
                password,
                require,
                superuser: u.superuser,
                login: u.login,
                member_of: u.member_of,
                created: SystemTime::UNIX_EPOCH + Duration::from_secs(u.created_unix),
            });
        }
        let mut grants = Vec::with_capacity(snapshot.grants.len());
        for g in snapshot.grants {
            let privilege = Privilege::ALL
                .into_iter()
                .find(|p| p.as_str() == g.privilege)
                .ok_or_else(|| bad(format!("unknown privilege {}", g.privilege)))?;
            grants.push(Grant {
                grantee: g.grantee,
                object: g.table.map(GrantObject::Table).unwrap_or(GrantObject::AllTables),
                privilege,
                grantor: g.grantor,
            });
        }
        if let Some(text) = &snapshot.dummy_salt_key {
            let bytes = zeroize::Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| bad("the salt key is not base64".into()))?,
            );
            let key: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| bad("the salt key is not 32 bytes".into()))?;
            self.set_dummy_salt_key(crate::access::SaltKey(zeroize::Zeroizing::new(key)));
        }
        self.replace(users, grants, snapshot.bootstrap)
    }

    /// Whether `value` (an exported catalog) lacks something this version
    /// keeps, so that it should be written again once read.
    pub fn stored_form_is_outdated(value: &serde_json::Value) -> bool {
        value.get("dummy_salt_key").is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserOptions;

    #[test]
    fn users_roles_requirements_and_grants_survive_export_and_import_without_passwords() {
        let a = AccessControl::with_bootstrap_admin("admin");
        a.create(
            "alice",
            true,
            UserOptions {
                password: Some(Some(ScramVerifier::new("s3cret-pass", 4096))),
                require: Some(Requirement::Subject {
                    subject: Some("/CN=alice".into()),
                    issuer: None,
                }),
                ..UserOptions::default()
            },
        )
        .unwrap();
        a.create("readers", false, UserOptions::default()).unwrap();
        a.grant_role("readers", "alice").unwrap();
        a.grant("readers", GrantObject::AllTables, &[Privilege::Select], "admin")
            .unwrap();
        a.grant("alice", GrantObject::Table("public.t".into()), &Privilege::ALL, "admin")
            .unwrap();
        let value = a.export();
        assert!(!value.to_string().contains("s3cret-pass"));
        let b = AccessControl::import(&value).unwrap();
        assert_eq!(b.export(), value);
        assert!(b.has_privilege("alice", "public.x", Privilege::Select));
        assert!(b.has_privilege("alice", "public.t", Privilege::Delete));
        assert!(b.drop_role("admin").is_err(), "the bootstrap administrator is kept");
    }
}
