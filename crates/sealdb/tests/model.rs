//! Model-based check: random statement sequences (INSERT, UPDATE, DELETE,
//! TRUNCATE, COPY, CHECKPOINT, BEGIN ... COMMIT/ROLLBACK with failing
//! statements) run through psycopg against the real server and an
//! in-memory model of the table, compared after every statement from the
//! writing session and from another one (`tests/py/model_check.py`).
//!
//! One fixed seed and one from the clock (printed; set
//! `SEALDB_MODEL_SEED` to replay it).

mod support;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{TestServer, py_dir, run_with_timeout, venv_python};

fn run(seed: u64, steps: u32) {
    let server = TestServer::start(&[]);
    let mut cmd = Command::new(venv_python());
    cmd.arg(py_dir().join("model_check.py"))
        .arg(server.port.to_string())
        .arg(server.certs())
        .arg(seed.to_string())
        .arg(steps.to_string());
    let out = run_with_timeout(cmd, Duration::from_secs(300));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("model check passed"),
        "seed {seed} (replay with SEALDB_MODEL_SEED={seed}):\n{text}\nserver log:\n{}",
        server.stderr()
    );
    eprintln!("{}", text.trim());
}

#[test]
fn random_statements_agree_with_the_model_fixed_seed() {
    run(1, 400);
}

#[test]
fn random_statements_agree_with_the_model_fresh_seed() {
    let seed = std::env::var("SEALDB_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(7)
        });
    eprintln!("model seed {seed}");
    run(seed, 400);
}
