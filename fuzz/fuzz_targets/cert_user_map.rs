//! `cert-user-map` rules (`FIELD REGEX USER`, one per line before a blank
//! line) applied to a certificate whose subject and names follow: rules
//! parse or are refused with the expected form, and mapping never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealdb_pki::internal::fuzz_cert_user_map(data));
