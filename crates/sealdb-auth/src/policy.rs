//! How a connecting client must authenticate.

use crate::{Requirement, ScramVerifier, User, subject_matches};

/// What a verified client certificate says.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// The user it names through the common name or `cert-user-map`.
    pub mapped_user: Option<String>,
}

/// What the connection offers before authentication.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    /// The connection is TLS.
    pub tls: bool,
    /// The client presented a certificate that passed chain, date and CRL checks.
    pub certificate: Option<CertFacts>,
    /// `pki-db-client-auth = true`: a certificate is required of everyone.
    pub certificate_required: bool,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone)]
pub enum AuthPlan {
    /// The verified certificate authenticates the user: no password.
    Certificate,
    /// Run SCRAM-SHA-256 against this verifier.
    Password(ScramVerifier),
    /// Refuse, with this message for the client.
    Refuse(String),
}

/// Decides how `requested` (the `user` of the startup packet) must
/// authenticate. `user` is the catalog entry, `None` if unknown.
///
/// An unknown user or a user with no password gets the same treatment as a
/// wrong password when no certificate is involved, so that the flow does not
/// reveal which user names exist.
pub fn decide(requested: &str, user: Option<&User>, facts: &ConnectionFacts) -> AuthPlan {
    let refuse = AuthPlan::Refuse;
    if let Some(cert) = &facts.certificate {
        match cert.mapped_user.as_deref() {
            Some(named) if named == requested => {}
            Some(named) => {
                return refuse(format!(
                    "the client certificate \"{}\" is for user \"{named}\", not \"{requested}\"; connect as \"{named}\" or use the certificate of \"{requested}\"",
                    cert.subject
                ));
            }
            None => {
                return refuse(format!(
                    "the client certificate \"{}\" names no database user: no cert-user-map rule matches it",
                    cert.subject
                ));
            }
        }
    }
    let Some(user) = user.filter(|u| u.login) else {
        return match &facts.certificate {
            Some(_) => refuse(format!(
                "user \"{requested}\" does not exist or may not log in; an administrator can run CREATE USER {requested}"
            )),
            None => AuthPlan::Password(dummy_verifier(requested)),
        };
    };
    if facts.certificate_required && facts.certificate.is_none() {
        return refuse(certificate_needed(
            requested,
            "this server requires a client certificate of every user (pki-db-client-auth = true)",
        ));
    }
    match &user.require {
        Requirement::None => {}
        Requirement::Ssl => {
            if !facts.tls {
                return refuse(format!(
                    "user \"{requested}\" must connect over TLS (REQUIRE SSL); connect with sslmode=verify-full"
                ));
            }
        }
        Requirement::X509 => {
            if facts.certificate.is_none() {
                return refuse(certificate_needed(
                    requested,
                    &format!("user \"{requested}\" requires a client certificate (REQUIRE X509)"),
                ));
            }
        }
        Requirement::Subject { subject, issuer } => {
            let Some(cert) = &facts.certificate else {
                return refuse(certificate_needed(
                    requested,
                    &format!("user \"{requested}\" requires a client certificate ({})", user.require),
                ));
            };
            if let Some(want) = subject
                && !subject_matches(want, &cert.subject)
            {
                return refuse(format!(
                    "the client certificate subject \"{}\" does not match the subject required of user \"{requested}\" (REQUIRE SUBJECT '{want}')",
                    cert.subject
                ));
            }
            if let Some(want) = issuer
                && !subject_matches(want, &cert.issuer)
            {
                return refuse(format!(
                    "the client certificate issuer \"{}\" does not match the issuer required of user \"{requested}\" (REQUIRE ISSUER '{want}')",
                    cert.issuer
                ));
            }
        }
    }
    if facts.certificate.is_some() {
        return AuthPlan::Certificate;
    }
    match &user.password {
        Some(v) => AuthPlan::Password(v.clone()),
        // Same flow as a wrong password: no hint that the user exists.
        None => AuthPlan::Password(dummy_verifier(requested)),
    }
}

fn certificate_needed(user: &str, why: &str) -> String {
    format!("{why}; connect with sslcert=client.{user}.crt sslkey=client.{user}.key")
}

/// The verifier SCRAM runs against for `name`: the stored one, or, for an
/// unknown user, one without a password, or one that may not log in, a
/// verifier no password matches. Used by [`decide`] and by the SCRAM
/// exchange so both see the same thing.
pub fn password_verifier(name: &str, user: Option<&User>) -> ScramVerifier {
    user.filter(|u| u.login)
        .and_then(|u| u.password.clone())
        .unwrap_or_else(|| dummy_verifier(name))
}

/// A verifier no password matches, stable per user name so that repeated
/// attempts look the same as for a real user.
fn dummy_verifier(user: &str) -> ScramVerifier {
    use sha2::{Digest, Sha256};
    let salt = Sha256::digest(format!("sealdb-unknown-user:{user}").as_bytes());
    ScramVerifier {
        iterations: crate::SCRAM_ITERATIONS,
        salt: salt[..16].to_vec(),
        stored_key: rand::random(),
        server_key: rand::random(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccessControl, UserOptions};

    fn facts(tls: bool, cert: Option<(&str, Option<&str>)>) -> ConnectionFacts {
        ConnectionFacts {
            tls,
            certificate: cert.map(|(subject, user)| CertFacts {
                subject: subject.into(),
                issuer: "O=sealdb, CN=sealdb CA".into(),
                mapped_user: user.map(Into::into),
            }),
            certificate_required: false,
        }
    }

    fn catalog() -> AccessControl {
        let ac = AccessControl::with_bootstrap_admin("admin");
        let pw = |r: Requirement| UserOptions {
            password: Some(Some(ScramVerifier::new("pw", 16))),
            require: Some(r),
            ..Default::default()
        };
        ac.create("plain", true, pw(Requirement::None)).unwrap();
        ac.create("ssl", true, pw(Requirement::Ssl)).unwrap();
        ac.create("x509", true, pw(Requirement::X509)).unwrap();
        ac.create(
            "pinned",
            true,
            pw(Requirement::Subject {
                subject: Some("/O=sealdb/CN=pinned".into()),
                issuer: None,
            }),
        )
        .unwrap();
        ac
    }

    fn plan(ac: &AccessControl, user: &str, f: &ConnectionFacts) -> AuthPlan {
        decide(user, ac.user(user).as_ref(), f)
    }

    #[test]
    fn certificate_for_a_names_a_and_not_b() {
        let ac = catalog();
        let f = facts(true, Some(("O=sealdb, CN=plain", Some("plain"))));
        assert!(matches!(plan(&ac, "plain", &f), AuthPlan::Certificate));
        let AuthPlan::Refuse(msg) = plan(&ac, "admin", &f) else {
            panic!()
        };
        assert!(msg.contains("is for user \"plain\", not \"admin\""), "{msg}");
    }

    #[test]
    fn require_ssl_refuses_plaintext_and_require_x509_refuses_passwords_alone() {
        let ac = catalog();
        let AuthPlan::Refuse(msg) = plan(&ac, "ssl", &facts(false, None)) else {
            panic!()
        };
        assert!(msg.contains("REQUIRE SSL"), "{msg}");
        assert!(matches!(plan(&ac, "ssl", &facts(true, None)), AuthPlan::Password(_)));
        let AuthPlan::Refuse(msg) = plan(&ac, "x509", &facts(true, None)) else {
            panic!()
        };
        assert!(msg.contains("REQUIRE X509") && msg.contains("sslcert"), "{msg}");
    }

    #[test]
    fn require_subject_compares_the_certificate_subject() {
        let ac = catalog();
        assert!(matches!(
            plan(
                &ac,
                "pinned",
                &facts(true, Some(("O=sealdb, CN=pinned", Some("pinned"))))
            ),
            AuthPlan::Certificate
        ));
        let mut other = facts(true, Some(("O=other, CN=pinned", Some("pinned"))));
        let AuthPlan::Refuse(msg) = plan(&ac, "pinned", &other) else {
            panic!()
        };
        assert!(msg.contains("REQUIRE SUBJECT"), "{msg}");
        other.certificate = None;
        assert!(matches!(plan(&ac, "pinned", &other), AuthPlan::Refuse(_)));
    }

    #[test]
    fn unknown_users_and_users_without_password_look_like_a_wrong_password() {
        let ac = catalog();
        assert!(matches!(plan(&ac, "nobody", &facts(true, None)), AuthPlan::Password(_)));
        assert!(matches!(plan(&ac, "admin", &facts(true, None)), AuthPlan::Password(_)));
    }

    #[test]
    fn pki_db_client_auth_requires_a_certificate_of_everyone() {
        let ac = catalog();
        let mut f = facts(true, None);
        f.certificate_required = true;
        let AuthPlan::Refuse(msg) = plan(&ac, "plain", &f) else {
            panic!()
        };
        assert!(msg.contains("pki-db-client-auth"), "{msg}");
    }
}
