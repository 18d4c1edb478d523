//! Where the time of one small statement goes: planning, running a
//! prepared plan, and the whole simple-query path (which uses the session's
//! statement cache) for `SELECT 1` and a point query, side by side in one
//! run. Prints ratios against the cheapest; run with `cargo bench -p sealdb-sql`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use sealdb_auth::AccessControl;
use sealdb_sql::{CertificateRow, Engine, ServerHooks, SessionInfo};

#[derive(Debug)]
struct NoServer;

impl ServerHooks for NoServer {
    fn sessions(&self) -> Vec<Arc<SessionInfo>> {
        Vec::new()
    }
    fn certificates(&self) -> Vec<CertificateRow> {
        Vec::new()
    }
    fn reload_tls(&self) -> Result<(), String> {
        Ok(())
    }
    fn ssl_enabled(&self) -> bool {
        true
    }
}

const ITERATIONS: u32 = 2000;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let access = Arc::new(AccessControl::with_bootstrap_admin("admin"));
    let engine = Engine::new(access, Arc::new(NoServer)).expect("engine");
    let mut session = engine.session(SessionInfo {
        id: 1,
        user: "admin".into(),
        database: "sealdb".into(),
        application_name: "bench".into(),
        client_addr: "127.0.0.1:1".into(),
        auth_method: "certificate".into(),
        tls: None,
        connected_at: SystemTime::now(),
    });
    rt.block_on(async {
        engine
            .execute(&mut session, "create table t (id int, v text)")
            .await
            .into_result()
            .expect("create");
        engine
            .execute(&mut session, "insert into t values (1, 'a'), (2, 'b'), (3, 'c')")
            .await
            .into_result()
            .expect("insert");
    });
    let mut results = Vec::new();
    for sql in ["select 1", "select v from t where id = 2"] {
        let prepared = rt.block_on(engine.prepare(&session, sql)).expect("prepare");
        let start = Instant::now();
        for _ in 0..ITERATIONS {
            rt.block_on(engine.prepare(&session, sql)).expect("prepare");
        }
        let plan = start.elapsed() / ITERATIONS;
        let start = Instant::now();
        for _ in 0..ITERATIONS {
            rt.block_on(engine.execute_prepared(&mut session, &prepared, Vec::new()))
                .expect("run");
        }
        let run = start.elapsed() / ITERATIONS;
        let start = Instant::now();
        for _ in 0..ITERATIONS {
            rt.block_on(engine.execute(&mut session, sql))
                .into_result()
                .expect("execute");
        }
        let whole = start.elapsed() / ITERATIONS;
        results.push((sql, plan, run, whole));
    }
    let base = results.iter().map(|r| r.1).min().unwrap_or_default().as_secs_f64();
    for (sql, plan, run, whole) in results {
        println!(
            "{sql:32} plan {:>8.1?} ({:.2}x)  run prepared {:>8.1?} ({:.2}x)  simple query {:>8.1?} ({:.2}x)",
            plan,
            plan.as_secs_f64() / base,
            run,
            run.as_secs_f64() / base,
            whole,
            whole.as_secs_f64() / base
        );
    }
}
