//! Segment files as queries and `sealdb verify` read them, with the
//! catalog's length and SHA-256 made to match so that the Parquet decoder
//! (and, for an encrypted segment, modular decryption) sees every input:
//! an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealdb_storage::internal;

fuzz_target!(|data: &[u8]| {
    sealdb_fuzz::contain_dependency_panics();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let _ = internal::read_segment_bytes(rest.to_vec(), mode & 1 == 1);
});
