//! The server's log: one line per event, whatever the event carries.
//!
//! Events hold text clients control (user names, identifiers and values
//! in error messages). A newline in one would start a line the client
//! wrote, such as a forged `session started ... user=admin`, and an escape
//! sequence would speak to the terminal showing the log. Every control
//! character of an event, except the newline that ends it, is written as
//! `\xNN`; colours are off, as their escape sequences would be too.

use std::io::{self, Write};

/// Starts logging to standard error at `SEALDB_LOG`'s level (default info).
pub(crate) fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALDB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| OneLinePerEvent(io::stderr()))
        .try_init();
}

/// Writes each event (formatted whole, then written at once) with its
/// control characters escaped.
struct OneLinePerEvent<W>(W);

impl<W: Write> Write for OneLinePerEvent<W> {
    fn write(&mut self, event: &[u8]) -> io::Result<usize> {
        let (body, end) = match event.split_last() {
            Some((b'\n', body)) => (body, &b"\n"[..]),
            _ => (event, &b""[..]),
        };
        let mut line = Vec::with_capacity(event.len() + 16);
        escape_into(body, &mut line);
        line.extend_from_slice(end);
        self.0.write_all(&line)?;
        Ok(event.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn escape_into(text: &[u8], out: &mut Vec<u8>) {
    for &byte in text {
        if byte < 0x20 || byte == 0x7f {
            out.extend_from_slice(format!("\\x{byte:02x}").as_bytes());
        } else {
            out.push(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_or_escape_inside_an_event_cannot_start_a_line_or_reach_the_terminal() {
        let mut writer = OneLinePerEvent(Vec::new());
        writer
            .write_all(b"WARN login refused: user \"x\nINFO session started user=admin\x1b[2J\"\n")
            .expect("written");
        assert_eq!(
            String::from_utf8(writer.0).expect("utf-8"),
            "WARN login refused: user \"x\\x0aINFO session started user=admin\\x1b[2J\"\n"
        );
    }
}
