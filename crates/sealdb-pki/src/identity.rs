//! From a verified client certificate to a database user name.

use regex::Regex;

use crate::{CertInfo, PkiError};

/// A client certificate that passed chain, date and CRL checks.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// What the certificate says.
    pub info: CertInfo,
}

/// One `cert-user-map` rule: `FIELD REGEX USER`.
///
/// `FIELD` is `cn`, `subject`, `san` (any SAN entry as `DNS:x`, `IP:x`,
/// `email:x`), `email` or `dns`. `USER` may refer to capture groups as `\1`
/// or `$1`. The regex must match the whole field (it is anchored).
#[derive(Debug, Clone)]
pub struct UserMapRule {
    field: MapField,
    regex: Regex,
    user: String,
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapField {
    CommonName,
    Subject,
    AnySan,
    Email,
    Dns,
}

impl std::str::FromStr for UserMapRule {
    type Err = PkiError;
    fn from_str(text: &str) -> Result<Self, PkiError> {
        let bad = |why: &str| {
            PkiError::Config(format!(
                "cert-user-map rule {text:?}: {why}; write rules as \"FIELD REGEX USER\", e.g. \"email ^(.*)@example\\.com$ \\1\" with FIELD one of cn, subject, san, email, dns"
            ))
        };
        let mut parts = text.split_whitespace();
        let (Some(field), Some(pattern), Some(user), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected exactly three space-separated parts"));
        };
        let field = match field {
            "cn" => MapField::CommonName,
            "subject" => MapField::Subject,
            "san" => MapField::AnySan,
            "email" => MapField::Email,
            "dns" => MapField::Dns,
            _ => return Err(bad("unknown FIELD")),
        };
        let anchored = format!("^(?:{})$", pattern.trim_start_matches('^').trim_end_matches('$'));
        let regex = Regex::new(&anchored).map_err(|e| bad(&format!("bad regex: {e}")))?;
        Ok(Self {
            field,
            regex,
            user: user
                .replace("\\1", "${1}")
                .replace("\\2", "${2}")
                .replace("\\3", "${3}"),
            text: text.to_owned(),
        })
    }
}

impl std::fmt::Display for UserMapRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl UserMapRule {
    fn apply(&self, info: &CertInfo) -> Option<String> {
        let candidates: Vec<String> = match self.field {
            MapField::CommonName => info.common_name.iter().cloned().collect(),
            MapField::Subject => vec![info.subject.clone()],
            MapField::AnySan => info.sans.clone(),
            MapField::Email => info
                .sans
                .iter()
                .filter_map(|s| s.strip_prefix("email:"))
                .map(str::to_owned)
                .collect(),
            MapField::Dns => info
                .sans
                .iter()
                .filter_map(|s| s.strip_prefix("DNS:"))
                .map(str::to_owned)
                .collect(),
        };
        candidates.iter().find_map(|value| {
            let caps = self.regex.captures(value)?;
            let mut user = String::new();
            caps.expand(&self.user, &mut user);
            (!user.is_empty()).then_some(user)
        })
    }
}

/// The `cert-user-map` rules. Without rules a certificate names the user
/// in its common name; with rules the first rule that matches names it, and
/// a certificate no rule matches names nobody.
#[derive(Debug, Clone, Default)]
pub struct CertUserMap {
    rules: Vec<UserMapRule>,
}

impl CertUserMap {
    /// Parses rules in `FIELD REGEX USER` form.
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Self, PkiError> {
        Ok(Self {
            rules: rules.iter().map(|r| r.as_ref().parse()).collect::<Result<_, _>>()?,
        })
    }

    /// The user a certificate names, if any.
    pub fn user_for(&self, info: &CertInfo) -> Option<String> {
        if self.rules.is_empty() {
            return info.common_name.clone();
        }
        self.rules.iter().find_map(|r| r.apply(info))
    }

    /// Whether any rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(cn: &str, sans: &[&str]) -> CertInfo {
        CertInfo {
            subject: format!("O=Example, CN={cn}"),
            subject_dn: sealdb_auth::DistinguishedName::default(),
            issuer_dn: sealdb_auth::DistinguishedName::default(),
            common_name: Some(cn.into()),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            issuer: "CN=ca".into(),
            serial: "01".into(),
            not_before: time::OffsetDateTime::UNIX_EPOCH,
            not_after: time::OffsetDateTime::UNIX_EPOCH,
            is_ca: false,
        }
    }

    #[test]
    fn without_rules_the_common_name_is_the_user() {
        assert_eq!(
            CertUserMap::default().user_for(&info("alice", &[])),
            Some("alice".into())
        );
    }

    #[test]
    fn email_rule_maps_local_part_and_unmatched_certificates_name_nobody() {
        let map = CertUserMap::parse(&[r"email ^(.*)@example\.com$ \1"]).unwrap();
        assert_eq!(
            map.user_for(&info("x", &["DNS:h", "email:bob@example.com"])),
            Some("bob".into())
        );
        assert_eq!(map.user_for(&info("x", &["email:bob@evil.com"])), None);
    }

    #[test]
    fn rules_are_anchored() {
        let map = CertUserMap::parse(&["cn svc-(.*) $1"]).unwrap();
        assert_eq!(map.user_for(&info("svc-etl", &[])), Some("etl".into()));
        assert_eq!(map.user_for(&info("evil-svc-etl", &[])), None);
    }

    #[test]
    fn malformed_rule_is_refused_with_the_expected_form() {
        let err = CertUserMap::parse(&["cn onlytwo"]).unwrap_err().to_string();
        assert!(err.contains("FIELD REGEX USER"), "{err}");
        let err = CertUserMap::parse(&["cn ( x"]).unwrap_err().to_string();
        assert!(err.contains("bad regex"), "{err}");
    }
}
