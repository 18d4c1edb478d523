//! TTLV, KMIP's binary encoding: each item is a 3-byte tag, a 1-byte type,
//! a 4-byte big-endian length and the value, padded with zeros to a
//! multiple of 8 bytes. Structures hold items.
//!
//! The decoder takes bytes from the network, so it trusts nothing: every
//! length is checked against what is left, padding must be zeros, nesting
//! is limited to [`MAX_DEPTH`], text must be UTF-8 and booleans 0 or 1.

use zeroize::Zeroizing;

use crate::KmipError;

/// Deepest nesting of structures accepted (KMIP messages need about 8).
pub const MAX_DEPTH: usize = 32;

/// The bytes of a TTLV item's header: tag (3), type (1), length (4).
pub const HEADER_LEN: usize = 8;

/// A KMIP tag: three bytes, `0x42xxxx` for the standard ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(pub u32);

/// One value.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// Items, in order.
    Structure(Vec<Item>),
    /// A signed 32-bit integer.
    Integer(i32),
    /// A signed 64-bit integer.
    LongInteger(i64),
    /// A big-endian two's-complement integer, a multiple of 8 bytes long.
    BigInteger(Vec<u8>),
    /// A 32-bit enumeration value.
    Enumeration(u32),
    /// A boolean.
    Boolean(bool),
    /// UTF-8 text.
    TextString(String),
    /// Bytes: keys, plaintext and ciphertext travel as byte strings, so
    /// they are zeroized when the item is dropped.
    ByteString(Zeroizing<Vec<u8>>),
    /// Seconds since the Unix epoch.
    DateTime(i64),
    /// Seconds.
    Interval(u32),
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Structure(items) => f.debug_list().entries(items).finish(),
            Self::Integer(v) => write!(f, "Integer({v})"),
            Self::LongInteger(v) => write!(f, "LongInteger({v})"),
            Self::BigInteger(v) => write!(f, "BigInteger({} bytes)", v.len()),
            Self::Enumeration(v) => write!(f, "Enumeration({v:#x})"),
            Self::Boolean(v) => write!(f, "Boolean({v})"),
            Self::TextString(v) => write!(f, "TextString({v:?})"),
            // Byte strings may be keys or plaintext: never printed.
            Self::ByteString(v) => write!(f, "ByteString({} bytes)", v.len()),
            Self::DateTime(v) => write!(f, "DateTime({v})"),
            Self::Interval(v) => write!(f, "Interval({v})"),
        }
    }
}

impl Value {
    fn type_code(&self) -> u8 {
        match self {
            Self::Structure(_) => 0x01,
            Self::Integer(_) => 0x02,
            Self::LongInteger(_) => 0x03,
            Self::BigInteger(_) => 0x04,
            Self::Enumeration(_) => 0x05,
            Self::Boolean(_) => 0x06,
            Self::TextString(_) => 0x07,
            Self::ByteString(_) => 0x08,
            Self::DateTime(_) => 0x09,
            Self::Interval(_) => 0x0A,
        }
    }

    /// The type's name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Structure(_) => "Structure",
            Self::Integer(_) => "Integer",
            Self::LongInteger(_) => "Long Integer",
            Self::BigInteger(_) => "Big Integer",
            Self::Enumeration(_) => "Enumeration",
            Self::Boolean(_) => "Boolean",
            Self::TextString(_) => "Text String",
            Self::ByteString(_) => "Byte String",
            Self::DateTime(_) => "Date-Time",
            Self::Interval(_) => "Interval",
        }
    }
}

/// A tagged value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What it is.
    pub tag: Tag,
    /// Its value.
    pub value: Value,
}

impl Item {
    /// An item.
    pub fn new(tag: Tag, value: Value) -> Self {
        Self { tag, value }
    }

    /// A structure of `items`.
    pub fn structure(tag: Tag, items: Vec<Item>) -> Self {
        Self::new(tag, Value::Structure(items))
    }

    /// The items of a structure (empty for other values).
    pub fn items(&self) -> &[Item] {
        match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        }
    }

    /// The first child with `tag`.
    pub fn find(&self, tag: Tag) -> Option<&Item> {
        self.items().iter().find(|i| i.tag == tag)
    }

    /// Every child with `tag`.
    pub fn find_all(&self, tag: Tag) -> impl Iterator<Item = &Item> {
        self.items().iter().filter(move |i| i.tag == tag)
    }

    /// Encodes the item, appending to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let tag = self.tag.0.to_be_bytes();
        out.extend_from_slice(&tag[1..]);
        out.push(self.value.type_code());
        let length_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        match &self.value {
            Value::Structure(items) => {
                for item in items {
                    item.encode(out);
                }
            }
            Value::Integer(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::LongInteger(v) | Value::DateTime(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::BigInteger(v) => out.extend_from_slice(v),
            Value::ByteString(v) => out.extend_from_slice(v),
            Value::Enumeration(v) | Value::Interval(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::Boolean(v) => out.extend_from_slice(&u64::from(*v).to_be_bytes()),
            Value::TextString(v) => out.extend_from_slice(v.as_bytes()),
        }
        let length = out.len() - start;
        // A message is far below 4 GiB (requests are built by us).
        let length32 = u32::try_from(length).unwrap_or(u32::MAX);
        out[length_at..length_at + 4].copy_from_slice(&length32.to_be_bytes());
        out.resize(out.len() + padding(length), 0);
    }

    /// The item's encoding, in a buffer of exactly its size (never
    /// reallocated, so no stray copy of a key is left behind).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// The length of the item's encoding, padding included.
    pub fn encoded_len(&self) -> usize {
        let length = match &self.value {
            Value::Structure(items) => items.iter().map(Item::encoded_len).sum(),
            Value::Integer(_) | Value::Enumeration(_) | Value::Interval(_) => 4,
            Value::LongInteger(_) | Value::DateTime(_) | Value::Boolean(_) => 8,
            Value::BigInteger(v) => v.len(),
            Value::ByteString(v) => v.len(),
            Value::TextString(v) => v.len(),
        };
        HEADER_LEN + length + padding(length)
    }

    /// Decodes exactly one item that fills `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, KmipError> {
        let (item, used) = decode_at(bytes, 0, 0)?;
        if used != bytes.len() {
            return Err(malformed(
                used,
                format!("{} bytes follow the message", bytes.len() - used),
            ));
        }
        Ok(item)
    }
}

/// The total length (header, value, padding) of the item whose 8-byte
/// header is `header`: how many bytes to read for a whole message.
pub fn total_len(header: &[u8; HEADER_LEN]) -> usize {
    let length = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    HEADER_LEN + length + padding(length)
}

fn padding(length: usize) -> usize {
    (8 - length % 8) % 8
}

fn malformed(offset: usize, detail: impl Into<String>) -> KmipError {
    KmipError::Malformed {
        offset,
        detail: detail.into(),
    }
}

fn decode_at(bytes: &[u8], offset: usize, depth: usize) -> Result<(Item, usize), KmipError> {
    if depth > MAX_DEPTH {
        return Err(malformed(offset, format!("structures nested deeper than {MAX_DEPTH}")));
    }
    let header = bytes
        .get(offset..offset + HEADER_LEN)
        .ok_or_else(|| malformed(offset, "truncated item header"))?;
    let tag = Tag(u32::from_be_bytes([0, header[0], header[1], header[2]]));
    let kind = header[3];
    let length = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let start = offset + HEADER_LEN;
    let end = start
        .checked_add(length)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| malformed(offset, format!("tag {:#08x}: length {length} runs past the end", tag.0)))?;
    let padded_end = end + padding(length);
    let pad = bytes
        .get(end..padded_end)
        .ok_or_else(|| malformed(end, format!("tag {:#08x}: padding runs past the end", tag.0)))?;
    if pad.iter().any(|b| *b != 0) {
        return Err(malformed(end, format!("tag {:#08x}: padding is not zero", tag.0)));
    }
    let raw = &bytes[start..end];
    let fixed = |want: usize| -> Result<(), KmipError> {
        if length == want {
            Ok(())
        } else {
            Err(malformed(
                offset,
                format!("tag {:#08x}: length {length}, this type needs {want}", tag.0),
            ))
        }
    };
    let value = match kind {
        0x01 => {
            let mut items = Vec::new();
            let mut at = start;
            while at < end {
                let (item, next) = decode_at(&bytes[..end], at, depth + 1)?;
                items.push(item);
                at = next;
            }
            Value::Structure(items)
        }
        0x02 => {
            fixed(4)?;
            Value::Integer(i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
        }
        0x03 | 0x09 => {
            fixed(8)?;
            let v = i64::from_be_bytes([raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]]);
            if kind == 0x03 {
                Value::LongInteger(v)
            } else {
                Value::DateTime(v)
            }
        }
        0x04 => {
            if length == 0 || !length.is_multiple_of(8) {
                return Err(malformed(
                    offset,
                    format!(
                        "tag {:#08x}: a big integer's length must be a multiple of 8, not {length}",
                        tag.0
                    ),
                ));
            }
            Value::BigInteger(raw.to_vec())
        }
        0x05 | 0x0A => {
            fixed(4)?;
            let v = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            if kind == 0x05 {
                Value::Enumeration(v)
            } else {
                Value::Interval(v)
            }
        }
        0x06 => {
            fixed(8)?;
            match u64::from_be_bytes([raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]]) {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                other => return Err(malformed(offset, format!("tag {:#08x}: boolean value {other}", tag.0))),
            }
        }
        0x07 => Value::TextString(
            std::str::from_utf8(raw)
                .map_err(|_| malformed(start, format!("tag {:#08x}: text is not UTF-8", tag.0)))?
                .to_owned(),
        ),
        0x08 => Value::ByteString(Zeroizing::new(raw.to_vec())),
        other => {
            return Err(malformed(
                offset + 3,
                format!("tag {:#08x}: unknown type {other:#04x}", tag.0),
            ));
        }
    };
    Ok((Item { tag, value }, padded_end))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    const T: Tag = Tag(0x420020);

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The encoding examples of the KMIP 1.4 specification, section 9.1.2.
    #[test]
    fn the_specifications_examples_encode_and_decode() {
        let cases = [
            (Value::Integer(8), "420020 02 00000004 00000008 00000000"),
            (
                Value::LongInteger(123_456_789_000_000_000),
                "420020 03 00000008 01B69B4BA5749200",
            ),
            (
                Value::BigInteger(hex("0000000003FD35EB6BC2DF4618080000")),
                "420020 04 00000010 0000000003FD35EB 6BC2DF4618080000",
            ),
            (Value::Enumeration(255), "420020 05 00000004 000000FF 00000000"),
            (Value::Boolean(true), "420020 06 00000008 0000000000000001"),
            (
                Value::TextString("Hello World".into()),
                "420020 07 0000000B 48656C6C6F20576F 726C640000000000",
            ),
            (
                Value::ByteString(Zeroizing::new(vec![1, 2, 3])),
                "420020 08 00000003 0102030000000000",
            ),
            (Value::DateTime(0x47DA_67F8), "420020 09 00000008 0000000047DA67F8"),
            (Value::Interval(864_000), "420020 0A 00000004 000D2F00 00000000"),
        ];
        for (value, encoded) in cases {
            let item = Item::new(T, value);
            assert_eq!(item.to_bytes(), hex(encoded), "{item:?}");
            assert_eq!(item.encoded_len(), hex(encoded).len());
            assert_eq!(Item::decode(&hex(encoded)).unwrap(), item);
        }
        let structure = Item::structure(
            T,
            vec![
                Item::new(Tag(0x420004), Value::Enumeration(254)),
                Item::new(Tag(0x420005), Value::Integer(255)),
            ],
        );
        let encoded =
            hex("420020 01 00000020 420004 05 00000004 000000FE 00000000 420005 02 00000004 000000FF 00000000");
        assert_eq!(structure.to_bytes(), encoded);
        assert_eq!(structure.encoded_len(), encoded.len());
        assert_eq!(Item::decode(&encoded).unwrap(), structure);
    }

    #[test]
    fn malformed_bytes_are_refused_with_the_offset_and_the_cause() {
        let bad = [
            ("420020 02 00000004 000000", "runs past the end"),
            ("420020 02 0000", "truncated item header"),
            ("420020 02 00000005 0000000800 000000", "needs 4"),
            ("420020 02 00000004 00000008 00000001", "padding is not zero"),
            ("420020 06 00000008 0000000000000002", "boolean value 2"),
            ("420020 07 00000002 FFFE000000000000", "not UTF-8"),
            ("420020 0B 00000000", "unknown type"),
            ("420020 01 00000010 420004 05 00000004 000000FE", "runs past"),
            ("420020 02 00000004 00000008 00000000 00", "follow the message"),
            ("420020 04 00000003 0102030000000000", "multiple of 8"),
            ("420020 01 FFFFFFF8", "runs past the end"),
        ];
        for (bytes, needle) in bad {
            let e = Item::decode(&hex(bytes)).unwrap_err().to_string();
            assert!(e.contains(needle), "{bytes}: {e}");
        }
        // Nesting beyond the limit.
        let mut item = Item::new(T, Value::Integer(1));
        for _ in 0..=MAX_DEPTH {
            item = Item::structure(T, vec![item]);
        }
        let e = Item::decode(&item.to_bytes()).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
    }

    #[test]
    fn byte_strings_are_never_printed() {
        let item = Item::new(T, Value::ByteString(Zeroizing::new(b"secret key".to_vec())));
        assert!(!format!("{item:?}").contains("secret"));
    }
}
