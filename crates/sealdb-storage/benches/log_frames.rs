//! sealdb's log-frame sealing (frame header, associated data, per-file
//! derived key, AES-256-GCM) against raw aws-lc-rs AES-256-GCM sealing of
//! the same payloads, on one core, side by side in one run. Both paths put
//! each sealed payload after the previous one in one output buffer, as a
//! log writer must before its write: the ratio measures what sealdb's
//! framing adds to the cipher itself. Prints each path's throughput and the
//! ratio sealdb / raw (goal: at least 0.80).
//!
//! Run with `cargo bench -p sealdb-storage --bench log_frames`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sealdb_crypto::Key256;
use sealdb_storage::internal::{FrameKey, FrameKind, FrameSpec, seal_log_frames};

const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(400);

fn main() {
    for payload_len in [4 << 10, 64 << 10, 1 << 20] {
        let frames_per_round = (16 << 20) / payload_len;
        let system = Key256::random().expect("random");
        let table_key = Arc::new(Key256::random().expect("random"));
        let frames: Vec<FrameSpec> = (0..frames_per_round)
            .map(|i| FrameSpec {
                table_id: 1,
                kind: FrameKind::Insert,
                key: FrameKey::Table {
                    version: 1,
                    key: table_key.clone(),
                },
                payload: vec![(i % 251) as u8; payload_len],
            })
            .collect();
        let raw_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, table_key.expose()).expect("key"));
        let mut out = Vec::with_capacity(frames_per_round * (payload_len + 64));
        let mut raw_out: Vec<u8> = Vec::with_capacity(frames_per_round * (payload_len + 16));

        let mut sealdb_rates = Vec::new();
        let mut raw_rates = Vec::new();
        for _ in 0..ROUNDS {
            // Alternate the two paths so that drift of the machine hits both.
            sealdb_rates.push(rate(payload_len * frames_per_round, || {
                seal_log_frames(&system, &frames, &mut out).expect("seal");
                black_box(&out);
            }));
            raw_rates.push(rate(payload_len * frames_per_round, || {
                raw_out.clear();
                for (i, f) in frames.iter().enumerate() {
                    let at = raw_out.len();
                    raw_out.extend_from_slice(&f.payload);
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&(i as u64).to_le_bytes());
                    let tag = raw_key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from(&[0u8; 30]),
                            &mut raw_out[at..],
                        )
                        .expect("seal");
                    raw_out.extend_from_slice(tag.as_ref());
                }
                black_box(&raw_out);
            }));
        }
        let s = median(&mut sealdb_rates);
        let r = median(&mut raw_rates);
        println!(
            "payload {:>7} B: sealdb frames {:>7.0} MiB/s, raw aws-lc-rs AES-256-GCM {:>7.0} MiB/s, ratio {:.2}",
            payload_len,
            s,
            r,
            s / r
        );
    }
}

/// MiB/s of `f`, which processes `bytes` per call, over one round.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < ROUND_TIME {
        f();
        calls += 1;
    }
    (bytes as f64 * f64::from(calls)) / start.elapsed().as_secs_f64() / (1 << 20) as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
