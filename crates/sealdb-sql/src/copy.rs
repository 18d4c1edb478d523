//! `COPY ... FROM STDIN` and `COPY ... TO STDOUT` in PostgreSQL's text and
//! CSV formats: options, the incremental parser of incoming data, and the
//! field quoting of outgoing rows.

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::sql::sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::SqlError;

/// Rows parsed before they are converted and added to the transaction.
const BATCH_ROWS: usize = 8192;

/// A `COPY` statement with the boolean values PostgreSQL accepts for its
/// options (`on`, `off`, `yes`, `no`, `1`, `0`: pgbench -i sends
/// `WITH (freeze on)`) spelt `true` or `false`, which is all the SQL parser
/// takes; `None` when there is nothing to respell.
pub(crate) fn with_sql_booleans(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut out = String::with_capacity(sql.len());
    let mut changed = false;
    let mut previous: Option<&Token> = None;
    for token in &tokens {
        let after_option = matches!(previous, Some(Token::Word(w)) if ["FREEZE", "HEADER"].iter().any(|o| w.value.eq_ignore_ascii_case(o)));
        let respelt = match token {
            Token::Word(w) if after_option && w.quote_style.is_none() => match w.value.to_ascii_lowercase().as_str() {
                "on" | "yes" => Some("true"),
                "off" | "no" => Some("false"),
                _ => None,
            },
            Token::Number(n, _) if after_option && n == "1" => Some("true"),
            Token::Number(n, _) if after_option && n == "0" => Some("false"),
            _ => None,
        };
        match respelt {
            Some(word) => {
                out.push_str(word);
                changed = true;
            }
            None => out.push_str(&token.to_string()),
        }
        if !matches!(token, Token::Whitespace(_)) {
            previous = Some(token);
        }
    }
    changed.then_some(out)
}

/// Text or CSV, with their options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    /// CSV (else text).
    pub csv: bool,
    /// Field separator: tab for text, comma for CSV.
    pub delimiter: u8,
    /// How NULL is written: `\N` for text, an empty unquoted field for CSV.
    pub null: String,
    /// CSV: the first line names the columns.
    pub header: bool,
    /// CSV quote character.
    pub quote: u8,
    /// CSV escape character inside quotes (defaults to the quote).
    pub escape: u8,
}

impl CopyFormat {
    fn text() -> Self {
        Self {
            csv: false,
            delimiter: b'\t',
            null: "\\N".into(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }

    fn csv() -> Self {
        Self {
            csv: true,
            delimiter: b',',
            null: String::new(),
            ..Self::text()
        }
    }

    /// The format a `COPY` statement's options ask for.
    pub(crate) fn from_options(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<Self, SqlError> {
        let ascii = |c: char, what: &str| -> Result<u8, SqlError> {
            u8::try_from(c)
                .ok()
                .filter(|b| b.is_ascii() && *b != b'\n' && *b != b'\r')
                .ok_or_else(|| SqlError::InvalidValue(format!("COPY {what} must be a single one-byte character")))
        };
        let mut csv = false;
        for option in options {
            if let CopyOption::Format(name) = option {
                match name.value.to_ascii_lowercase().as_str() {
                    "csv" => csv = true,
                    "text" => csv = false,
                    "binary" => {
                        return Err(SqlError::NotSupported(
                            "COPY FORMAT binary; use FORMAT text or FORMAT csv".into(),
                        ));
                    }
                    other => {
                        return Err(SqlError::InvalidValue(format!(
                            "COPY format \"{other}\" not recognized; use text or csv"
                        )));
                    }
                }
            }
        }
        csv |= legacy.iter().any(|o| matches!(o, CopyLegacyOption::Csv(_)));
        let mut format = if csv { Self::csv() } else { Self::text() };
        for option in options {
            match option {
                CopyOption::Format(_) => {}
                CopyOption::Delimiter(c) => format.delimiter = ascii(*c, "delimiter")?,
                CopyOption::Null(s) => format.null = s.clone(),
                CopyOption::Header(h) => format.header = *h,
                CopyOption::Quote(c) => format.quote = ascii(*c, "quote")?,
                CopyOption::Escape(c) => format.escape = ascii(*c, "escape")?,
                // FREEZE (pgbench -i sends it) marks PostgreSQL's heap rows
                // as visible to every later snapshot; rows sealdb commits
                // already are.
                CopyOption::Freeze(_) => {}
                CopyOption::Encoding(e) if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
                other => return Err(SqlError::NotSupported(format!("COPY option {other}"))),
            }
        }
        let mut escape_set = options.iter().any(|o| matches!(o, CopyOption::Escape(_)));
        for option in legacy {
            match option {
                CopyLegacyOption::Csv(csv_options) => {
                    for o in csv_options {
                        match o {
                            CopyLegacyCsvOption::Header => format.header = true,
                            CopyLegacyCsvOption::Quote(c) => format.quote = ascii(*c, "quote")?,
                            CopyLegacyCsvOption::Escape(c) => {
                                format.escape = ascii(*c, "escape")?;
                                escape_set = true;
                            }
                            other => return Err(SqlError::NotSupported(format!("COPY option {other}"))),
                        }
                    }
                }
                CopyLegacyOption::Delimiter(c) => format.delimiter = ascii(*c, "delimiter")?,
                CopyLegacyOption::Null(s) => format.null = s.clone(),
                CopyLegacyOption::Header => format.header = true,
                other => return Err(SqlError::NotSupported(format!("COPY option {other}"))),
            }
        }
        if !escape_set {
            format.escape = format.quote;
        }
        if format.header && !format.csv {
            return Err(SqlError::NotSupported(
                "COPY HEADER is available in CSV mode only; add FORMAT csv".into(),
            ));
        }
        Ok(format)
    }

    /// One field of an outgoing row; `None` is NULL.
    pub fn push_field(&self, out: &mut Vec<u8>, value: Option<&[u8]>) {
        let Some(value) = value else {
            out.extend_from_slice(self.null.as_bytes());
            return;
        };
        if self.csv {
            let needs_quotes = value.is_empty() && self.null.is_empty()
                || value == self.null.as_bytes()
                || value == b"\\."
                || value
                    .iter()
                    .any(|b| *b == self.delimiter || *b == self.quote || *b == b'\n' || *b == b'\r');
            if !needs_quotes {
                out.extend_from_slice(value);
                return;
            }
            out.push(self.quote);
            for b in value {
                if *b == self.quote || *b == self.escape {
                    out.push(self.escape);
                }
                out.push(*b);
            }
            out.push(self.quote);
        } else {
            for b in value {
                match *b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    other if other == self.delimiter => {
                        out.push(b'\\');
                        out.push(other);
                    }
                    other => out.push(other),
                }
            }
        }
    }

    /// The header line of an outgoing CSV copy.
    pub fn header_line(&self, schema: &SchemaRef) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            if i > 0 {
                out.push(self.delimiter);
            }
            self.push_field(&mut out, Some(field.name().as_bytes()));
        }
        out.push(b'\n');
        out
    }
}

/// The line `\.` that ends COPY data.
fn is_end_marker(raw: &[u8]) -> bool {
    let line = raw.strip_suffix(b"\n").unwrap_or(raw);
    line.strip_suffix(b"\r").unwrap_or(line) == b"\\."
}

/// One parsed field: its text and whether it was quoted (CSV).
type Field = Option<String>;

/// An incoming `COPY ... FROM STDIN`: bytes in, typed batches out.
#[derive(Debug)]
pub(crate) struct CopyParser {
    format: CopyFormat,
    /// The columns copied, in the order of the data.
    columns: Vec<String>,
    /// Unparsed bytes: the start of a record not complete yet.
    pending: Vec<u8>,
    /// Records parsed, not yet converted.
    rows: Vec<Vec<Field>>,
    /// Records read so far (the header included), for error messages.
    line: u64,
    /// The record number of `rows[0]`.
    rows_first_line: u64,
    /// The CSV header has been skipped.
    header_done: bool,
    /// `\.` was seen: anything after it is ignored.
    ended: bool,
}

impl CopyParser {
    pub(crate) fn new(format: CopyFormat, columns: Vec<String>) -> Self {
        let header_done = !format.header;
        Self {
            format,
            columns,
            pending: Vec::new(),
            rows: Vec::new(),
            line: 0,
            rows_first_line: 0,
            header_done,
            ended: false,
        }
    }

    /// Takes more data; `last` when the client sent CopyDone.
    pub(crate) fn feed(&mut self, data: &[u8], last: bool) -> Result<(), SqlError> {
        if self.ended {
            return Ok(());
        }
        self.pending.extend_from_slice(data);
        let buffer = std::mem::take(&mut self.pending);
        let mut at = 0;
        while at < buffer.len() && !self.ended {
            let Some((record, next)) = self.record(&buffer[at..], last)? else {
                break;
            };
            let raw = &buffer[at..at + next];
            at += next;
            self.line += 1;
            if record.len() == 1 && is_end_marker(raw) {
                self.ended = true;
                break;
            }
            if !self.header_done {
                self.header_done = true;
                continue;
            }
            if record.len() != self.columns.len() {
                let what = if record.len() < self.columns.len() {
                    "missing data for a column"
                } else {
                    "extra data after the last expected column"
                };
                return Err(SqlError::BadData {
                    code: "22P04",
                    message: format!(
                        "COPY line {}: {what}: expected {} fields, found {}",
                        self.line,
                        self.columns.len(),
                        record.len()
                    ),
                });
            }
            if self.rows.is_empty() {
                self.rows_first_line = self.line;
            }
            self.rows.push(record);
        }
        if !self.ended {
            self.pending = buffer[at..].to_vec();
        }
        Ok(())
    }

    /// Whether enough rows wait for a batch.
    pub(crate) fn batch_ready(&self) -> bool {
        self.rows.len() >= BATCH_ROWS
    }

    /// The rows parsed so far as a batch of `schema`, with the columns
    /// not copied NULL.
    pub(crate) fn take_batch(&mut self, schema: &SchemaRef) -> Result<Option<RecordBatch>, SqlError> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        let rows = std::mem::take(&mut self.rows);
        let first_line = self.rows_first_line;
        let options = CastOptions {
            safe: false,
            format_options: FormatOptions::default(),
        };
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let Some(index) = self.columns.iter().position(|c| c == field.name()) else {
                arrays.push(new_null_array(field.data_type(), rows.len()));
                continue;
            };
            let text: StringArray = rows.iter().map(|r| r[index].as_deref()).collect();
            let array = match cast_with_options(&text, field.data_type(), &options) {
                Ok(a) => a,
                Err(_) => {
                    // Name the first value that does not convert.
                    for (i, row) in rows.iter().enumerate() {
                        let one: StringArray = std::iter::once(row[index].as_deref()).collect();
                        if cast_with_options(&one, field.data_type(), &options).is_err() {
                            return Err(SqlError::BadData {
                                code: "22P02",
                                message: format!(
                                    "COPY line {}, column {}: invalid input syntax for type {}: \"{}\"",
                                    first_line + i as u64,
                                    field.name(),
                                    field.data_type(),
                                    row[index].as_deref().unwrap_or_default()
                                ),
                            });
                        }
                    }
                    return Err(SqlError::BadData {
                        code: "22P02",
                        message: format!(
                            "COPY column {}: values do not convert to {}",
                            field.name(),
                            field.data_type()
                        ),
                    });
                }
            };
            arrays.push(array);
        }
        for (field, array) in schema.fields().iter().zip(&arrays) {
            if !field.is_nullable()
                && let Some(i) = (0..array.len()).find(|i| array.is_null(*i))
            {
                return Err(SqlError::NotNullViolation(format!(
                    "COPY line {}: null value in column \"{}\" violates not-null constraint",
                    first_line + i as u64,
                    field.name()
                )));
            }
        }
        RecordBatch::try_new(schema.clone(), arrays)
            .map(Some)
            .map_err(|e| SqlError::InvalidValue(format!("COPY: {e}")))
    }

    /// Whether data remains that never formed a whole record.
    pub(crate) fn unfinished(&self) -> bool {
        !self.ended && !self.pending.is_empty()
    }

    /// One record at the start of `data`: its fields and its length in
    /// bytes (newline included); `None` when it is not complete yet.
    fn record(&self, data: &[u8], last: bool) -> Result<Option<(Vec<Field>, usize)>, SqlError> {
        if self.format.csv {
            self.csv_record(data, last)
        } else {
            self.text_record(data, last)
        }
    }

    /// One field: NULL, or its bytes as UTF-8.
    fn field(&self, null: bool, bytes: Vec<u8>) -> Result<Field, SqlError> {
        if null {
            return Ok(None);
        }
        String::from_utf8(bytes).map(Some).map_err(|_| SqlError::BadData {
            code: "22021",
            message: format!("COPY line {}: invalid byte sequence for encoding UTF8", self.line + 1),
        })
    }

    fn text_record(&self, data: &[u8], last: bool) -> Result<Option<(Vec<Field>, usize)>, SqlError> {
        let (line, used) = match data.iter().position(|b| *b == b'\n') {
            Some(end) => (&data[..end], end + 1),
            None if last && !data.is_empty() => (data, data.len()),
            None => return Ok(None),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let delimiter = self.format.delimiter;
        let mut fields = Vec::new();
        let mut raw_start = 0;
        let mut value = Vec::new();
        let mut i = 0;
        let finish = |raw: &[u8], value: &mut Vec<u8>, fields: &mut Vec<Field>| -> Result<(), SqlError> {
            fields.push(self.field(raw == self.format.null.as_bytes(), std::mem::take(value))?);
            Ok(())
        };
        while i < line.len() {
            let b = line[i];
            if b == b'\\' && i + 1 < line.len() {
                let n = line[i + 1];
                i += 2;
                match n {
                    b'b' => value.push(8),
                    b'f' => value.push(12),
                    b'n' => value.push(b'\n'),
                    b'r' => value.push(b'\r'),
                    b't' => value.push(b'\t'),
                    b'v' => value.push(11),
                    b'0'..=b'7' => {
                        let mut v = u32::from(n - b'0');
                        let mut k = 0;
                        while k < 2 && i < line.len() && (b'0'..=b'7').contains(&line[i]) {
                            v = v * 8 + u32::from(line[i] - b'0');
                            i += 1;
                            k += 1;
                        }
                        value.push((v & 0xff) as u8);
                    }
                    b'x' if i < line.len() && line[i].is_ascii_hexdigit() => {
                        let mut v = 0u32;
                        let mut k = 0;
                        while k < 2 && i < line.len() && line[i].is_ascii_hexdigit() {
                            v = v * 16 + char::from(line[i]).to_digit(16).unwrap_or(0);
                            i += 1;
                            k += 1;
                        }
                        value.push(v as u8);
                    }
                    other => value.push(other),
                }
                continue;
            }
            if b == delimiter {
                finish(&line[raw_start..i], &mut value, &mut fields)?;
                i += 1;
                raw_start = i;
                continue;
            }
            value.push(b);
            i += 1;
        }
        finish(&line[raw_start..], &mut value, &mut fields)?;
        Ok(Some((fields, used)))
    }

    fn csv_record(&self, data: &[u8], last: bool) -> Result<Option<(Vec<Field>, usize)>, SqlError> {
        let f = &self.format;
        let mut fields = Vec::new();
        let mut value = Vec::new();
        let mut quoted = false;
        let mut in_quotes = false;
        // Bytes of `value` that came from inside quotes: a `\r` before the
        // newline is dropped only when it came after them.
        let mut protected = 0;
        let mut i = 0;
        let push = |value: &mut Vec<u8>, quoted: bool, fields: &mut Vec<Field>| -> Result<(), SqlError> {
            let null = !quoted && value.as_slice() == f.null.as_bytes();
            fields.push(self.field(null, std::mem::take(value))?);
            Ok(())
        };
        while i < data.len() {
            let b = data[i];
            if in_quotes {
                if b == f.escape
                    && f.escape != f.quote
                    && data.get(i + 1).is_some_and(|n| *n == f.quote || *n == f.escape)
                {
                    value.push(data[i + 1]);
                    i += 2;
                    continue;
                }
                if b == f.quote {
                    if f.escape == f.quote && data.get(i + 1) == Some(&f.quote) {
                        value.push(f.quote);
                        i += 2;
                        continue;
                    }
                    if i + 1 == data.len() && !last {
                        // A doubled quote may be split across messages.
                        return Ok(None);
                    }
                    in_quotes = false;
                    protected = value.len();
                    i += 1;
                    continue;
                }
                value.push(b);
                i += 1;
                continue;
            }
            match b {
                b'\n' => {
                    if value.last() == Some(&b'\r') && value.len() > protected {
                        value.pop();
                    }
                    push(&mut value, quoted, &mut fields)?;
                    return Ok(Some((fields, i + 1)));
                }
                _ if b == f.delimiter => {
                    push(&mut value, quoted, &mut fields)?;
                    quoted = false;
                    protected = 0;
                }
                _ if b == f.quote => {
                    quoted = true;
                    in_quotes = true;
                }
                _ => value.push(b),
            }
            i += 1;
        }
        if !last {
            return Ok(None);
        }
        if in_quotes {
            return Err(SqlError::BadData {
                code: "22P04",
                message: format!("COPY line {}: unterminated CSV quoted field", self.line + 1),
            });
        }
        if data.is_empty() {
            return Ok(None);
        }
        if value.last() == Some(&b'\r') && value.len() > protected {
            value.pop();
        }
        push(&mut value, quoted, &mut fields)?;
        Ok(Some((fields, data.len())))
    }
}

/// The text of every field of a row as the text protocol would send it,
/// taken from an encoded `DataRow` body: per field a big-endian i32
/// length (-1 for NULL) and the bytes.
pub fn data_row_fields(body: &[u8], count: usize) -> Vec<Option<&[u8]>> {
    let mut out = Vec::with_capacity(count);
    let mut at = 0;
    for _ in 0..count {
        let Some(len) = body.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
            break;
        };
        let len = i32::from_be_bytes(len);
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let end = at + len as usize;
        out.push(body.get(at..end));
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgresql_booleans_of_copy_options_are_respelt_for_the_parser() {
        assert_eq!(
            super::with_sql_booleans("copy t from stdin with (freeze on)").as_deref(),
            Some("copy t from stdin with (freeze true)")
        );
        assert_eq!(
            super::with_sql_booleans("COPY t FROM STDIN (FORMAT csv, HEADER 0, FREEZE OFF)").as_deref(),
            Some("COPY t FROM STDIN (FORMAT csv, HEADER false, FREEZE false)")
        );
        // Names and strings are left alone.
        assert_eq!(
            super::with_sql_booleans("COPY \"on\" (header) FROM STDIN WITH (NULL 'on')"),
            None
        );
    }

    use std::sync::Arc;

    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field as ArrowField, Schema};

    fn parse(format: CopyFormat, chunks: &[&[u8]], columns: usize) -> Result<Vec<Vec<Field>>, SqlError> {
        let mut p = CopyParser::new(format, (0..columns).map(|i| format!("c{i}")).collect());
        for (i, c) in chunks.iter().enumerate() {
            p.feed(c, i + 1 == chunks.len())?;
        }
        Ok(p.rows)
    }

    #[test]
    fn text_format_unescapes_and_reads_nulls_across_chunk_boundaries() {
        let rows = parse(
            CopyFormat::text(),
            &[b"1\ta\\tb\n2\t\\N\n3\tx", b"y\\\\z\n\\.\nignored\n"],
            2,
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), Some("a\tb".into())],
                vec![Some("2".into()), None],
                vec![Some("3".into()), Some("xy\\z".into())],
            ]
        );
    }

    #[test]
    fn csv_format_handles_quotes_newlines_header_and_empty_versus_null() {
        let mut f = CopyFormat::csv();
        f.header = true;
        let rows = parse(f, &[b"a,b\n1,\"x,\"\"y\"\"\nz\"\n2,\n3,\"\"", b"\n"], 2).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), Some("x,\"y\"\nz".into())],
                vec![Some("2".into()), None],
                vec![Some("3".into()), Some(String::new())],
            ]
        );
    }

    #[test]
    fn csv_crlf_lines_lose_their_carriage_return_but_quoted_ones_keep_it() {
        let rows = parse(CopyFormat::csv(), &[b"1,\"x\"\r\n2,y\r\n3,\"z\r\"\r\n"], 2).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), Some("x".into())],
                vec![Some("2".into()), Some("y".into())],
                vec![Some("3".into()), Some("z\r".into())],
            ]
        );
    }

    #[test]
    fn wrong_field_counts_and_bad_values_name_the_line() {
        let e = parse(CopyFormat::text(), &[b"1\t2\n3\n"], 2).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let mut p = CopyParser::new(CopyFormat::csv(), vec!["n".into()]);
        p.feed(b"1\n2\nx\n", true).unwrap();
        let schema = Arc::new(Schema::new(vec![ArrowField::new("n", DataType::Int64, true)]));
        let e = p.take_batch(&schema).unwrap_err();
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("\"x\""),
            "{e}"
        );
    }

    #[test]
    fn outgoing_fields_are_escaped_so_they_read_back_the_same() {
        let mut out = Vec::new();
        let csv = CopyFormat::csv();
        csv.push_field(&mut out, Some(b"a,\"b\""));
        out.push(b',');
        csv.push_field(&mut out, Some(b""));
        out.push(b',');
        csv.push_field(&mut out, None);
        assert_eq!(out, b"\"a,\"\"b\"\"\",\"\",");
        let mut out = Vec::new();
        CopyFormat::text().push_field(&mut out, Some(b"a\tb\\c\n"));
        assert_eq!(out, b"a\\tb\\\\c\\n");
    }
}
