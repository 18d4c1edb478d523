//! Distinguished names as users write them in `REQUIRE SUBJECT` / `ISSUER`.

/// Whether a certificate's distinguished name `actual` (RFC 4514 style)
/// equals `required`, written either as `CN=a, O=b` (RFC 4514, any order of
/// attributes and any spacing after commas) or as OpenSSL's `/O=b/CN=a`.
/// Attribute names compare case-insensitively, values exactly.
pub fn subject_matches(required: &str, actual: &str) -> bool {
    normalize_dn(required) == normalize_dn(actual)
}

fn normalize_dn(dn: &str) -> Vec<(String, String)> {
    let dn = dn.trim();
    let parts: Vec<&str> = if let Some(rest) = dn.strip_prefix('/') {
        rest.split('/').collect()
    } else {
        dn.split(',').collect()
    };
    let mut pairs: Vec<(String, String)> = parts
        .iter()
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((canonical_attr(k.trim()), v.trim().to_owned()))
        })
        .collect();
    pairs.sort();
    pairs
}

fn canonical_attr(k: &str) -> String {
    match k.to_ascii_uppercase().as_str() {
        "COMMONNAME" => "CN".into(),
        "ORGANIZATIONNAME" => "O".into(),
        "ORGANIZATIONALUNITNAME" => "OU".into(),
        "COUNTRYNAME" => "C".into(),
        "STATEORPROVINCENAME" => "ST".into(),
        "LOCALITYNAME" => "L".into(),
        "EMAILADDRESS" => "EMAILADDRESS".into(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_in_either_notation_and_order() {
        assert!(subject_matches("/O=Example/CN=alice", "O=Example, CN=alice"));
        assert!(subject_matches("CN=alice,O=Example", "O=Example, CN=alice"));
        assert!(!subject_matches("CN=alice,O=Other", "O=Example, CN=alice"));
        assert!(!subject_matches("CN=alice", "O=Example, CN=alice"));
    }
}
