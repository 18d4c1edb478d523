//! Distinguished names, compared attribute by attribute.
//!
//! A certificate's name is a sequence of RDNs, each a set of attributes
//! (type, value); sealdb compares names in that structure, never as
//! formatted strings: a value may hold a comma, a plus or an equals sign
//! (`O=Example, Inc.`), and splitting the text would let a certificate
//! with `O=Example, Evil` pass for `O=Example` while a real `O=Example,
//! Inc.` could never match. Names users type (`REQUIRE SUBJECT`, `REQUIRE
//! ISSUER`) are parsed with RFC 4514's rules (escapes `\,` `\+` `\\` and
//! `\XX` hex pairs, `+` between the attributes of a multi-valued RDN,
//! `#hex` values), or as OpenSSL's `/O=Example, Inc./CN=alice`, where only
//! `/` separates RDNs. Attribute types are compared as OIDs, so `CN`,
//! `commonName` and `2.5.4.3` are the same; values compare exactly.

use std::fmt;

/// One attribute: its type as a dotted OID, and its value (the string,
/// or `#` and hex digits for a value that is not a string).
pub type Attribute = (String, String);

/// A relative distinguished name: one attribute, or several for a
/// multi-valued RDN.
pub type Rdn = Vec<Attribute>;

/// A distinguished name: RDNs in the order of the certificate's DER
/// (most general first, as OpenSSL prints it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DistinguishedName {
    rdns: Vec<Rdn>,
}

/// Short names of the attribute types users write, and their OIDs.
const ATTRIBUTE_TYPES: [(&str, &str); 22] = [
    ("CN", "2.5.4.3"),
    ("commonName", "2.5.4.3"),
    ("SN", "2.5.4.4"),
    ("surname", "2.5.4.4"),
    ("serialNumber", "2.5.4.5"),
    ("C", "2.5.4.6"),
    ("countryName", "2.5.4.6"),
    ("L", "2.5.4.7"),
    ("localityName", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("stateOrProvinceName", "2.5.4.8"),
    ("street", "2.5.4.9"),
    ("O", "2.5.4.10"),
    ("organizationName", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("organizationalUnitName", "2.5.4.11"),
    ("title", "2.5.4.12"),
    ("GN", "2.5.4.42"),
    ("givenName", "2.5.4.42"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("UID", "0.9.2342.19200300.100.1.1"),
    ("emailAddress", "1.2.840.113549.1.9.1"),
];

impl DistinguishedName {
    /// A name from a certificate's RDNs, in DER order.
    pub fn from_rdns(rdns: Vec<Rdn>) -> Self {
        let rdns = rdns
            .into_iter()
            .map(|mut rdn| {
                rdn.sort();
                rdn
            })
            .collect();
        Self { rdns }
    }

    /// Parses a name as a user writes it: RFC 4514 (`CN=alice,O=Example\,
    /// Inc.`, most specific first, though either order matches) or
    /// OpenSSL's slash form (`/O=Example, Inc./CN=alice`).
    pub fn parse(text: &str) -> Result<Self, String> {
        // Spaces around attributes are dropped where each is read: an
        // escaped one at a value's end is part of the value.
        if text.trim().is_empty() {
            return Err("an empty distinguished name".into());
        }
        let rdns = match text.trim_start().strip_prefix('/') {
            Some(rest) => parse_rdns(rest, b'/')?,
            None => {
                let mut rdns = parse_rdns(text, b',')?;
                // RFC 4514 writes the most specific RDN first.
                rdns.reverse();
                rdns
            }
        };
        Ok(Self::from_rdns(rdns))
    }

    /// Whether `actual` (a certificate's name) is this name: the same RDNs
    /// with the same attributes and values, read in order or in reverse.
    pub fn matches(&self, actual: &DistinguishedName) -> bool {
        self.rdns == actual.rdns || self.rdns.iter().eq(actual.rdns.iter().rev())
    }

    /// The RDNs, most general first.
    pub fn rdns(&self) -> &[Rdn] {
        &self.rdns
    }
}

impl fmt::Display for DistinguishedName {
    /// RFC 4514 escaping, in DER order with `, ` between RDNs (as OpenSSL
    /// and `sys.sessions` show names).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            for (j, (oid, value)) in rdn.iter().enumerate() {
                if j > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{}={}", short_name(oid), escape_value(value))?;
            }
        }
        Ok(())
    }
}

/// The short name of an attribute type's OID (`CN`), or the OID itself.
pub fn short_name(oid: &str) -> &str {
    ATTRIBUTE_TYPES
        .iter()
        .find(|(_, o)| *o == oid)
        .map_or(oid, |(name, _)| name)
}

/// A value written so that it reads back as itself: RFC 4514's escapes.
pub fn escape_value(value: &str) -> String {
    if value.starts_with('#') && value.len() > 1 && value[1..].bytes().all(|b| b.is_ascii_hexdigit()) {
        // Already the hex form of a value that is not a string.
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let escape = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' | '/')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if c.is_control() {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("\\{b:02x}"));
            }
            continue;
        }
        if escape {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits `text` into RDNs at unescaped `separator`s, each into attributes
/// at unescaped `+`.
fn parse_rdns(text: &str, separator: u8) -> Result<Vec<Rdn>, String> {
    let bytes = text.as_bytes();
    let mut rdns = Vec::new();
    let mut rdn = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i <= bytes.len() {
        let at_end = i == bytes.len();
        let byte = bytes.get(i).copied();
        if byte == Some(b'\\') {
            if i + 1 >= bytes.len() {
                return Err(format!("\"{text}\" ends with a lone backslash"));
            }
            i += 2;
            continue;
        }
        if at_end || byte == Some(separator) || byte == Some(b'+') {
            rdn.push(parse_attribute(&text[start..i])?);
            if at_end || byte == Some(separator) {
                rdns.push(std::mem::take(&mut rdn));
            }
            start = i + 1;
        }
        i += 1;
    }
    Ok(rdns)
}

/// `TYPE=VALUE` with the value unescaped.
fn parse_attribute(text: &str) -> Result<Attribute, String> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(format!("\"{}\" is not TYPE=VALUE", text.trim()));
    };
    let name = name.trim();
    let oid = if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        name.to_owned()
    } else {
        ATTRIBUTE_TYPES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, oid)| (*oid).to_owned())
            .ok_or_else(|| {
                format!(
                    "unknown attribute type \"{name}\"; use one of CN, O, OU, C, ST, L, DC, UID, emailAddress, \
                     serialNumber or a dotted OID"
                )
            })?
    };
    Ok((oid, unescape(value)?))
}

/// RFC 4514 unescaping; unescaped spaces around the value are dropped.
fn unescape(text: &str) -> Result<String, String> {
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if let Some(hex) = trimmed.trim_end().strip_prefix('#') {
        if hex.len() % 2 == 0 && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(format!("#{}", hex.to_ascii_lowercase()));
        }
        return Err(format!("\"#{hex}\" is not a hex value"));
    }
    let bytes = trimmed.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    // Length of `out` up to its last escaped byte: trailing spaces after it
    // were escaped and stay.
    let mut kept = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let Some(&next) = bytes.get(i + 1) else {
                return Err(format!("\"{text}\" ends with a lone backslash"));
            };
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            if let Some(hex) = hex {
                let pair = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                out.push(u8::from_str_radix(pair, 16).map_err(|e| e.to_string())?);
                i += 3;
            } else {
                out.push(next);
                i += 2;
            }
            kept = out.len();
            continue;
        }
        out.push(bytes[i]);
        if bytes[i] != b' ' {
            kept = out.len();
        }
        i += 1;
    }
    out.truncate(kept);
    String::from_utf8(out).map_err(|_| format!("\"{text}\" escapes bytes that are not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(rdns: &[&[(&str, &str)]]) -> DistinguishedName {
        DistinguishedName::from_rdns(
            rdns.iter()
                .map(|rdn| rdn.iter().map(|(o, v)| ((*o).to_owned(), (*v).to_owned())).collect())
                .collect(),
        )
    }

    const O: &str = "2.5.4.10";
    const CN: &str = "2.5.4.3";
    const OU: &str = "2.5.4.11";

    #[test]
    fn names_match_in_either_notation_and_direction() {
        let alice = cert(&[&[(O, "Example")], &[(CN, "alice")]]);
        for text in [
            "/O=Example/CN=alice",
            "CN=alice,O=Example",
            "CN=alice, O=Example",
            "O=Example, CN=alice",
            "commonName=alice,2.5.4.10=Example",
        ] {
            assert!(DistinguishedName::parse(text).unwrap().matches(&alice), "{text}");
        }
        for text in [
            "CN=alice,O=Other",
            "CN=alice",
            "CN=Alice,O=Example",
            "CN=alice,O=Example,OU=x",
        ] {
            assert!(!DistinguishedName::parse(text).unwrap().matches(&alice), "{text}");
        }
    }

    #[test]
    fn a_comma_inside_a_value_is_part_of_the_value_never_a_separator() {
        // The attack: a certificate whose O is "Example, Evil".
        let evil = cert(&[&[(O, "Example, Evil")], &[(CN, "alice")]]);
        let required = DistinguishedName::parse("/O=Example/CN=alice").unwrap();
        assert!(!required.matches(&evil));
        assert!(!DistinguishedName::parse("CN=alice,O=Example").unwrap().matches(&evil));
        // A real "Example, Inc." matches when written with its escape, or
        // in the slash form where commas are plain.
        let inc = cert(&[&[(O, "Example, Inc.")], &[(CN, "alice")]]);
        assert!(
            DistinguishedName::parse("CN=alice,O=Example\\, Inc.")
                .unwrap()
                .matches(&inc)
        );
        assert!(
            DistinguishedName::parse("/O=Example, Inc./CN=alice")
                .unwrap()
                .matches(&inc)
        );
        assert!(
            DistinguishedName::parse("CN=alice,O=Example\\2c Inc.")
                .unwrap()
                .matches(&inc)
        );
        assert!(
            !DistinguishedName::parse("CN=alice,O=Example\\, Inc.")
                .unwrap()
                .matches(&evil)
        );
    }

    #[test]
    fn multi_valued_rdns_compare_as_sets_and_differ_from_separate_rdns() {
        let multi = cert(&[&[(O, "Example")], &[(CN, "alice"), (OU, "ops")]]);
        assert!(
            DistinguishedName::parse("OU=ops+CN=alice,O=Example")
                .unwrap()
                .matches(&multi)
        );
        assert!(
            DistinguishedName::parse("/O=Example/CN=alice+OU=ops")
                .unwrap()
                .matches(&multi)
        );
        assert!(
            !DistinguishedName::parse("CN=alice,OU=ops,O=Example")
                .unwrap()
                .matches(&multi)
        );
        let plus = cert(&[&[(O, "Example")], &[(CN, "alice+OU=ops")]]);
        assert!(
            !DistinguishedName::parse("CN=alice+OU=ops,O=Example")
                .unwrap()
                .matches(&plus)
        );
        assert!(
            DistinguishedName::parse("CN=alice\\+OU\\=ops,O=Example")
                .unwrap()
                .matches(&plus)
        );
    }

    #[test]
    fn escapes_spaces_and_bad_input() {
        let spaced = cert(&[&[(CN, " lead and trail ")]]);
        assert!(
            DistinguishedName::parse("CN=\\ lead and trail\\ ")
                .unwrap()
                .matches(&spaced)
        );
        assert!(
            !DistinguishedName::parse("CN= lead and trail ")
                .unwrap()
                .matches(&spaced)
        );
        let hex = cert(&[&[(CN, "#0403616263")]]);
        assert!(DistinguishedName::parse("CN=#0403616263").unwrap().matches(&hex));
        for bad in ["", "CN", "XX=1", "CN=a\\", "CN=#zz", "CN=\\ff\\fe"] {
            assert!(DistinguishedName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn display_escapes_so_that_a_name_reads_back_as_itself() {
        let names = [
            cert(&[&[(O, "Example, Inc.")], &[(CN, "a+b=c\\d")]]),
            cert(&[&[(O, "#not hex")], &[(CN, " x ")]]),
            cert(&[&[(O, "Example")], &[(CN, "alice"), (OU, "ops")]]),
        ];
        for name in names {
            let shown = name.to_string();
            let back = DistinguishedName::parse(&shown).unwrap();
            assert!(back.matches(&name), "{shown}");
        }
        assert_eq!(
            cert(&[&[(O, "Example, Inc.")], &[(CN, "alice")]]).to_string(),
            "O=Example\\, Inc., CN=alice"
        );
    }
}
