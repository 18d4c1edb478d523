//! The TTLV decoder on arbitrary bytes: it never panics, and what it
//! accepts encodes back to exactly the same bytes (the decoder is strict:
//! one encoding per message).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealdb_kmip::internal::fuzz_ttlv(data));
