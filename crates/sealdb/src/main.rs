//! The sealdb binary: `start`, `cert`, `kms`, `verify`.
//!
//! One function holds unsafe code: [`wipe_secret_environment`], which
//! overwrites passwords in the process's environment before any thread
//! starts.
#![deny(unsafe_code)]

mod cert;
mod harden;
mod keys;
mod kms;
mod leaf;
mod log;
mod start;
mod status;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sealdb: a SQL database server that encrypts what it stores and speaks
/// the PostgreSQL protocol over TLS only.
#[derive(Debug, Parser)]
#[command(name = "sealdb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server. On an empty data directory it creates a CA, a node
    /// certificate and a client certificate for `admin`, and prints how to connect.
    Start(Box<start::StartArgs>),
    /// Make and inspect certificates.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Set up and look at the KMIP key servers of `[kmip_hosts.GROUP]`.
    #[command(subcommand)]
    Kms(kms::KmsCommand),
    /// Authenticate every file of a data directory (server stopped): the
    /// catalog, every segment, the whole log. Exit status 0 only when all is sound.
    Verify(Box<verify::VerifyArgs>),
    /// The security findings of sys.security_status, from the config file,
    /// certificates and catalog (server running or not). Exit status 1 when
    /// a finding is of high severity.
    Status(Box<status::StatusArgs>),
}

/// `--data` and `--config`, shared by commands.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// Configuration file [default: DATA/sealdb.conf, if it exists].
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

fn main() -> ExitCode {
    wipe_secret_environment();
    let cli = Cli::parse();
    // Before any command reads a key or a password.
    let hardening = harden::harden();
    let result = match cli.command {
        Command::Start(args) => start::run(*args, &hardening),
        Command::Cert(c) => cert::run(c),
        Command::Verify(args) => verify::run(*args),
        Command::Status(args) => status::run(*args),
        Command::Kms(c) => kms::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sealdb: error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// Takes the values of `SEALDB_*PASSWORD*` variables for sealdb's own use
/// ([`sealdb_config::capture_secret_environment`]), then overwrites them
/// where the process keeps its environment and removes them from it: the
/// kernel shows that memory in `/proc/PID/environ`, which removing a
/// variable alone does not change.
#[allow(unsafe_code)]
fn wipe_secret_environment() {
    let names = sealdb_config::capture_secret_environment();
    if names.is_empty() {
        return;
    }
    // SAFETY: this runs first in `main`, before any other thread exists
    // (no runtime, no logger), so nothing else reads or writes the
    // environment meanwhile. `environ` is the C library's array of
    // pointers to NUL-terminated `NAME=value` strings, ending with a null
    // pointer; each string is read only up to its NUL, and only the bytes
    // of a value, between its `=` and its NUL, are overwritten: memory the
    // loader (or the C library, for a variable set later) made writable.
    unsafe {
        let mut entry = libc::environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if let Some(eq) = text.iter().position(|&b| b == b'=')
                && names.iter().any(|n| n.as_bytes() == &text[..eq])
            {
                let value = (*entry).add(eq + 1);
                std::ptr::write_bytes(value, 0, text.len() - eq - 1);
            }
            entry = entry.add(1);
        }
        for name in &names {
            std::env::remove_var(name);
        }
    }
}

/// An error with its causes, each said once: many errors already print
/// their source in their own message (`writing FILE: No space left on
/// device`), and anyhow's `{:#}` would repeat it.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(28);
        let inner = anyhow::Error::new(io).context(format!("writing x.wal: {}", std::io::Error::from_raw_os_error(28)));
        let e = inner.context("the start-up checkpoint failed");
        assert_eq!(
            super::error_text(&e),
            "the start-up checkpoint failed: writing x.wal: No space left on device (os error 28)"
        );
    }
}
