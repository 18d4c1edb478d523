//! The statements DataFusion does not parse: users, roles, grants, TLS
//! reload, `SHOW`, `SET` and transaction control.
//!
//! [`parse`] returns `Ok(None)` for anything else, which then goes to
//! DataFusion. It reads text from any client, so it never panics on any
//! input (`fuzz/fuzz_targets/statements.rs`).
#![forbid(unsafe_code)]

use sealdb_auth::{Privilege, Requirement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// A statement that does not parse or is refused as written. Every
/// variant maps to one SQLSTATE in `sealdb-sql`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatementError {
    /// The statement does not parse (42601).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A form sealdb does not support, with what to use instead (0A000).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// A form that no one may run, such as a password in the clear where a
    /// certificate is required (42501).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

/// A parsed security or session statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityStatement {
    /// `CREATE USER` (login = true) or `CREATE ROLE` (login = false).
    CreateUser {
        /// Name.
        name: String,
        /// Whether it can log in.
        login: bool,
        /// Options.
        options: Options,
    },
    /// `ALTER USER|ROLE name [WITH] options`.
    AlterUser {
        /// Name.
        name: String,
        /// Options.
        options: Options,
    },
    /// `DROP USER|ROLE [IF EXISTS] name[, ...]`.
    DropUser {
        /// Names.
        names: Vec<String>,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `GRANT privileges ON target TO grantees`.
    Grant {
        /// Privileges.
        privileges: Vec<Privilege>,
        /// Target.
        target: Target,
        /// Receivers.
        grantees: Vec<String>,
    },
    /// `REVOKE privileges ON target FROM grantees`.
    Revoke {
        /// Privileges.
        privileges: Vec<Privilege>,
        /// Target.
        target: Target,
        /// Losers.
        grantees: Vec<String>,
    },
    /// `GRANT role TO user`.
    GrantRole {
        /// Role.
        role: String,
        /// Members.
        members: Vec<String>,
    },
    /// `REVOKE role FROM user`.
    RevokeRole {
        /// Role.
        role: String,
        /// Members.
        members: Vec<String>,
    },
    /// `ALTER SYSTEM RELOAD TLS`.
    ReloadTls,
    /// `ALTER SYSTEM ROTATE MASTER KEY`: a new master-key version wraps the
    /// key ring; nothing else is rewritten.
    RotateMasterKey,
    /// `ALTER TABLE t ROTATE KEY`: a new table key version for new data.
    RotateTableKey {
        /// The table, as written.
        table: String,
    },
    /// `ALTER TABLE t REKEY`: rewrite every file of the table under its
    /// current key version, in the background.
    RekeyTable {
        /// The table, as written.
        table: String,
    },
    /// `ALTER TABLE t SET (encryption = 'aes-256-gcm' | 'none')`.
    SetTableEncryption {
        /// The table, as written.
        table: String,
        /// `aes-256-gcm` or `none`, as written.
        encryption: String,
    },
    /// `ALTER SYSTEM REKEY`: new key-ring and system keys; the catalog, the
    /// log and the audit log are rewritten under them.
    RekeySystem,
    /// `ALTER SYSTEM SET key_provider = 'kmip:GROUP'`: the master key moves
    /// to a new key in that provider, online.
    SetKeyProvider(String),
    /// `CHECKPOINT`: flush rows held in memory and the log into segments.
    Checkpoint,
    /// `VACUUM [FULL] [FREEZE] [VERBOSE] [ANALYZE] [(options)] [table, ...]`:
    /// a checkpoint, then the compaction of segments made of deleted rows.
    Vacuum {
        /// The tables named, as written; none means every table.
        tables: Vec<String>,
    },
    /// `DEALLOCATE [PREPARE] {name | ALL}`: drivers (psycopg) send it after
    /// a rollback. Protocol-level statements are replaced when prepared
    /// again under the same name, so it has nothing to free.
    Deallocate {
        /// `ALL`.
        all: bool,
    },
    /// `SHOW name` for a non-DataFusion setting.
    Show(String),
    /// `SET [SESSION|LOCAL] name {=|TO} value` for a non-DataFusion setting.
    Set(String, String),
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
}

impl SecurityStatement {
    /// What the audit log records of this statement once it succeeded:
    /// event and detail (never a password). `None` for statements that
    /// change no user, grant, role or key.
    pub fn audit_summary(&self) -> Option<(&'static str, String)> {
        let list = |v: &[String]| v.join(", ");
        let privileges = |p: &[Privilege]| p.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ");
        let target = |t: &Target| match t {
            Target::Tables(names) => list(names),
            Target::AllTables => "ALL TABLES".to_owned(),
        };
        let options = |o: &Options| {
            let mut parts = Vec::new();
            match &o.password {
                Some(Some(_)) => parts.push("password set".to_owned()),
                Some(None) => parts.push("password removed".to_owned()),
                None => {}
            }
            if let Some(r) = &o.require {
                parts.push(format!("require {r}"));
            }
            if let Some(su) = o.superuser {
                parts.push(if su { "superuser" } else { "nosuperuser" }.to_owned());
            }
            if let Some(login) = o.login {
                parts.push(if login { "login" } else { "nologin" }.to_owned());
            }
            parts.join(", ")
        };
        Some(match self {
            Self::CreateUser {
                name,
                login,
                options: o,
            } => (
                if *login { "create user" } else { "create role" },
                format!("{name}: {}", options(o)),
            ),
            Self::AlterUser { name, options: o } => ("alter user", format!("{name}: {}", options(o))),
            Self::DropUser { names, .. } => ("drop user", list(names)),
            Self::Grant {
                privileges: p,
                target: t,
                grantees,
            } => (
                "grant",
                format!("{} on {} to {}", privileges(p), target(t), list(grantees)),
            ),
            Self::Revoke {
                privileges: p,
                target: t,
                grantees,
            } => (
                "revoke",
                format!("{} on {} from {}", privileges(p), target(t), list(grantees)),
            ),
            Self::GrantRole { role, members } => ("grant role", format!("{role} to {}", list(members))),
            Self::RevokeRole { role, members } => ("revoke role", format!("{role} from {}", list(members))),
            Self::ReloadTls => ("reload tls", String::new()),
            Self::RotateMasterKey => ("key statement", "ALTER SYSTEM ROTATE MASTER KEY".to_owned()),
            Self::RotateTableKey { table } => ("key statement", format!("ALTER TABLE {table} ROTATE KEY")),
            Self::RekeyTable { table } => ("key statement", format!("ALTER TABLE {table} REKEY")),
            Self::SetTableEncryption { table, encryption } => (
                "key statement",
                format!("ALTER TABLE {table} SET (encryption = '{encryption}')"),
            ),
            Self::RekeySystem => ("key statement", "ALTER SYSTEM REKEY".to_owned()),
            Self::SetKeyProvider(name) => ("key statement", format!("ALTER SYSTEM SET key_provider = '{name}'")),
            _ => return None,
        })
    }
}

/// What a grant is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Tables by name as written (resolved by the engine).
    Tables(Vec<String>),
    /// `ALL TABLES [IN SCHEMA public]`.
    AllTables,
}

/// `CREATE/ALTER USER` options; `None` leaves a field alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// `PASSWORD 'x'` (`Some(Some)`), `PASSWORD NULL` (`Some(None)`).
    pub password: Option<Option<String>>,
    /// `REQUIRE ...`.
    pub require: Option<Requirement>,
    /// `SUPERUSER` / `NOSUPERUSER`.
    pub superuser: Option<bool>,
    /// `LOGIN` / `NOLOGIN`.
    pub login: Option<bool>,
}

/// Parses one statement if it is one of ours.
pub fn parse(sql: &str) -> Result<Option<SecurityStatement>, StatementError> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| StatementError::Syntax(e.to_string()))?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect::<Vec<_>>();
    let mut p = P { tokens, pos: 0 };
    while p.eat_token(&Token::SemiColon) {}
    let statement = match p.word_upper().as_deref() {
        Some("CREATE") => match p.peek_word_upper(1).as_deref() {
            Some("USER") => {
                p.pos += 2;
                p.create_user(true)?
            }
            Some("ROLE") => {
                p.pos += 2;
                p.create_user(false)?
            }
            Some("EXTERNAL") | Some("UNBOUNDED") => {
                return Err(StatementError::PermissionDenied(
                    "CREATE EXTERNAL TABLE reads server files and is not allowed; load data with INSERT".into(),
                ));
            }
            _ => return Ok(None),
        },
        Some("ALTER") => match p.peek_word_upper(1).as_deref() {
            Some("USER") | Some("ROLE") => {
                p.pos += 2;
                let name = p.ident("a user name")?;
                p.eat_word("WITH");
                SecurityStatement::AlterUser {
                    name,
                    options: p.options()?,
                }
            }
            Some("SYSTEM") if p.peek_word_upper(2).as_deref() == Some("RELOAD") => {
                p.pos += 3;
                p.expect_word("TLS")?;
                SecurityStatement::ReloadTls
            }
            Some("TABLE") => {
                // Only `ALTER TABLE name ROTATE KEY`; other ALTER TABLEs go
                // to the SQL planner.
                let start = p.pos;
                p.pos += 2;
                match p.qualified("a table name") {
                    Ok(table) if p.eat_word("ROTATE") => {
                        p.expect_word("KEY")?;
                        SecurityStatement::RotateTableKey { table }
                    }
                    Ok(table) if p.eat_word("REKEY") => SecurityStatement::RekeyTable { table },
                    Ok(table) if p.eat_word("SET") => {
                        if !p.eat_token(&Token::LParen) {
                            return Err(StatementError::Syntax(
                                "ALTER TABLE t SET expects (encryption = 'aes-256-gcm' | 'none')".into(),
                            ));
                        }
                        let option = p.ident("a table option")?;
                        if option != "encryption" {
                            return Err(StatementError::NotSupported(format!(
                                "ALTER TABLE ... SET ({option} = ...): only encryption can be changed"
                            )));
                        }
                        if !p.eat_token(&Token::Eq) {
                            return Err(StatementError::Syntax(
                                "ALTER TABLE t SET (encryption = '...') expects =".into(),
                            ));
                        }
                        let encryption = p.string("'aes-256-gcm' or 'none'")?;
                        if !p.eat_token(&Token::RParen) {
                            return Err(StatementError::Syntax(
                                "ALTER TABLE t SET (encryption = '...') expects )".into(),
                            ));
                        }
                        SecurityStatement::SetTableEncryption { table, encryption }
                    }
                    _ => {
                        p.pos = start;
                        return Ok(None);
                    }
                }
            }
            Some("SYSTEM") if p.peek_word_upper(2).as_deref() == Some("SET") => {
                p.pos += 3;
                let name = p.ident("a setting name")?;
                if name != "key_provider" {
                    return Err(StatementError::NotSupported(format!(
                        "ALTER SYSTEM SET {name}: only key_provider can be changed online; other settings go in the config file"
                    )));
                }
                if !p.eat_token(&Token::Eq) {
                    p.expect_word("TO")?;
                }
                SecurityStatement::SetKeyProvider(p.string("the key provider, 'local' or 'kmip:GROUP'")?)
            }
            Some("SYSTEM") if p.peek_word_upper(2).as_deref() == Some("REKEY") => {
                p.pos += 3;
                SecurityStatement::RekeySystem
            }
            Some("SYSTEM") if p.peek_word_upper(2).as_deref() == Some("ROTATE") => {
                p.pos += 3;
                p.expect_word("MASTER")?;
                p.expect_word("KEY")?;
                SecurityStatement::RotateMasterKey
            }
            _ => return Ok(None),
        },
        Some("DROP") => match p.peek_word_upper(1).as_deref() {
            Some("USER") | Some("ROLE") => {
                p.pos += 2;
                let if_exists = p.eat_word("IF") && p.expect_word("EXISTS").is_ok();
                SecurityStatement::DropUser {
                    names: p.ident_list("a user name")?,
                    if_exists,
                }
            }
            _ => return Ok(None),
        },
        Some("GRANT") => {
            p.pos += 1;
            p.grant_or_revoke(true)?
        }
        Some("REVOKE") => {
            p.pos += 1;
            p.grant_or_revoke(false)?
        }
        Some("SHOW") => {
            let name = p.peek_word(1).unwrap_or_default().to_ascii_lowercase();
            if name.starts_with("datafusion")
                || name == "all"
                || name == "columns"
                || name == "tables"
                || name == "functions"
            {
                return Ok(None);
            }
            p.pos += 2;
            SecurityStatement::Show(name)
        }
        Some("SET") => {
            p.pos += 1;
            if p.eat_word("SESSION") {
                if p.eat_word("CHARACTERISTICS") {
                    // SET SESSION CHARACTERISTICS AS TRANSACTION ...: accepted, one isolation level.
                    p.pos = p.tokens.len();
                    return Ok(Some(SecurityStatement::Set(
                        "transaction_characteristics".into(),
                        String::new(),
                    )));
                }
            } else {
                p.eat_word("LOCAL");
            }
            let name = p.ident("a setting name")?.to_ascii_lowercase();
            if name.starts_with("datafusion") {
                return Ok(None);
            }
            let mut name = name;
            while p.eat_token(&Token::Period) {
                name = format!("{name}.{}", p.ident("a setting name")?.to_ascii_lowercase());
            }
            if !(p.eat_token(&Token::Eq) || p.eat_word("TO")) {
                // SET TIME ZONE 'UTC', SET TRANSACTION ...
                let rest = p.rest_text();
                p.pos = p.tokens.len();
                return Ok(Some(SecurityStatement::Set(name, rest)));
            }
            let value = p.rest_text();
            p.pos = p.tokens.len();
            SecurityStatement::Set(name, value)
        }
        Some("COPY") => {
            let to_client = p.tokens.iter().any(|t| matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case("STDIN") || w.value.eq_ignore_ascii_case("STDOUT")));
            // To and from the client: the engine runs it.
            if to_client {
                return Ok(None);
            }
            return Err(StatementError::PermissionDenied(
                "COPY to or from server files or programs is not allowed; use COPY ... FROM STDIN or TO STDOUT (psql: \\copy)"
                    .into(),
            ));
        }
        Some("BEGIN") | Some("START") => {
            p.pos = p.tokens.len();
            SecurityStatement::Begin
        }
        Some("COMMIT") | Some("END") => {
            p.pos = p.tokens.len();
            SecurityStatement::Commit
        }
        Some("ROLLBACK") | Some("ABORT") => {
            p.pos = p.tokens.len();
            SecurityStatement::Rollback
        }
        Some("CHECKPOINT") => {
            p.pos += 1;
            SecurityStatement::Checkpoint
        }
        Some("VACUUM") => {
            p.pos += 1;
            // PostgreSQL's options tune its own heap; sealdb's segments are
            // written once, so each of them means the same here.
            if p.eat_token(&Token::LParen) {
                while !p.eat_token(&Token::RParen) {
                    if p.peek(0).is_none() {
                        return Err(p.unexpected("')' closing the VACUUM options"));
                    }
                    p.pos += 1;
                }
            }
            for word in ["FULL", "FREEZE", "VERBOSE", "ANALYZE", "ANALYSE"] {
                p.eat_word(word);
            }
            let mut tables = Vec::new();
            if p.peek(0).is_some() {
                tables.push(p.qualified("a table name")?);
                while p.eat_token(&Token::Comma) {
                    tables.push(p.qualified("a table name")?);
                }
            }
            SecurityStatement::Vacuum { tables }
        }
        Some("DEALLOCATE") => {
            p.pos += 1;
            p.eat_word("PREPARE");
            let all = p.eat_word("ALL");
            if !all {
                p.ident("a prepared statement name")?;
            }
            SecurityStatement::Deallocate { all }
        }
        _ => return Ok(None),
    };
    while p.eat_token(&Token::SemiColon) {}
    if p.pos < p.tokens.len() && !matches!(p.tokens[p.pos], Token::EOF) {
        return Err(StatementError::Syntax(format!(
            "unexpected {} after the end of the statement",
            p.tokens[p.pos]
        )));
    }
    Ok(Some(statement))
}

struct P {
    tokens: Vec<Token>,
    pos: usize,
}

impl P {
    fn peek(&self, ahead: usize) -> Option<&Token> {
        self.tokens.get(self.pos + ahead)
    }

    fn peek_word(&self, ahead: usize) -> Option<String> {
        match self.peek(ahead)? {
            Token::Word(w) => Some(w.value.clone()),
            _ => None,
        }
    }

    fn peek_word_upper(&self, ahead: usize) -> Option<String> {
        match self.peek(ahead)? {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn word_upper(&self) -> Option<String> {
        self.peek_word_upper(0)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.word_upper().as_deref() == Some(word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_token(&mut self, token: &Token) -> bool {
        if self.peek(0) == Some(token) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_word(&mut self, word: &str) -> Result<(), StatementError> {
        if self.eat_word(word) {
            Ok(())
        } else {
            Err(self.unexpected(word))
        }
    }

    fn unexpected(&self, wanted: &str) -> StatementError {
        match self.peek(0) {
            Some(t) if !matches!(t, Token::EOF) => StatementError::Syntax(format!("expected {wanted}, found {t}")),
            _ => StatementError::Syntax(format!("expected {wanted} at the end of the statement")),
        }
    }

    /// An identifier: unquoted ones are folded to lower case, as PostgreSQL does.
    fn ident(&mut self, what: &str) -> Result<String, StatementError> {
        match self.peek(0) {
            Some(Token::Word(w)) => {
                let v = if w.quote_style.is_some() {
                    w.value.clone()
                } else {
                    w.value.to_ascii_lowercase()
                };
                self.pos += 1;
                Ok(v)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn ident_list(&mut self, what: &str) -> Result<Vec<String>, StatementError> {
        let mut out = vec![self.ident(what)?];
        while self.eat_token(&Token::Comma) {
            out.push(self.ident(what)?);
        }
        Ok(out)
    }

    /// A possibly qualified name: `t`, `public.t`, `"T"`.
    fn qualified(&mut self, what: &str) -> Result<String, StatementError> {
        let mut name = self.ident(what)?;
        while self.eat_token(&Token::Period) {
            name = format!("{name}.{}", self.ident(what)?);
        }
        Ok(name)
    }

    fn string(&mut self, what: &str) -> Result<String, StatementError> {
        match self.peek(0) {
            Some(Token::SingleQuotedString(s)) | Some(Token::EscapedStringLiteral(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn rest_text(&self) -> String {
        self.tokens[self.pos..]
            .iter()
            .filter(|t| !matches!(t, Token::SemiColon | Token::EOF))
            .map(|t| match t {
                Token::SingleQuotedString(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn create_user(&mut self, login: bool) -> Result<SecurityStatement, StatementError> {
        if self.eat_word("IF") {
            return Err(StatementError::NotSupported(
                "CREATE USER IF NOT EXISTS; check sys.users first".into(),
            ));
        }
        let name = self.ident("a user name")?;
        self.eat_word("WITH");
        Ok(SecurityStatement::CreateUser {
            name,
            login,
            options: self.options()?,
        })
    }

    fn options(&mut self) -> Result<Options, StatementError> {
        let mut o = Options::default();
        loop {
            match self.word_upper().as_deref() {
                Some("PASSWORD") => {
                    self.pos += 1;
                    o.password = Some(if self.eat_word("NULL") {
                        None
                    } else {
                        Some(self.string("a quoted password")?)
                    });
                }
                Some("ENCRYPTED") => {
                    self.pos += 1;
                }
                Some("IDENTIFIED") => {
                    // MySQL spelling: IDENTIFIED BY 'x'
                    self.pos += 1;
                    self.expect_word("BY")?;
                    o.password = Some(Some(self.string("a quoted password")?));
                }
                Some("SUPERUSER") => {
                    self.pos += 1;
                    o.superuser = Some(true);
                }
                Some("NOSUPERUSER") => {
                    self.pos += 1;
                    o.superuser = Some(false);
                }
                Some("LOGIN") => {
                    self.pos += 1;
                    o.login = Some(true);
                }
                Some("NOLOGIN") => {
                    self.pos += 1;
                    o.login = Some(false);
                }
                Some("REQUIRE") => {
                    self.pos += 1;
                    o.require = Some(self.requirement()?);
                }
                _ => break,
            }
        }
        Ok(o)
    }

    fn requirement(&mut self) -> Result<Requirement, StatementError> {
        match self.word_upper().as_deref() {
            Some("NONE") => {
                self.pos += 1;
                Ok(Requirement::None)
            }
            Some("SSL") => {
                self.pos += 1;
                Ok(Requirement::Ssl)
            }
            Some("X509") => {
                self.pos += 1;
                Ok(Requirement::X509)
            }
            Some("SUBJECT") | Some("ISSUER") => {
                let (mut subject, mut issuer) = (None, None);
                loop {
                    if self.eat_word("SUBJECT") {
                        subject = Some(self.string("a quoted subject such as '/O=Example/CN=alice'")?);
                    } else if self.eat_word("ISSUER") {
                        issuer = Some(self.string("a quoted issuer such as '/O=Example/CN=Example CA'")?);
                    } else {
                        return Err(self.unexpected("SUBJECT or ISSUER"));
                    }
                    if !self.eat_word("AND") {
                        break;
                    }
                }
                for name in subject.iter().chain(issuer.iter()) {
                    if let Err(why) = sealdb_auth::DistinguishedName::parse(name) {
                        return Err(StatementError::Syntax(format!(
                            "'{name}' is not a distinguished name: {why}; write it as '/O=Example, Inc./CN=alice' or 'CN=alice,O=Example\\, Inc.'"
                        )));
                    }
                }
                Ok(Requirement::Subject { subject, issuer })
            }
            _ => Err(self.unexpected("NONE, SSL, X509, SUBJECT '...' or ISSUER '...'")),
        }
    }

    fn privileges(&mut self) -> Result<Option<Vec<Privilege>>, StatementError> {
        // Privileges are keywords followed by ON; a role grant is a name followed by TO/FROM.
        let mut out = Vec::new();
        let start = self.pos;
        loop {
            match self.word_upper().as_deref() {
                Some("SELECT") => out.push(Privilege::Select),
                Some("INSERT") => out.push(Privilege::Insert),
                Some("UPDATE") => out.push(Privilege::Update),
                Some("DELETE") => out.push(Privilege::Delete),
                Some("ALL") => {
                    self.pos += 1;
                    self.eat_word("PRIVILEGES");
                    out.extend(Privilege::ALL);
                    if !self.eat_token(&Token::Comma) {
                        break;
                    }
                    continue;
                }
                _ => {
                    self.pos = start;
                    return Ok(None);
                }
            }
            self.pos += 1;
            if !self.eat_token(&Token::Comma) {
                break;
            }
        }
        if self.word_upper().as_deref() != Some("ON") {
            self.pos = start;
            return Ok(None);
        }
        Ok(Some(out))
    }

    fn grant_or_revoke(&mut self, grant: bool) -> Result<SecurityStatement, StatementError> {
        let Some(privileges) = self.privileges()? else {
            let role = self.ident("a privilege (SELECT, INSERT, UPDATE, DELETE, ALL) or a role name")?;
            self.expect_word(if grant { "TO" } else { "FROM" })?;
            let members = self.ident_list("a user name")?;
            return Ok(if grant {
                SecurityStatement::GrantRole { role, members }
            } else {
                SecurityStatement::RevokeRole { role, members }
            });
        };
        self.expect_word("ON")?;
        let target = if self.eat_word("ALL") {
            self.expect_word("TABLES")?;
            if self.eat_word("IN") {
                self.expect_word("SCHEMA")?;
                let schema = self.ident("a schema name")?;
                if schema != "public" {
                    return Err(StatementError::NotSupported(format!(
                        "schema {schema}: tables live in schema public"
                    )));
                }
            }
            Target::AllTables
        } else {
            self.eat_word("TABLE");
            let mut tables = vec![self.qualified("a table name")?];
            while self.eat_token(&Token::Comma) {
                tables.push(self.qualified("a table name")?);
            }
            Target::Tables(tables)
        };
        self.expect_word(if grant { "TO" } else { "FROM" })?;
        let grantees = self.ident_list("a user or role name")?;
        Ok(if grant {
            SecurityStatement::Grant {
                privileges,
                target,
                grantees,
            }
        } else {
            SecurityStatement::Revoke {
                privileges,
                target,
                grantees,
            }
        })
    }
}

/// Entry points of the fuzz targets (`fuzz/fuzz_targets/`), which the test
/// suite also replays over the committed corpus; not a stable API.
#[doc(hidden)]
pub mod internal {
    /// [`crate::parse`] on any text a client sends.
    pub fn fuzz_statements(data: &[u8]) {
        if let Ok(sql) = std::str::from_utf8(data) {
            let _ = crate::parse(sql);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> SecurityStatement {
        parse(sql).unwrap().unwrap()
    }

    #[test]
    fn create_user_with_password_and_requirements() {
        let SecurityStatement::CreateUser { name, login, options } =
            ok("CREATE USER Alice WITH PASSWORD 'p''w' REQUIRE SUBJECT '/CN=alice' AND ISSUER '/CN=ca';")
        else {
            panic!()
        };
        assert_eq!((name.as_str(), login), ("alice", true));
        assert_eq!(options.password, Some(Some("p'w".into())));
        assert_eq!(
            options.require,
            Some(Requirement::Subject {
                subject: Some("/CN=alice".into()),
                issuer: Some("/CN=ca".into())
            })
        );
        let SecurityStatement::CreateUser { options, .. } = ok("create user bob require x509") else {
            panic!()
        };
        assert_eq!(options.require, Some(Requirement::X509));
    }

    #[test]
    fn grants_on_tables_all_tables_and_roles() {
        assert_eq!(
            ok("GRANT SELECT, INSERT ON TABLE t, public.u TO alice, bob"),
            SecurityStatement::Grant {
                privileges: vec![Privilege::Select, Privilege::Insert],
                target: Target::Tables(vec!["t".into(), "public.u".into()]),
                grantees: vec!["alice".into(), "bob".into()]
            }
        );
        assert_eq!(
            ok("REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM alice"),
            SecurityStatement::Revoke {
                privileges: Privilege::ALL.to_vec(),
                target: Target::AllTables,
                grantees: vec!["alice".into()]
            }
        );
        assert_eq!(
            ok("GRANT readers TO alice"),
            SecurityStatement::GrantRole {
                role: "readers".into(),
                members: vec!["alice".into()]
            }
        );
    }

    #[test]
    fn other_statements_are_left_to_datafusion_and_garbage_is_a_syntax_error() {
        assert_eq!(parse("SELECT 1").unwrap(), None);
        assert_eq!(parse("CREATE TABLE t (a int)").unwrap(), None);
        assert!(matches!(
            parse("CREATE USER alice REQUIRE FOO"),
            Err(StatementError::Syntax(_))
        ));
        assert!(matches!(
            parse("GRANT SELECT ON t alice"),
            Err(StatementError::Syntax(_))
        ));
        assert_eq!(ok("ALTER SYSTEM RELOAD TLS"), SecurityStatement::ReloadTls);
        assert_eq!(ok("alter system rotate master key"), SecurityStatement::RotateMasterKey);
        assert_eq!(ok("ALTER SYSTEM REKEY"), SecurityStatement::RekeySystem);
        assert_eq!(
            ok("alter table t rekey"),
            SecurityStatement::RekeyTable { table: "t".into() }
        );
        assert_eq!(
            ok("ALTER TABLE public.t SET (encryption = 'none')"),
            SecurityStatement::SetTableEncryption {
                table: "public.t".into(),
                encryption: "none".into()
            }
        );
        assert!(parse("ALTER TABLE t SET (fillfactor = 10)").is_err());
        assert!(parse("ALTER TABLE t SET (encryption = 'none'").is_err());
        assert_eq!(
            ok("ALTER TABLE public.orders ROTATE KEY"),
            SecurityStatement::RotateTableKey {
                table: "public.orders".into()
            }
        );
        assert_eq!(
            ok("ALTER SYSTEM SET key_provider = 'kmip:hsm'"),
            SecurityStatement::SetKeyProvider("kmip:hsm".into())
        );
        assert_eq!(
            ok("alter system set key_provider to 'local'"),
            SecurityStatement::SetKeyProvider("local".into())
        );
        assert_eq!(ok("show SSL"), SecurityStatement::Show("ssl".into()));
        assert_eq!(
            ok("SET application_name = 'x'"),
            SecurityStatement::Set("application_name".into(), "x".into())
        );
    }
}
