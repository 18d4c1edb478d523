//! The TPC-H queries on DataFusion alone, over the segment files of a
//! sealdb table created `WITH (encryption = 'none')`: the baseline that
//! tells what sealdb's own layers (wire protocol, TLS, transactions,
//! deletions, key checks) cost over the engine it runs on, for
//! `bench/compare`.
//!
//! `datafusion_tpch QUERIES.sql SCALE_FACTOR ROUNDS TABLE=DIR...` registers
//! each directory's Parquet files as a table, runs each query once to warm
//! up and then `ROUNDS` times, and prints `Q<n> <median ms> <rows>` per
//! query (`Q<n> error <message>` when one fails).

use std::time::Instant;

use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(queries), Some(sf), Some(rounds)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: datafusion_tpch QUERIES.sql SCALE_FACTOR ROUNDS TABLE=DIR...");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(queries).unwrap_or_else(|e| fail(&format!("{queries}: {e}")));
    let sf: f64 = sf.parse().unwrap_or_else(|_| fail("the scale factor must be a number"));
    let rounds: usize = rounds
        .parse()
        .unwrap_or_else(|_| fail("the rounds must be a whole number"));
    // The same defaults as sealdb's sessions: one partition per core.
    let ctx = SessionContext::new_with_config(SessionConfig::new());
    for table in &args[3..] {
        let Some((name, dir)) = table.split_once('=') else {
            fail(&format!("{table}: give TABLE=DIR"));
        };
        let options = ParquetReadOptions::default().file_extension(".parquet");
        if let Err(e) = ctx.register_parquet(name, dir, options).await {
            fail(&format!("{name} from {dir}: {e}"));
        }
    }
    // The file's layout: `-- Q<n>` heads each query (see bench/compare.py).
    let fraction = format!("{:?}", 0.0001 / sf);
    for part in text.split("\n-- Q").skip(1) {
        let Some((number, sql)) = part.split_once('\n') else {
            continue;
        };
        let sql = sql.trim().trim_end_matches(';').replace("{q11_fraction}", &fraction);
        let mut times = Vec::with_capacity(rounds);
        let mut rows = 0;
        let mut failed = None;
        for round in 0..=rounds {
            let start = Instant::now();
            match run(&ctx, &sql).await {
                Ok(n) => rows = n,
                Err(e) => {
                    failed = Some(e.to_string().replace('\n', " "));
                    break;
                }
            }
            if round > 0 {
                times.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        match failed {
            Some(e) => println!("Q{} error {e}", number.trim()),
            None => {
                times.sort_by(f64::total_cmp);
                let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
                println!("Q{} {median:.3} {rows}", number.trim());
            }
        }
    }
}

async fn run(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<usize> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

fn fail(message: &str) -> ! {
    eprintln!("datafusion_tpch: {message}");
    std::process::exit(2);
}
