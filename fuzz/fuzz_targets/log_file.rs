//! Log files as recovery reads them. Raw bytes (a damaged, truncated or
//! forged file) give an error, never a panic. Frames built from the input
//! and sealed as the log writer seals them authenticate and read back one
//! for one, whatever their payloads, whose decoding (Arrow IPC rows,
//! roaring bitmaps of deleted rows, truncation bounds) may refuse them but
//! never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealdb_fuzz::contain_dependency_panics();
    let _ = sealdb_storage::internal::fuzz_log_file(data);
});
