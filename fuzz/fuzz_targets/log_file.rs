//! Log files as recovery reads them. Raw bytes (a damaged, truncated or
//! forged file) give an error, never a panic. Frames built from the input
//! and sealed as the log writer seals them authenticate and read back one
//! for one, whatever their payloads, whose decoding (Arrow IPC rows,
//! roaring bitmaps of deleted rows, truncation bounds) may refuse them but
//! never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealdb_storage::internal::{self, FrameKind};

fuzz_target!(|data: &[u8]| {
    sealdb_fuzz::contain_dependency_panics();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = internal::read_log_bytes(rest);
        return;
    }
    // Frames: [kind][table][version][length, 2 bytes LE] then the payload.
    let mut frames = Vec::new();
    let mut at = rest;
    while at.len() >= 5 && frames.len() < 16 {
        let kind = match at[0] % 3 {
            0 => FrameKind::Insert,
            1 => FrameKind::Delete,
            _ => FrameKind::Truncate,
        };
        let len = usize::from(u16::from_le_bytes([at[3], at[4]])).min(at.len() - 5);
        frames.push((kind, u64::from(at[1]), u32::from(at[2] % 3), at[5..5 + len].to_vec()));
        at = &at[5 + len..];
    }
    if frames.is_empty() {
        return;
    }
    let first_lsn = u64::from(mode >> 1);
    let bytes = internal::log_bytes(first_lsn, &frames).expect("sealing frames in memory");
    let read = internal::log_frame_count(&bytes).expect("a log the writer sealed reads back");
    assert_eq!(read, frames.len(), "frames lost or invented");
    let _ = internal::read_log_bytes(&bytes);
});
