//! Users, roles and grants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::time::SystemTime;

use crate::ScramVerifier;

/// Why an access-control change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The user or role exists already.
    #[error("role \"{0}\" already exists")]
    Exists(String),
    /// No such user or role.
    #[error("role \"{0}\" does not exist")]
    NoSuchRole(String),
    /// The bootstrap administrator cannot be dropped or demoted.
    #[error("role \"{0}\" is the bootstrap administrator and cannot be dropped or lose its rights")]
    Bootstrap(String),
    /// The stored form of users and grants could not be read.
    #[error("the stored users and grants are unreadable: {0}")]
    Stored(String),
    /// The lock guarding the catalog was poisoned by a panic elsewhere.
    #[error("internal error: access-control state is unavailable after an earlier failure; restart the server")]
    Poisoned,
}

/// What a user must show when connecting, beyond a password.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Requirement {
    /// Nothing beyond the server-wide settings.
    #[default]
    None,
    /// `REQUIRE SSL`: never over plaintext.
    Ssl,
    /// `REQUIRE X509`: a verified client certificate for this user.
    X509,
    /// `REQUIRE SUBJECT '...' [AND ISSUER '...']`: a verified certificate
    /// with these distinguished names.
    Subject {
        /// Required subject DN, if pinned.
        subject: Option<String>,
        /// Required issuer DN, if pinned.
        issuer: Option<String>,
    },
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("NONE"),
            Self::Ssl => f.write_str("SSL"),
            Self::X509 => f.write_str("X509"),
            Self::Subject { subject, issuer } => {
                let mut parts = Vec::new();
                if let Some(s) = subject {
                    parts.push(format!("SUBJECT '{s}'"));
                }
                if let Some(i) = issuer {
                    parts.push(format!("ISSUER '{i}'"));
                }
                f.write_str(&parts.join(" AND "))
            }
        }
    }
}

/// A user (a role that can log in) or a role.
#[derive(Debug, Clone)]
pub struct User {
    /// Name.
    pub name: String,
    /// SCRAM-SHA-256 verifier, if the user has a password.
    pub password: Option<ScramVerifier>,
    /// Connection requirement.
    pub require: Requirement,
    /// Administrator: creates users, grants, reads every `sys.*` table.
    pub superuser: bool,
    /// Whether it may log in (users yes, roles no).
    pub login: bool,
    /// Roles it is a member of (their grants apply to it).
    pub member_of: BTreeSet<String>,
    /// When it was created.
    pub created: SystemTime,
}

/// The options of `CREATE USER` / `ALTER USER`; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct UserOptions {
    /// New password verifier; `Some(None)` removes the password.
    pub password: Option<Option<ScramVerifier>>,
    /// New requirement.
    pub require: Option<Requirement>,
    /// New superuser flag.
    pub superuser: Option<bool>,
    /// New login flag.
    pub login: Option<bool>,
}

/// A privilege on a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Privilege {
    /// Read rows.
    Select,
    /// Add rows.
    Insert,
    /// Change rows.
    Update,
    /// Remove rows.
    Delete,
}

impl Privilege {
    /// All four, for `GRANT ALL`.
    pub const ALL: [Privilege; 4] = [Self::Select, Self::Insert, Self::Update, Self::Delete];

    /// SQL keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Select => "SELECT",
            Self::Insert => "INSERT",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

/// What a grant is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GrantObject {
    /// One table, by its normalized name (`public.t`).
    Table(String),
    /// Every table, present and future.
    AllTables,
}

impl std::fmt::Display for GrantObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Table(t) => f.write_str(t),
            Self::AllTables => f.write_str("ALL TABLES"),
        }
    }
}

/// One granted privilege.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// Who receives it.
    pub grantee: String,
    /// On what.
    pub object: GrantObject,
    /// Which privilege.
    pub privilege: Privilege,
    /// Who granted it.
    pub grantor: String,
}

/// Users, roles and grants, shared by every session.
#[derive(Debug, Default)]
pub struct AccessControl {
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    users: BTreeMap<String, User>,
    grants: BTreeSet<Grant>,
    bootstrap: Option<String>,
    dummy_salt_key: SaltKey,
}

/// The key deriving the SCRAM salts shown for names that cannot log in
/// (`policy.rs`): random for a new catalog, then kept in it.
#[derive(Clone)]
pub(crate) struct SaltKey(pub(crate) zeroize::Zeroizing<[u8; 32]>);

impl Default for SaltKey {
    fn default() -> Self {
        Self(zeroize::Zeroizing::new(rand::random()))
    }
}

impl std::fmt::Debug for SaltKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaltKey(<32 bytes>)")
    }
}

/// Bounds the walk up role memberships (roles of roles).
const MAX_ROLE_DEPTH: usize = 16;

impl AccessControl {
    /// An empty catalog with a bootstrap administrator `admin_name`
    /// (certificate login only until it is given a password).
    pub fn with_bootstrap_admin(admin_name: &str) -> Self {
        let access = Self::default();
        if let Ok(mut s) = access.state.write() {
            s.users.insert(admin_name.to_owned(), new_user(admin_name, true, true));
            s.bootstrap = Some(admin_name.to_owned());
        }
        access
    }

    /// `CREATE USER` (login) or `CREATE ROLE` (no login).
    pub fn create(&self, name: &str, login: bool, options: UserOptions) -> Result<(), AccessError> {
        let mut s = self.state.write().map_err(|_| AccessError::Poisoned)?;
        if s.users.contains_key(name) {
            return Err(AccessError::Exists(name.to_owned()));
        }
        let mut user = new_user(name, false, login);
        apply(&mut user, options);
        s.users.insert(name.to_owned(), user);
        Ok(())
    }

    /// `ALTER USER`.
    pub fn alter(&self, name: &str, options: UserOptions) -> Result<(), AccessError> {
        let mut s = self.state.write().map_err(|_| AccessError::Poisoned)?;
        let is_bootstrap = s.bootstrap.as_deref() == Some(name);
        let user = s
            .users
            .get_mut(name)
            .ok_or_else(|| AccessError::NoSuchRole(name.to_owned()))?;
        if is_bootstrap && (options.superuser == Some(false) || options.login == Some(false)) {
            return Err(AccessError::Bootstrap(name.to_owned()));
        }
        apply(user, options);
        Ok(())
    }

    /// `DROP USER` / `DROP ROLE`: also drops its grants and memberships.
    pub fn drop_role(&self, name: &str) -> Result<(), AccessError> {
        let mut s = self.state.write().map_err(|_| AccessError::Poisoned)?;
        if s.bootstrap.as_deref() == Some(name) {
            return Err(AccessError::Bootstrap(name.to_owned()));
        }
        s.users
            .remove(name)
            .ok_or_else(|| AccessError::NoSuchRole(name.to_owned()))?;
        s.grants.retain(|g| g.grantee != name);
        for u in s.users.values_mut() {
            u.member_of.remove(name);
        }
        Ok(())
    }

    /// `GRANT role TO user`.
    pub fn grant_role(&self, role: &str, member: &str) -> Result<(), AccessError> {
        let mut s = self.state.write().map_err(|_| AccessError::Poisoned)?;
        if !s.users.contains_key(role) {
            return Err(AccessError::NoSuchRole(role.to_owned()));
        }
        let user = s
            .users
            .get_mut(member)
            .ok_or_else(|| AccessError::NoSuchRole(member.to_owned()))?;
        user.member_of.insert(role.to_owned());
        Ok(())
    }

    /// `REVOKE role FROM user`.
    pub fn revoke_role(&self, role: &str, member: &str) -> Result<(), AccessError> {
        let mut s = self.state.write().map_err(|_| AccessError::Poisoned)?;
        let user = s
            .users
            .get_mut(member)
            .ok_or_else(|| AccessError::NoSuchRole(member.to_owned()))?;
        user.member_of.remove(role);
        Ok(())
    }

    /// `GRANT privileges ON object TO grantee`.
    pub fn grant(
        &self,
        grantee: &str,
        object: GrantObject,
        privileges: &[Privilege],
        grantor: &str,
    ) -> Result<(), AccessError> {
        let mut s = self.state.write().map_err(|_| AccessError::Poisoned)?;
        if !s.users.contains_key(grantee) {
            return Err(AccessError::NoSuchRole(grantee.to_owned()));
        }
        for p in privileges {
            s.grants.insert(Grant {
                grantee: grantee.to_owned(),
                object: object.clone(),
                privilege: *p,
                grantor: grantor.to_owned(),
            });
        }
        Ok(())
    }

    /// `REVOKE privileges ON object FROM grantee`.
    pub fn revoke(&self, grantee: &str, object: &GrantObject, privileges: &[Privilege]) -> Result<(), AccessError> {
        let mut s = self.state.write().map_err(|_| AccessError::Poisoned)?;
        if !s.users.contains_key(grantee) {
            return Err(AccessError::NoSuchRole(grantee.to_owned()));
        }
        s.grants
            .retain(|g| !(g.grantee == grantee && &g.object == object && privileges.contains(&g.privilege)));
        Ok(())
    }

    /// Drops the grants on a table that no longer exists.
    pub fn forget_table(&self, table: &str) {
        if let Ok(mut s) = self.state.write() {
            s.grants.retain(|g| g.object != GrantObject::Table(table.to_owned()));
        }
    }

    /// See [`SaltKey`].
    pub(crate) fn dummy_salt_key(&self) -> SaltKey {
        self.state.read().map(|s| s.dummy_salt_key.clone()).unwrap_or_default()
    }

    pub(crate) fn set_dummy_salt_key(&self, key: SaltKey) {
        if let Ok(mut s) = self.state.write() {
            s.dummy_salt_key = key;
        }
    }

    pub(crate) fn parts(&self) -> (Vec<User>, Vec<Grant>, Option<String>) {
        match self.state.read() {
            Ok(s) => (
                s.users.values().cloned().collect(),
                s.grants.iter().cloned().collect(),
                s.bootstrap.clone(),
            ),
            Err(_) => (Vec::new(), Vec::new(), None),
        }
    }

    pub(crate) fn replace(
        &self,
        users: Vec<User>,
        grants: Vec<Grant>,
        bootstrap: Option<String>,
    ) -> Result<(), AccessError> {
        let mut s = self.state.write().map_err(|_| AccessError::Poisoned)?;
        s.users = users.into_iter().map(|u| (u.name.clone(), u)).collect();
        s.grants = grants.into_iter().collect();
        s.bootstrap = bootstrap;
        Ok(())
    }

    /// A copy of one user.
    pub fn user(&self, name: &str) -> Option<User> {
        self.state.read().ok()?.users.get(name).cloned()
    }

    /// Every user and role.
    pub fn users(&self) -> Vec<User> {
        self.state
            .read()
            .map(|s| s.users.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every grant.
    pub fn grants(&self) -> Vec<Grant> {
        self.state
            .read()
            .map(|s| s.grants.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `user` is an administrator, directly or through a role.
    pub fn is_superuser(&self, user: &str) -> bool {
        let Ok(s) = self.state.read() else { return false };
        roles_of(&s, user)
            .iter()
            .any(|r| s.users.get(r).is_some_and(|u| u.superuser))
    }

    /// Whether `user` holds `privilege` on `table`: as an administrator, or
    /// through a grant to it or to one of its roles, on the table or on ALL TABLES.
    pub fn has_privilege(&self, user: &str, table: &str, privilege: Privilege) -> bool {
        let Ok(s) = self.state.read() else { return false };
        let roles = roles_of(&s, user);
        if roles.iter().any(|r| s.users.get(r).is_some_and(|u| u.superuser)) {
            return true;
        }
        s.grants.iter().any(|g| {
            g.privilege == privilege
                && roles.contains(&g.grantee)
                && match &g.object {
                    GrantObject::AllTables => true,
                    GrantObject::Table(t) => t == table,
                }
        })
    }
}

fn roles_of(s: &State, user: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut frontier = vec![user.to_owned()];
    for _ in 0..MAX_ROLE_DEPTH {
        let mut next = Vec::new();
        for name in frontier {
            if seen.insert(name.clone())
                && let Some(u) = s.users.get(&name)
            {
                next.extend(u.member_of.iter().cloned());
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    seen
}

fn new_user(name: &str, superuser: bool, login: bool) -> User {
    User {
        name: name.to_owned(),
        password: None,
        require: Requirement::None,
        superuser,
        login,
        member_of: BTreeSet::new(),
        created: SystemTime::now(),
    }
}

fn apply(user: &mut User, options: UserOptions) {
    if let Some(p) = options.password {
        user.password = p;
    }
    if let Some(r) = options.require {
        user.require = r;
    }
    if let Some(s) = options.superuser {
        user.superuser = s;
    }
    if let Some(l) = options.login {
        user.login = l;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_apply_directly_through_roles_and_all_tables() {
        let ac = AccessControl::with_bootstrap_admin("admin");
        ac.create("alice", true, UserOptions::default()).unwrap();
        ac.create("readers", false, UserOptions::default()).unwrap();
        assert!(!ac.has_privilege("alice", "public.t", Privilege::Select));
        ac.grant(
            "readers",
            GrantObject::Table("public.t".into()),
            &[Privilege::Select],
            "admin",
        )
        .unwrap();
        ac.grant_role("readers", "alice").unwrap();
        assert!(ac.has_privilege("alice", "public.t", Privilege::Select));
        assert!(!ac.has_privilege("alice", "public.t", Privilege::Insert));
        assert!(!ac.has_privilege("alice", "public.u", Privilege::Select));
        ac.grant("alice", GrantObject::AllTables, &[Privilege::Insert], "admin")
            .unwrap();
        assert!(ac.has_privilege("alice", "public.u", Privilege::Insert));
        ac.revoke("alice", &GrantObject::AllTables, &[Privilege::Insert])
            .unwrap();
        assert!(!ac.has_privilege("alice", "public.u", Privilege::Insert));
        assert!(ac.has_privilege("admin", "public.u", Privilege::Delete));
    }

    #[test]
    fn bootstrap_admin_cannot_be_dropped_or_demoted() {
        let ac = AccessControl::with_bootstrap_admin("admin");
        assert_eq!(ac.drop_role("admin"), Err(AccessError::Bootstrap("admin".into())));
        let demote = UserOptions {
            superuser: Some(false),
            ..Default::default()
        };
        assert!(ac.alter("admin", demote).is_err());
        assert!(ac.is_superuser("admin"));
    }

    #[test]
    fn dropping_a_user_drops_its_grants_and_cyclic_roles_terminate() {
        let ac = AccessControl::with_bootstrap_admin("admin");
        ac.create("a", false, UserOptions::default()).unwrap();
        ac.create("b", false, UserOptions::default()).unwrap();
        ac.grant_role("a", "b").unwrap();
        ac.grant_role("b", "a").unwrap();
        assert!(!ac.has_privilege("a", "t", Privilege::Select));
        ac.grant("b", GrantObject::AllTables, &[Privilege::Select], "admin")
            .unwrap();
        ac.drop_role("b").unwrap();
        assert!(ac.grants().is_empty());
        assert!(ac.user("a").unwrap().member_of.is_empty());
    }
}
