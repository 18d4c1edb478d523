//! A key server's response, as sealdb's client reads it: decoded, checked
//! as the answer to each operation, and every payload parser run on what
//! passes. Nothing may panic, whatever the server sends.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealdb_kmip::internal::fuzz_response(data));
