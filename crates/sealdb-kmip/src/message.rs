//! KMIP request and response messages, one batch item each, and the
//! payloads of the operations sealdb uses, in KMIP 1.x form (attributes as
//! name/value pairs) or 2.0 form (attributes as tagged items).

use crate::KmipError;
use crate::spec::{self, Operation, State, tag};
use crate::ttlv::{Item, Value};

/// A KMIP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Major.
    pub major: i32,
    /// Minor.
    pub minor: i32,
}

impl ProtocolVersion {
    /// A version.
    pub const fn new(major: i32, minor: i32) -> Self {
        Self { major, minor }
    }

    /// Whether attributes use the KMIP 2.0 encoding.
    pub fn is_2(self) -> bool {
        self.major >= 2
    }

    /// Whether Encrypt and Decrypt carry an authenticated-encryption tag
    /// (KMIP 1.4 and later).
    pub fn has_aead(self) -> bool {
        self >= Self::new(1, 4)
    }

    fn item(self) -> Item {
        Item::structure(
            tag::PROTOCOL_VERSION,
            vec![
                Item::new(tag::PROTOCOL_VERSION_MAJOR, Value::Integer(self.major)),
                Item::new(tag::PROTOCOL_VERSION_MINOR, Value::Integer(self.minor)),
            ],
        )
    }

    fn from_item(item: &Item) -> Option<Self> {
        Some(Self::new(
            int(item.find(tag::PROTOCOL_VERSION_MAJOR)?)?,
            int(item.find(tag::PROTOCOL_VERSION_MINOR)?)?,
        ))
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl std::str::FromStr for ProtocolVersion {
    type Err = KmipError;
    fn from_str(s: &str) -> Result<Self, KmipError> {
        let version = s
            .trim()
            .split_once('.')
            .and_then(|(a, b)| Some(Self::new(a.parse().ok()?, b.parse().ok()?)))
            .filter(|v| SUPPORTED.contains(v))
            .ok_or_else(|| {
                KmipError::Config(format!(
                    "kmip-version {s:?} is not one sealdb speaks; use one of {}",
                    supported_list()
                ))
            })?;
        Ok(version)
    }
}

/// The versions sealdb speaks, preferred first.
pub const SUPPORTED: [ProtocolVersion; 6] = [
    ProtocolVersion::new(2, 0),
    ProtocolVersion::new(1, 4),
    ProtocolVersion::new(1, 3),
    ProtocolVersion::new(1, 2),
    ProtocolVersion::new(1, 1),
    ProtocolVersion::new(1, 0),
];

/// `2.0, 1.4, ...` for messages.
pub fn supported_list() -> String {
    SUPPORTED.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
}

/// Largest response sealdb asks for and accepts.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A request message with one batch item.
pub fn request(version: ProtocolVersion, operation: Operation, payload: Vec<Item>) -> Item {
    Item::structure(
        tag::REQUEST_MESSAGE,
        vec![
            Item::structure(
                tag::REQUEST_HEADER,
                vec![
                    version.item(),
                    Item::new(tag::MAXIMUM_RESPONSE_SIZE, Value::Integer(MAX_RESPONSE_BYTES as i32)),
                    Item::new(tag::BATCH_COUNT, Value::Integer(1)),
                ],
            ),
            Item::structure(
                tag::BATCH_ITEM,
                vec![
                    Item::new(tag::OPERATION, Value::Enumeration(operation as u32)),
                    Item::structure(tag::REQUEST_PAYLOAD, payload),
                ],
            ),
        ],
    )
}

/// The payload of a successful response to `operation`, or the server's
/// failure as [`KmipError::Failed`].
pub fn response_payload(
    message: &Item,
    operation: Operation,
    host: &str,
    object: Option<&str>,
) -> Result<Item, KmipError> {
    let unexpected = |detail: &str| KmipError::Unexpected {
        host: host.to_owned(),
        operation: operation.name(),
        detail: detail.to_owned(),
    };
    if message.tag != tag::RESPONSE_MESSAGE {
        return Err(unexpected("not a Response Message"));
    }
    let batch = message
        .find(tag::BATCH_ITEM)
        .ok_or_else(|| unexpected("no Batch Item"))?;
    if let Some(op) = batch.find(tag::OPERATION).and_then(enumeration)
        && op != operation as u32
    {
        return Err(unexpected(&format!("it answers operation {op:#x}")));
    }
    let status = batch
        .find(tag::RESULT_STATUS)
        .and_then(enumeration)
        .ok_or_else(|| unexpected("no Result Status"))?;
    if status != 0 {
        let code = batch.find(tag::RESULT_REASON).and_then(enumeration).unwrap_or(0x100);
        let message = batch
            .find(tag::RESULT_MESSAGE)
            .and_then(text)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Err(KmipError::Failed {
            host: host.to_owned(),
            operation: operation.name(),
            object: object.map(|o| format!(" on object {o}")).unwrap_or_default(),
            reason: spec::result_reason_name(code).to_owned(),
            message,
            code,
        });
    }
    Ok(batch
        .find(tag::RESPONSE_PAYLOAD)
        .cloned()
        .unwrap_or_else(|| Item::structure(tag::RESPONSE_PAYLOAD, Vec::new())))
}

/// Discover Versions: the versions sealdb speaks, preferred first.
pub fn discover_versions_payload(offer: &[ProtocolVersion]) -> Vec<Item> {
    offer.iter().map(|v| v.item()).collect()
}

/// The versions a Discover Versions response lists, in the server's order.
pub fn discovered_versions(payload: &Item) -> Vec<ProtocolVersion> {
    payload
        .find_all(tag::PROTOCOL_VERSION)
        .filter_map(ProtocolVersion::from_item)
        .collect()
}

/// What a Query returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Operations the server supports (enumeration values).
    pub operations: Vec<u32>,
    /// The server's Vendor Identification.
    pub vendor: Option<String>,
}

impl QueryResult {
    /// The operations sealdb needs that the server does not list.
    pub fn missing(&self) -> Vec<Operation> {
        Operation::ALL
            .into_iter()
            .filter(|op| *op != Operation::DiscoverVersions && !self.operations.contains(&(*op as u32)))
            .collect()
    }
}

/// Query: operations and server information.
pub fn query_payload() -> Vec<Item> {
    vec![
        Item::new(tag::QUERY_FUNCTION, Value::Enumeration(spec::QUERY_OPERATIONS)),
        Item::new(tag::QUERY_FUNCTION, Value::Enumeration(spec::QUERY_SERVER_INFORMATION)),
    ]
}

/// A Query response.
pub fn query_result(payload: &Item) -> QueryResult {
    QueryResult {
        operations: payload.find_all(tag::OPERATION).filter_map(enumeration).collect(),
        vendor: payload
            .find(tag::VENDOR_IDENTIFICATION)
            .and_then(text)
            .map(str::to_owned),
    }
}

/// The fields of a Name: its text, as uninterpreted text.
fn name_items(name: &str) -> Vec<Item> {
    vec![
        Item::new(tag::NAME_VALUE, Value::TextString(name.to_owned())),
        Item::new(tag::NAME_TYPE, Value::Enumeration(spec::NAME_TYPE_TEXT)),
    ]
}

fn name_structure(name: &str) -> Item {
    Item::structure(tag::NAME, name_items(name))
}

/// A 1.x Attribute (name/value pair).
fn attribute(name: &str, value: Value) -> Item {
    Item::structure(
        tag::ATTRIBUTE,
        vec![
            Item::new(tag::ATTRIBUTE_NAME, Value::TextString(name.to_owned())),
            Item::new(tag::ATTRIBUTE_VALUE, value),
        ],
    )
}

/// Create: an AES-256 key for encryption and decryption named `name`.
pub fn create_payload(version: ProtocolVersion, name: &str) -> Vec<Item> {
    let object_type = Item::new(tag::OBJECT_TYPE, Value::Enumeration(spec::OBJECT_TYPE_SYMMETRIC_KEY));
    if version.is_2() {
        vec![
            object_type,
            Item::structure(
                tag::ATTRIBUTES,
                vec![
                    Item::new(tag::CRYPTOGRAPHIC_ALGORITHM, Value::Enumeration(spec::ALGORITHM_AES)),
                    Item::new(tag::CRYPTOGRAPHIC_LENGTH, Value::Integer(256)),
                    Item::new(
                        tag::CRYPTOGRAPHIC_USAGE_MASK,
                        Value::Integer(spec::USAGE_ENCRYPT_DECRYPT),
                    ),
                    name_structure(name),
                ],
            ),
        ]
    } else {
        vec![
            object_type,
            Item::structure(
                tag::TEMPLATE_ATTRIBUTE,
                vec![
                    attribute("Cryptographic Algorithm", Value::Enumeration(spec::ALGORITHM_AES)),
                    attribute("Cryptographic Length", Value::Integer(256)),
                    attribute("Cryptographic Usage Mask", Value::Integer(spec::USAGE_ENCRYPT_DECRYPT)),
                    attribute("Name", Value::Structure(name_items(name))),
                ],
            ),
        ]
    }
}

/// The Unique Identifier of a response payload.
pub fn unique_identifier(payload: &Item) -> Option<String> {
    payload.find(tag::UNIQUE_IDENTIFIER).and_then(text).map(str::to_owned)
}

/// A payload holding only the object's Unique Identifier (Activate,
/// Destroy, Get).
pub fn id_payload(id: &str) -> Vec<Item> {
    vec![Item::new(tag::UNIQUE_IDENTIFIER, Value::TextString(id.to_owned()))]
}

/// Revoke `id`: retired (Deactivated) or compromised.
pub fn revoke_payload(id: &str, compromised: bool, now_unix: i64) -> Vec<Item> {
    let code = if compromised {
        spec::REVOKE_KEY_COMPROMISE
    } else {
        spec::REVOKE_CESSATION_OF_OPERATION
    };
    let mut payload = vec![
        Item::new(tag::UNIQUE_IDENTIFIER, Value::TextString(id.to_owned())),
        Item::structure(
            tag::REVOCATION_REASON,
            vec![Item::new(tag::REVOCATION_REASON_CODE, Value::Enumeration(code))],
        ),
    ];
    if compromised {
        payload.push(Item::new(tag::COMPROMISE_OCCURRENCE_DATE, Value::DateTime(now_unix)));
    }
    payload
}

/// Locate: objects named `name`.
pub fn locate_payload(version: ProtocolVersion, name: &str) -> Vec<Item> {
    if version.is_2() {
        vec![Item::structure(tag::ATTRIBUTES, vec![name_structure(name)])]
    } else {
        vec![attribute("Name", Value::Structure(name_items(name)))]
    }
}

/// Locate: every object the client may see.
pub fn locate_all_payload(version: ProtocolVersion) -> Vec<Item> {
    if version.is_2() {
        vec![Item::structure(tag::ATTRIBUTES, Vec::new())]
    } else {
        Vec::new()
    }
}

/// The identifiers a Locate response lists.
pub fn located(payload: &Item) -> Vec<String> {
    payload
        .find_all(tag::UNIQUE_IDENTIFIER)
        .filter_map(text)
        .map(str::to_owned)
        .collect()
}

/// What Get Attributes tells of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyAttributes {
    /// Its state.
    pub state: Option<State>,
    /// Its names.
    pub names: Vec<String>,
    /// Dates, seconds since the Unix epoch.
    pub initial_date: Option<i64>,
    /// When it became active.
    pub activation_date: Option<i64>,
    /// When it was deactivated.
    pub deactivation_date: Option<i64>,
    /// When it was destroyed.
    pub destroy_date: Option<i64>,
    /// Its algorithm (enumeration value).
    pub algorithm: Option<u32>,
    /// Its length in bits.
    pub length: Option<i32>,
}

const ATTRIBUTE_NAMES: [(&str, crate::ttlv::Tag); 8] = [
    ("State", tag::STATE),
    ("Name", tag::NAME),
    ("Initial Date", tag::INITIAL_DATE),
    ("Activation Date", tag::ACTIVATION_DATE),
    ("Deactivation Date", tag::DEACTIVATION_DATE),
    ("Destroy Date", tag::DESTROY_DATE),
    ("Cryptographic Algorithm", tag::CRYPTOGRAPHIC_ALGORITHM),
    ("Cryptographic Length", tag::CRYPTOGRAPHIC_LENGTH),
];

/// Get Attributes: the attributes of [`KeyAttributes`].
pub fn get_attributes_payload(version: ProtocolVersion, id: &str) -> Vec<Item> {
    let mut payload = id_payload(id);
    for (name, t) in ATTRIBUTE_NAMES {
        payload.push(if version.is_2() {
            Item::new(tag::ATTRIBUTE_REFERENCE, Value::Enumeration(t.0))
        } else {
            Item::new(tag::ATTRIBUTE_NAME, Value::TextString(name.to_owned()))
        });
    }
    payload
}

/// A Get Attributes response, in either encoding.
pub fn key_attributes(payload: &Item) -> KeyAttributes {
    let mut attributes = KeyAttributes::default();
    let mut set = |t: crate::ttlv::Tag, value: &Value| {
        let date = match value {
            Value::DateTime(d) => Some(*d),
            _ => None,
        };
        match t {
            tag::STATE => {
                if let Value::Enumeration(code) = value {
                    attributes.state = State::from_code(*code);
                }
            }
            tag::NAME => {
                if let Value::Structure(items) = value
                    && let Some(Value::TextString(name)) =
                        items.iter().find(|i| i.tag == tag::NAME_VALUE).map(|i| &i.value)
                {
                    attributes.names.push(name.clone());
                }
            }
            tag::INITIAL_DATE => attributes.initial_date = date,
            tag::ACTIVATION_DATE => attributes.activation_date = date,
            tag::DEACTIVATION_DATE => attributes.deactivation_date = date,
            tag::DESTROY_DATE => attributes.destroy_date = date,
            tag::CRYPTOGRAPHIC_ALGORITHM => {
                if let Value::Enumeration(code) = value {
                    attributes.algorithm = Some(*code);
                }
            }
            tag::CRYPTOGRAPHIC_LENGTH => {
                if let Value::Integer(bits) = value {
                    attributes.length = Some(*bits);
                }
            }
            _ => {}
        }
    };
    // KMIP 1.x: Attribute { Attribute Name, Attribute Value }.
    for a in payload.find_all(tag::ATTRIBUTE) {
        if let (Some(name), Some(value)) = (a.find(tag::ATTRIBUTE_NAME).and_then(text), a.find(tag::ATTRIBUTE_VALUE))
            && let Some((_, t)) = ATTRIBUTE_NAMES.iter().find(|(n, _)| *n == name)
        {
            set(*t, &value.value);
        }
    }
    // KMIP 2.0: Attributes { tagged items }.
    if let Some(all) = payload.find(tag::ATTRIBUTES) {
        for item in all.items() {
            set(item.tag, &item.value);
        }
    }
    attributes
}

/// The raw key bytes of a Get response for a symmetric key.
pub fn key_material(payload: &Item) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let material = payload
        .find(tag::SYMMETRIC_KEY)?
        .find(tag::KEY_BLOCK)?
        .find(tag::KEY_VALUE)?
        .find(tag::KEY_MATERIAL)?;
    match &material.value {
        Value::ByteString(bytes) => Some(bytes.clone()),
        _ => None,
    }
}

fn gcm_parameters() -> Item {
    Item::structure(
        tag::CRYPTOGRAPHIC_PARAMETERS,
        vec![
            Item::new(tag::BLOCK_CIPHER_MODE, Value::Enumeration(spec::MODE_GCM)),
            Item::new(tag::CRYPTOGRAPHIC_ALGORITHM, Value::Enumeration(spec::ALGORITHM_AES)),
            Item::new(tag::TAG_LENGTH, Value::Integer(16)),
        ],
    )
}

/// Encrypt `data` under key `id` with AES-GCM, nonce and additional data
/// given (KMIP 1.4 and later).
pub fn encrypt_payload(id: &str, data: &[u8], nonce: &[u8], aad: &[u8]) -> Vec<Item> {
    vec![
        Item::new(tag::UNIQUE_IDENTIFIER, Value::TextString(id.to_owned())),
        gcm_parameters(),
        Item::new(tag::DATA, bytes_value(data)),
        Item::new(tag::IV_COUNTER_NONCE, bytes_value(nonce)),
        Item::new(tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, bytes_value(aad)),
    ]
}

/// Decrypt what [`encrypt_payload`] produced.
pub fn decrypt_payload(id: &str, ciphertext: &[u8], nonce: &[u8], aad: &[u8], tag_bytes: &[u8]) -> Vec<Item> {
    vec![
        Item::new(tag::UNIQUE_IDENTIFIER, Value::TextString(id.to_owned())),
        gcm_parameters(),
        Item::new(tag::DATA, bytes_value(ciphertext)),
        Item::new(tag::IV_COUNTER_NONCE, bytes_value(nonce)),
        Item::new(tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, bytes_value(aad)),
        Item::new(tag::AUTHENTICATED_ENCRYPTION_TAG, bytes_value(tag_bytes)),
    ]
}

/// A byte string of a payload.
pub fn bytes(payload: &Item, t: crate::ttlv::Tag) -> Option<&[u8]> {
    match &payload.find(t)?.value {
        Value::ByteString(b) => Some(b.as_slice()),
        _ => None,
    }
}

/// A byte string value (zeroized when dropped).
fn bytes_value(b: &[u8]) -> Value {
    Value::ByteString(zeroize::Zeroizing::new(b.to_vec()))
}

fn int(item: &Item) -> Option<i32> {
    match item.value {
        Value::Integer(v) => Some(v),
        _ => None,
    }
}

fn enumeration(item: &Item) -> Option<u32> {
    match item.value {
        Value::Enumeration(v) => Some(v),
        _ => None,
    }
}

fn text(item: &Item) -> Option<&str> {
    match &item.value {
        Value::TextString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    fn failure(reason: u32, message: &str) -> Item {
        Item::structure(
            tag::RESPONSE_MESSAGE,
            vec![Item::structure(
                tag::BATCH_ITEM,
                vec![
                    Item::new(tag::OPERATION, Value::Enumeration(Operation::Get as u32)),
                    Item::new(tag::RESULT_STATUS, Value::Enumeration(1)),
                    Item::new(tag::RESULT_REASON, Value::Enumeration(reason)),
                    Item::new(tag::RESULT_MESSAGE, Value::TextString(message.into())),
                ],
            )],
        )
    }

    #[test]
    fn a_failed_operation_names_the_host_operation_object_and_reason() {
        let e = response_payload(&failure(1, "no such key"), Operation::Get, "kms1:5696", Some("42")).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "the key server kms1:5696 failed Get on object 42: Item Not Found: no such key"
        );
        let e = response_payload(&failure(1, ""), Operation::Encrypt, "h", None).unwrap_err();
        assert!(e.to_string().contains("it answers operation 0xa"), "{e}");
    }

    #[test]
    fn versions_parse_and_unknown_ones_are_refused_with_the_list() {
        assert_eq!("1.4".parse::<ProtocolVersion>().unwrap(), ProtocolVersion::new(1, 4));
        let e = "1.5".parse::<ProtocolVersion>().unwrap_err().to_string();
        assert!(e.contains("2.0, 1.4, 1.3, 1.2, 1.1, 1.0"), "{e}");
    }

    #[test]
    fn attributes_are_read_in_both_encodings() {
        let v1 = Item::structure(
            tag::RESPONSE_PAYLOAD,
            vec![
                attribute("State", Value::Enumeration(3)),
                attribute("Deactivation Date", Value::DateTime(1_700_000_000)),
            ],
        );
        let a = key_attributes(&v1);
        assert_eq!(a.state, Some(State::Deactivated));
        assert_eq!(a.deactivation_date, Some(1_700_000_000));
        let v2 = Item::structure(
            tag::RESPONSE_PAYLOAD,
            vec![Item::structure(
                tag::ATTRIBUTES,
                vec![
                    Item::new(tag::STATE, Value::Enumeration(5)),
                    name_structure("sealdb/mk/1"),
                ],
            )],
        );
        let a = key_attributes(&v2);
        assert_eq!(a.state, Some(State::Destroyed));
        assert_eq!(a.names, vec!["sealdb/mk/1".to_owned()]);
    }
}
