//! `cert-user-map` rules (`FIELD REGEX USER`, one per line before a blank
//! line) applied to a certificate whose subject and names follow: rules
//! parse or are refused with the expected form, and mapping never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealdb_pki::{CertInfo, CertUserMap};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rules, names) = text
        .split_once("\n\n")
        .unwrap_or((text, "CN=alice, O=Example\nDNS:alice.example"));
    let rules: Vec<&str> = rules.lines().collect();
    let Ok(map) = CertUserMap::parse(&rules) else {
        return;
    };
    let mut names = names.lines();
    let subject = names.next().unwrap_or_default().to_owned();
    let info = CertInfo {
        common_name: subject
            .strip_prefix("CN=")
            .map(|s| s.split(',').next().unwrap_or_default().to_owned()),
        subject,
        sans: names.map(str::to_owned).collect(),
        issuer: "CN=fuzz CA".into(),
        serial: "01".into(),
        not_before: time::OffsetDateTime::UNIX_EPOCH,
        not_after: time::OffsetDateTime::UNIX_EPOCH,
        is_ca: false,
    };
    if let Some(user) = map.user_for(&info) {
        assert!(!user.is_empty(), "a rule mapped a certificate to an empty user name");
    }
});
