//! Segment files as queries and `sealdb verify` read them, with the
//! catalog's length and SHA-256 made to match so that the Parquet decoder
//! (and, for an encrypted segment, modular decryption) sees every input:
//! an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealdb_fuzz::contain_dependency_panics();
    let _ = sealdb_storage::internal::fuzz_segment(data);
});
