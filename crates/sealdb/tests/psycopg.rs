//! psycopg 3 (from the virtual environment `scripts/setup-test-env.sh`
//! makes) against the real server: the extended protocol with server-side
//! parameters, prepared statements, binary results, driver transactions and
//! SQLSTATEs. The checks live in `tests/py/psycopg_checks.py`.

mod support;

use std::process::Command;

use support::*;

#[test]
fn psycopg_runs_parameters_prepared_statements_binary_results_and_transactions() {
    let python = venv_python();
    let server = TestServer::start(&[]);
    let out = run_with_timeout(
        {
            let mut c = Command::new(python);
            c.arg(py_dir().join("psycopg_checks.py"))
                .arg(server.port.to_string())
                .arg(server.certs());
            c
        },
        std::time::Duration::from_secs(120),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}\nserver log:\n{}", server.stderr());
    assert!(text.contains("all psycopg checks passed"), "{text}");
}
