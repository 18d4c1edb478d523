use datafusion::physical_plan::collect;
use datafusion::prelude::*;
use std::time::Instant;
fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = SessionConfig::new()
        .with_default_catalog_and_schema("sealdb", "public")
        .with_create_default_catalog_and_schema(true)
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    datafusion_pg_catalog::setup_pg_catalog(
        &ctx,
        "sealdb",
        datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
    )
    .unwrap();
    let n = 2000u32;
    let t = Instant::now();
    for _ in 0..n {
        let _s = ctx.state();
    }
    println!("state clone {:?}", t.elapsed() / n);
    let state = ctx.state();
    let parser = datafusion_pg_catalog::sql::PostgresCompatibilityParser::new();
    let t = Instant::now();
    for _ in 0..n {
        let _ = parser.parse("select 1").unwrap();
    }
    println!("pg parse {:?}", t.elapsed() / n);
    let stmt = parser.parse("select 1").unwrap().remove(0);
    let t = Instant::now();
    for _ in 0..n {
        let _ = rt
            .block_on(state.statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(stmt.clone()))))
            .unwrap();
    }
    println!("to plan {:?}", t.elapsed() / n);
    let plan = rt
        .block_on(state.statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(stmt.clone()))))
        .unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let _ = state.optimize(&plan).unwrap();
    }
    println!("optimize {:?}", t.elapsed() / n);
    let opt = state.optimize(&plan).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let _ = rt
            .block_on(state.query_planner().create_physical_plan(&opt, &state))
            .unwrap();
    }
    println!("physical {:?}", t.elapsed() / n);
    let phys = rt
        .block_on(state.query_planner().create_physical_plan(&opt, &state))
        .unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let _ = rt.block_on(collect(phys.clone(), state.task_ctx())).unwrap();
    }
    println!("collect {:?}", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        let _ = state.task_ctx();
    }
    println!("task_ctx {:?}", t.elapsed() / n);
}
