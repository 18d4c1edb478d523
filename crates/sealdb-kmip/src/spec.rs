//! The KMIP tags and enumeration values sealdb uses (KMIP 1.4 and 2.0
//! specifications, section 9.1.3).

use crate::ttlv::Tag;

/// Tags.
#[allow(missing_docs)]
pub mod tag {
    use super::Tag;

    pub const ACTIVATION_DATE: Tag = Tag(0x420001);
    pub const ATTRIBUTE: Tag = Tag(0x420008);
    pub const ATTRIBUTE_INDEX: Tag = Tag(0x420009);
    pub const ATTRIBUTE_NAME: Tag = Tag(0x42000A);
    pub const ATTRIBUTE_VALUE: Tag = Tag(0x42000B);
    pub const BATCH_COUNT: Tag = Tag(0x42000D);
    pub const BATCH_ITEM: Tag = Tag(0x42000F);
    pub const BLOCK_CIPHER_MODE: Tag = Tag(0x420011);
    pub const COMPROMISE_OCCURRENCE_DATE: Tag = Tag(0x420021);
    pub const CRYPTOGRAPHIC_ALGORITHM: Tag = Tag(0x420028);
    pub const CRYPTOGRAPHIC_LENGTH: Tag = Tag(0x42002A);
    pub const CRYPTOGRAPHIC_PARAMETERS: Tag = Tag(0x42002B);
    pub const CRYPTOGRAPHIC_USAGE_MASK: Tag = Tag(0x42002C);
    pub const DEACTIVATION_DATE: Tag = Tag(0x42002F);
    pub const DESTROY_DATE: Tag = Tag(0x420033);
    pub const INITIAL_DATE: Tag = Tag(0x420039);
    pub const IV_COUNTER_NONCE: Tag = Tag(0x42003D);
    pub const KEY_BLOCK: Tag = Tag(0x420040);
    pub const KEY_FORMAT_TYPE: Tag = Tag(0x420042);
    pub const KEY_MATERIAL: Tag = Tag(0x420043);
    pub const KEY_VALUE: Tag = Tag(0x420045);
    pub const MAXIMUM_RESPONSE_SIZE: Tag = Tag(0x420050);
    pub const NAME: Tag = Tag(0x420053);
    pub const NAME_TYPE: Tag = Tag(0x420054);
    pub const NAME_VALUE: Tag = Tag(0x420055);
    pub const OBJECT_TYPE: Tag = Tag(0x420057);
    pub const OPERATION: Tag = Tag(0x42005C);
    pub const PROTOCOL_VERSION: Tag = Tag(0x420069);
    pub const PROTOCOL_VERSION_MAJOR: Tag = Tag(0x42006A);
    pub const PROTOCOL_VERSION_MINOR: Tag = Tag(0x42006B);
    pub const QUERY_FUNCTION: Tag = Tag(0x420074);
    pub const REQUEST_HEADER: Tag = Tag(0x420077);
    pub const REQUEST_MESSAGE: Tag = Tag(0x420078);
    pub const REQUEST_PAYLOAD: Tag = Tag(0x420079);
    pub const RESPONSE_HEADER: Tag = Tag(0x42007A);
    pub const RESPONSE_MESSAGE: Tag = Tag(0x42007B);
    pub const RESPONSE_PAYLOAD: Tag = Tag(0x42007C);
    pub const RESULT_MESSAGE: Tag = Tag(0x42007D);
    pub const RESULT_REASON: Tag = Tag(0x42007E);
    pub const RESULT_STATUS: Tag = Tag(0x42007F);
    pub const REVOCATION_REASON: Tag = Tag(0x420081);
    pub const REVOCATION_REASON_CODE: Tag = Tag(0x420082);
    pub const SERVER_INFORMATION: Tag = Tag(0x420088);
    pub const STATE: Tag = Tag(0x42008D);
    pub const SYMMETRIC_KEY: Tag = Tag(0x42008F);
    pub const TEMPLATE_ATTRIBUTE: Tag = Tag(0x420091);
    pub const TIME_STAMP: Tag = Tag(0x420092);
    pub const UNIQUE_BATCH_ITEM_ID: Tag = Tag(0x420093);
    pub const UNIQUE_IDENTIFIER: Tag = Tag(0x420094);
    pub const VENDOR_IDENTIFICATION: Tag = Tag(0x42009D);
    pub const DATA: Tag = Tag(0x4200C2);
    pub const TAG_LENGTH: Tag = Tag(0x4200CE);
    pub const AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA: Tag = Tag(0x4200FE);
    pub const AUTHENTICATED_ENCRYPTION_TAG: Tag = Tag(0x4200FF);
    /// KMIP 2.0: the attributes of Create, Locate, Get Attributes.
    pub const ATTRIBUTES: Tag = Tag(0x420125);
    /// KMIP 2.0: names an attribute in Get Attributes.
    pub const ATTRIBUTE_REFERENCE: Tag = Tag(0x42013B);
}

/// Operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Operation {
    Create = 0x01,
    Locate = 0x08,
    Get = 0x0A,
    GetAttributes = 0x0B,
    Activate = 0x12,
    Revoke = 0x13,
    Destroy = 0x14,
    Query = 0x18,
    DiscoverVersions = 0x1E,
    Encrypt = 0x1F,
    Decrypt = 0x20,
}

impl Operation {
    /// Whether asking again changes nothing on the server: reads and the
    /// cryptographic operations. Such a request may go to the next host
    /// when the first stops answering after it was sent; Create, Activate,
    /// Revoke and Destroy may not (a Create could be made twice).
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Self::Locate
                | Self::Get
                | Self::GetAttributes
                | Self::Query
                | Self::DiscoverVersions
                | Self::Encrypt
                | Self::Decrypt
        )
    }

    /// Every operation sealdb uses.
    pub const ALL: [Operation; 11] = [
        Self::Create,
        Self::Locate,
        Self::Get,
        Self::GetAttributes,
        Self::Activate,
        Self::Revoke,
        Self::Destroy,
        Self::Query,
        Self::DiscoverVersions,
        Self::Encrypt,
        Self::Decrypt,
    ];

    /// The operation with enumeration value `code`, if sealdb knows it.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as u32 == code)
    }

    /// The specification's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "Create",
            Self::Locate => "Locate",
            Self::Get => "Get",
            Self::GetAttributes => "Get Attributes",
            Self::Activate => "Activate",
            Self::Revoke => "Revoke",
            Self::Destroy => "Destroy",
            Self::Query => "Query",
            Self::DiscoverVersions => "Discover Versions",
            Self::Encrypt => "Encrypt",
            Self::Decrypt => "Decrypt",
        }
    }
}

/// Object Type: Symmetric Key.
pub const OBJECT_TYPE_SYMMETRIC_KEY: u32 = 0x02;
/// Cryptographic Algorithm: AES.
pub const ALGORITHM_AES: u32 = 0x03;
/// Block Cipher Mode: GCM.
pub const MODE_GCM: u32 = 0x09;
/// Cryptographic Usage Mask bits: Encrypt, Decrypt.
pub const USAGE_ENCRYPT_DECRYPT: i32 = 0x04 | 0x08;
/// Name Type: Uninterpreted Text String.
pub const NAME_TYPE_TEXT: u32 = 0x01;
/// Key Format Type: Raw.
pub const KEY_FORMAT_RAW: u32 = 0x01;
/// Query Function: Query Operations.
pub const QUERY_OPERATIONS: u32 = 0x01;
/// Query Function: Query Server Information.
pub const QUERY_SERVER_INFORMATION: u32 = 0x03;
/// Revocation Reason Code: Cessation of Operation (a key retired).
pub const REVOKE_CESSATION_OF_OPERATION: u32 = 0x06;
/// Revocation Reason Code: Key Compromise.
pub const REVOKE_KEY_COMPROMISE: u32 = 0x02;

/// A managed object's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created, not yet usable.
    PreActive,
    /// Usable.
    Active,
    /// Retired: decrypt only.
    Deactivated,
    /// Revoked for compromise: decrypt only.
    Compromised,
    /// Gone.
    Destroyed,
    /// Gone after a compromise.
    DestroyedCompromised,
}

impl State {
    /// The state with enumeration value `code`.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::PreActive,
            2 => Self::Active,
            3 => Self::Deactivated,
            4 => Self::Compromised,
            5 => Self::Destroyed,
            6 => Self::DestroyedCompromised,
            _ => return None,
        })
    }

    /// The specification's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PreActive => "Pre-Active",
            Self::Active => "Active",
            Self::Deactivated => "Deactivated",
            Self::Compromised => "Compromised",
            Self::Destroyed => "Destroyed",
            Self::DestroyedCompromised => "Destroyed Compromised",
        }
    }
}

/// The name of Result Reason `code` (KMIP 1.4 section 9.1.3.2.29).
pub fn result_reason_name(code: u32) -> &'static str {
    match code {
        0x01 => "Item Not Found",
        0x02 => "Response Too Large",
        0x03 => "Authentication Not Successful",
        0x04 => "Invalid Message",
        0x05 => "Operation Not Supported",
        0x06 => "Missing Data",
        0x07 => "Invalid Field",
        0x08 => "Feature Not Supported",
        0x09 => "Operation Canceled By Requester",
        0x0A => "Cryptographic Failure",
        0x0B => "Illegal Operation",
        0x0C => "Permission Denied",
        0x0D => "Object Archived",
        0x0E => "Index Out of Bounds",
        0x0F => "Application Namespace Not Supported",
        0x10 => "Key Format Type Not Supported",
        0x11 => "Key Compression Type Not Supported",
        0x12 => "Encoding Option Error",
        0x13 => "Key Value Not Present",
        0x14 => "Attestation Required",
        0x15 => "Attestation Failed",
        0x16 => "Sensitive",
        0x17 => "Not Extractable",
        0x18 => "Object Already Exists",
        0x100 => "General Failure",
        _ => "Unknown Reason",
    }
}
