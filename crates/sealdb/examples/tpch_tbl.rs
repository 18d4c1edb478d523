//! TPC-H data as `|`-separated text, one `TABLE.txt` per table, for
//! `bench/compare`: `tpch_tbl SCALE_FACTOR OUTPUT_DIR`.
//!
//! The rows come from the `tpchgen` crate (dbgen's generator, rewritten in
//! Rust), as dbgen writes them but without its `|` at the end of each line,
//! so that `COPY ... FROM STDIN WITH (DELIMITER '|')` and DuckDB read them
//! as they are.

use std::fmt::Display;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator,
    RegionGenerator, SupplierGenerator,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(sf), Some(dir), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: tpch_tbl SCALE_FACTOR OUTPUT_DIR");
        std::process::exit(2);
    };
    let sf: f64 = match sf.parse() {
        Ok(sf) if sf > 0.0 => sf,
        _ => {
            eprintln!("tpch_tbl: the scale factor must be a positive number, not {sf:?}");
            std::process::exit(2);
        }
    };
    let dir = PathBuf::from(dir);
    if let Err(e) = generate(sf, &dir) {
        eprintln!("tpch_tbl: cannot write into {}: {e}", dir.display());
        std::process::exit(1);
    }
}

fn generate(sf: f64, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write(dir, "region", RegionGenerator::new(sf, 1, 1).iter())?;
    write(dir, "nation", NationGenerator::new(sf, 1, 1).iter())?;
    write(dir, "part", PartGenerator::new(sf, 1, 1).iter())?;
    write(dir, "supplier", SupplierGenerator::new(sf, 1, 1).iter())?;
    write(dir, "partsupp", PartSuppGenerator::new(sf, 1, 1).iter())?;
    write(dir, "customer", CustomerGenerator::new(sf, 1, 1).iter())?;
    write(dir, "orders", OrderGenerator::new(sf, 1, 1).iter())?;
    write(dir, "lineitem", LineItemGenerator::new(sf, 1, 1).iter())?;
    Ok(())
}

/// Writes `rows` to `DIR/TABLE.txt`, each line without dbgen's closing `|`.
fn write<R: Display>(dir: &Path, table: &str, rows: impl Iterator<Item = R>) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(dir.join(format!("{table}.txt")))?);
    let mut line = String::new();
    for row in rows {
        line.clear();
        std::fmt::write(&mut line, format_args!("{row}")).map_err(std::io::Error::other)?;
        let line = line.strip_suffix('|').unwrap_or(&line);
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
