//! The TTLV decoder on arbitrary bytes: it never panics, and what it
//! accepts encodes back to exactly the same bytes (the decoder is strict:
//! one encoding per message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealdb_kmip::ttlv::Item;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = Item::decode(data) {
        let mut again = Vec::new();
        item.encode(&mut again);
        assert_eq!(again, data, "a decoded message encodes back to other bytes");
        assert_eq!(item.encoded_len(), data.len());
    }
});
