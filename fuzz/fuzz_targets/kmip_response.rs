//! A key server's response, as sealdb's client reads it: decoded, checked
//! as the answer to each operation, and every payload parser run on what
//! passes. Nothing may panic, whatever the server sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealdb_kmip::Operation;
use sealdb_kmip::message;
use sealdb_kmip::spec::tag;
use sealdb_kmip::ttlv::Item;

fuzz_target!(|data: &[u8]| {
    let Ok(response) = Item::decode(data) else {
        return;
    };
    for operation in Operation::ALL {
        let Ok(payload) = message::response_payload(&response, operation, "fuzz:5696", Some("1")) else {
            continue;
        };
        let _ = message::discovered_versions(&payload);
        let _ = message::query_result(&payload).missing();
        let _ = message::unique_identifier(&payload);
        let _ = message::located(&payload);
        let _ = message::key_attributes(&payload);
        let _ = message::key_material(&payload);
        let _ = message::bytes(&payload, tag::DATA);
        let _ = message::bytes(&payload, tag::AUTHENTICATED_ENCRYPTION_TAG);
    }
});
