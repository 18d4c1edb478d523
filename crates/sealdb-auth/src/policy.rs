//! How a connecting client must authenticate.

use crate::{AccessControl, DistinguishedName, Requirement, ScramVerifier};

/// What a verified client certificate says.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// Subject DN, as shown (RFC 4514 escapes).
    pub subject: String,
    /// Subject DN, attribute by attribute: what `REQUIRE SUBJECT` compares.
    pub subject_dn: DistinguishedName,
    /// Issuer DN, as shown.
    pub issuer: String,
    /// Issuer DN, attribute by attribute.
    pub issuer_dn: DistinguishedName,
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
    /// Run SCRAM-SHA-256 as for a password, then refuse as for a wrong
    /// password whatever was sent: the user exists but cannot log in this
    /// way, and saying why would tell a stranger that the user exists.
    /// `reason` is for the server's log only.
    Decoy {
        /// The verifier the exchange runs against.
        verifier: ScramVerifier,
        /// Why the login is refused, for the server's log.
        reason: String,
    },
    /// Refuse, with this message for the client. It never depends on
    /// whether `requested` exists, unless the client proved with a
    /// verified certificate who it is.
    Refuse(String),
}

/// Decides how `requested` (the `user` of the startup packet) must
/// authenticate, given the catalog `access`.
///
/// A client without a certificate learns nothing about which user names
/// exist: an unknown user, a user without a password and a user whose
/// `REQUIRE` this connection does not meet all run the same SCRAM
/// exchange, against a salt that is either the user's or derived from the
/// name with a key only the server holds, and fail with the same message.
/// The precise reason goes to the server's log.
pub fn decide(access: &AccessControl, requested: &str, facts: &ConnectionFacts) -> AuthPlan {
    let refuse = AuthPlan::Refuse;
    let user = access.user(requested);
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
    } else if facts.certificate_required {
        // The server's policy, the same for every name.
        return refuse(certificate_needed(
            requested,
            "this server requires a client certificate of every user (pki-db-client-auth = true)",
        ));
    }
    let decoy = |reason: String| AuthPlan::Decoy {
        verifier: access.password_verifier(requested),
        reason,
    };
    let Some(user) = user.filter(|u| u.login) else {
        return match &facts.certificate {
            // The certificate proved the client is `requested`.
            Some(_) => refuse(format!(
                "user \"{requested}\" does not exist or may not log in; an administrator can run CREATE USER {requested}"
            )),
            None => AuthPlan::Password(access.password_verifier(requested)),
        };
    };
    match &user.require {
        Requirement::None => {}
        Requirement::Ssl => {
            if !facts.tls {
                return decoy(format!(
                    "user \"{requested}\" must connect over TLS (REQUIRE SSL); connect with sslmode=verify-full"
                ));
            }
        }
        Requirement::X509 => {
            if facts.certificate.is_none() {
                return decoy(certificate_needed(
                    requested,
                    &format!("user \"{requested}\" requires a client certificate (REQUIRE X509)"),
                ));
            }
        }
        Requirement::Subject { subject, issuer } => {
            let Some(cert) = &facts.certificate else {
                return decoy(certificate_needed(
                    requested,
                    &format!("user \"{requested}\" requires a client certificate ({})", user.require),
                ));
            };
            if let Some(want) = subject
                && !name_matches(want, &cert.subject_dn)
            {
                return refuse(format!(
                    "the client certificate subject \"{}\" does not match the subject required of user \"{requested}\" (REQUIRE SUBJECT '{want}')",
                    cert.subject
                ));
            }
            if let Some(want) = issuer
                && !name_matches(want, &cert.issuer_dn)
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
    // Without a password this is the same flow as a wrong one.
    AuthPlan::Password(access.password_verifier(requested))
}

/// Whether a certificate's name is the one a `REQUIRE` clause names. A
/// clause that does not parse (it was checked when written) matches nothing.
fn name_matches(required: &str, actual: &DistinguishedName) -> bool {
    DistinguishedName::parse(required).is_ok_and(|name| name.matches(actual))
}

fn certificate_needed(user: &str, why: &str) -> String {
    format!("{why}; connect with sslcert=client.{user}.crt sslkey=client.{user}.key")
}

impl AccessControl {
    /// The verifier SCRAM runs against for `name`: the stored one, or, for
    /// an unknown user, one without a password, or one that may not log
    /// in, a verifier no password matches. Used by [`decide`] and by the
    /// SCRAM exchange, so both see the same thing.
    pub fn password_verifier(&self, name: &str) -> ScramVerifier {
        self.user(name)
            .filter(|u| u.login)
            .and_then(|u| u.password)
            .unwrap_or_else(|| self.dummy_verifier(name))
    }

    /// A verifier no password matches. Its salt is the same at every
    /// attempt for a name, as a real user's is, and is derived with a key
    /// only this server holds (kept in the encrypted catalog): without the
    /// key, it cannot be told from a real user's random salt.
    fn dummy_verifier(&self, name: &str) -> ScramVerifier {
        use hmac::{Hmac, Mac};
        let key = self.dummy_salt_key();
        let salt = match <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.0.as_slice()) {
            Ok(mut mac) => {
                mac.update(b"sealdb scram salt of a name that cannot log in: ");
                mac.update(name.as_bytes());
                mac.finalize().into_bytes()[..16].to_vec()
            }
            Err(_) => rand::random::<[u8; 16]>().to_vec(),
        };
        ScramVerifier {
            iterations: crate::SCRAM_ITERATIONS,
            salt,
            stored_key: rand::random(),
            server_key: rand::random(),
        }
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
                subject_dn: DistinguishedName::parse(subject).unwrap_or_default(),
                issuer: "O=sealdb, CN=sealdb CA".into(),
                issuer_dn: DistinguishedName::parse("O=sealdb, CN=sealdb CA").unwrap_or_default(),
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
        decide(ac, user, f)
    }

    /// The salt a stranger sees for `user` when connecting without a certificate.
    fn salt_seen(ac: &AccessControl, user: &str, f: &ConnectionFacts) -> Vec<u8> {
        match plan(ac, user, f) {
            AuthPlan::Password(v) | AuthPlan::Decoy { verifier: v, .. } => v.salt,
            other => panic!("{user}: not a password exchange: {other:?}"),
        }
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
    fn require_ssl_refuses_plaintext_and_require_x509_refuses_passwords_alone_as_a_wrong_password() {
        let ac = catalog();
        let AuthPlan::Decoy { reason, .. } = plan(&ac, "ssl", &facts(false, None)) else {
            panic!()
        };
        assert!(reason.contains("REQUIRE SSL"), "{reason}");
        assert!(matches!(plan(&ac, "ssl", &facts(true, None)), AuthPlan::Password(_)));
        let AuthPlan::Decoy { reason, .. } = plan(&ac, "x509", &facts(true, None)) else {
            panic!()
        };
        assert!(
            reason.contains("REQUIRE X509") && reason.contains("sslcert"),
            "{reason}"
        );
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
        assert!(matches!(plan(&ac, "pinned", &other), AuthPlan::Decoy { .. }));
    }

    #[test]
    fn unknown_users_and_users_without_password_look_like_a_wrong_password() {
        let ac = catalog();
        assert!(matches!(plan(&ac, "nobody", &facts(true, None)), AuthPlan::Password(_)));
        assert!(matches!(plan(&ac, "admin", &facts(true, None)), AuthPlan::Password(_)));
        // The same salt at every attempt, as for a real user; not one anyone
        // can compute from the name; another server's differs.
        let f = facts(true, None);
        assert_eq!(salt_seen(&ac, "nobody", &f), salt_seen(&ac, "nobody", &f));
        assert_ne!(salt_seen(&ac, "nobody", &f), salt_seen(&ac, "nobody2", &f));
        assert_ne!(salt_seen(&ac, "nobody", &f), salt_seen(&catalog(), "nobody", &f));
        // ... and the same after the catalog is stored and read back.
        let again = AccessControl::import(&ac.export()).unwrap();
        assert_eq!(salt_seen(&ac, "nobody", &f), salt_seen(&again, "nobody", &f));
        assert_eq!(salt_seen(&ac, "admin", &f), salt_seen(&again, "admin", &f));
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
