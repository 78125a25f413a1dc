//! The materials an authority checked before it issued an agent's certificate (draft 2.2:
//! developer, organisation, function type, skills, permissions), written into the
//! certificate as a non-critical extension so that whoever verifies the certificate (a
//! gateway at access, any other domain's tools) reads them from it, not from the authority's
//! records.
//!
//! The extension's OID is `2.25.96270484195323521592085208309151316107`: an OID under the
//! UUID arc of X.667 (`2.25.<UUID as an integer>`), which needs no registration. Its value:
//!
//! ```text
//! AgentMaterials ::= SEQUENCE {
//!     organization      UTF8String (SIZE (0..256)),
//!     developer         UTF8String (SIZE (0..256)),
//!     functionType      UTF8String (SIZE (0..256)),
//!     qualificationRef  UTF8String (SIZE (0..256)),
//!     skills            SEQUENCE SIZE (0..64) OF UTF8String (SIZE (0..256)),
//!     permissionScopes  SEQUENCE SIZE (0..64) OF UTF8String (SIZE (0..256)) }
//! ```
//!
//! The decoder refuses more than [`MAX_ENCODED`] bytes before it parses anything, and any
//! field or list past the sizes above.

use agw_proto::pb::IdentityMaterials;
use x509_parser::{oid_registry::Oid, prelude::FromDer, prelude::X509Certificate};
use yasna::{ASN1Error, ASN1ErrorKind, BERReader, DERWriter};

/// The extension's OID, dotted.
pub const MATERIALS_OID: &str = "2.25.96270484195323521592085208309151316107";

/// The extension's OID as DER (tag, length, value): what a certificate carries.
pub const MATERIALS_OID_DER: &[u8] = &[
    0x06, 0x14, 0x69, 0x81, 0x90, 0xed, 0x82, 0xd5, 0x9d, 0xf2, 0xc2, 0x9e, 0xf1, 0xaf, 0xb0, 0xe5,
    0xe9, 0xa7, 0xe6, 0x80, 0xf1, 0x0b,
];

/// The longest field, in bytes.
pub const MAX_FIELD: usize = 256;
/// The most skills, and the most permission scopes.
pub const MAX_ITEMS: usize = 64;
/// The longest encoding the decoder reads: every field and item at its longest, with room
/// for the DER headers.
pub const MAX_ENCODED: usize = (4 + 2 * MAX_ITEMS) * (MAX_FIELD + 4) + 16;

/// Why an extension's value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaterialsError {
    /// Longer than [`MAX_ENCODED`]; nothing was parsed.
    #[error("materials extension of {0} bytes (at most {MAX_ENCODED})")]
    TooLong(usize),
    /// A field or list past its size.
    #[error("materials field past {MAX_FIELD} bytes or list past {MAX_ITEMS} items")]
    TooBig,
    /// Not the DER the module describes.
    #[error("materials extension is not valid DER: {0}")]
    Malformed(String),
    /// The certificate itself does not parse.
    #[error("certificate does not parse")]
    Certificate,
}

/// The extension's value for `materials`; `None` when a field or list is past its size (the
/// authority checks them before it issues).
pub fn encode(materials: &IdentityMaterials) -> Option<Vec<u8>> {
    if !within_limits(materials) {
        return None;
    }
    let (fields, lists) = parts(materials);
    Some(yasna::construct_der(|writer| {
        writer.write_sequence(|seq| {
            for field in fields {
                seq.next().write_utf8_string(field);
            }
            for list in lists {
                write_list(seq.next(), list);
            }
        })
    }))
}

/// Whether every field is at most [`MAX_FIELD`] bytes and every list at most [`MAX_ITEMS`]
/// items of at most [`MAX_FIELD`] bytes: what an authority may certify.
pub fn within_limits(materials: &IdentityMaterials) -> bool {
    let (fields, lists) = parts(materials);
    fields.iter().all(|f| f.len() <= MAX_FIELD)
        && lists
            .iter()
            .all(|l| l.len() <= MAX_ITEMS && l.iter().all(|s| s.len() <= MAX_FIELD))
}

/// The fields and the lists, in the extension's order.
fn parts(m: &IdentityMaterials) -> ([&String; 4], [&Vec<String>; 2]) {
    (
        [
            &m.organization,
            &m.developer,
            &m.function_type,
            &m.qualification_ref,
        ],
        [&m.skills, &m.permission_scope],
    )
}

fn write_list(writer: DERWriter<'_>, items: &[String]) {
    writer.write_sequence(|seq| {
        for item in items {
            seq.next().write_utf8_string(item);
        }
    })
}

/// The materials in an extension's value `der`.
pub fn decode(der: &[u8]) -> Result<IdentityMaterials, MaterialsError> {
    if der.len() > MAX_ENCODED {
        return Err(MaterialsError::TooLong(der.len()));
    }
    let too_big = || ASN1Error::new(ASN1ErrorKind::Extra);
    let mut oversized = false;
    let parsed = yasna::parse_der(der, |reader| {
        reader.read_sequence(|seq| {
            let mut field = || -> Result<String, ASN1Error> {
                let text = seq.next().read_utf8string()?;
                if text.len() > MAX_FIELD {
                    oversized = true;
                    return Err(too_big());
                }
                Ok(text)
            };
            let organization = field()?;
            let developer = field()?;
            let function_type = field()?;
            let qualification_ref = field()?;
            let skills = read_list(seq.next(), &mut oversized)?;
            let permission_scope = read_list(seq.next(), &mut oversized)?;
            Ok(IdentityMaterials {
                organization,
                developer,
                function_type,
                qualification_ref,
                skills,
                permission_scope,
            })
        })
    });
    parsed.map_err(|e| {
        if oversized {
            MaterialsError::TooBig
        } else {
            MaterialsError::Malformed(e.to_string())
        }
    })
}

fn read_list(reader: BERReader<'_, '_>, oversized: &mut bool) -> Result<Vec<String>, ASN1Error> {
    let mut items = Vec::new();
    reader.read_sequence_of(|item| {
        let text = item.read_utf8string()?;
        if items.len() == MAX_ITEMS || text.len() > MAX_FIELD {
            *oversized = true;
            return Err(ASN1Error::new(ASN1ErrorKind::Extra));
        }
        items.push(text);
        Ok(())
    })?;
    Ok(items)
}

/// The materials `certificate` (DER) carries, `None` when it has no such extension. Read
/// from a certificate whose chain was verified: the issuer vouches for them.
pub fn materials_of(certificate: &[u8]) -> Result<Option<IdentityMaterials>, MaterialsError> {
    let (_, cert) =
        X509Certificate::from_der(certificate).map_err(|_| MaterialsError::Certificate)?;
    materials_in(&cert)
}

/// The materials a parsed certificate carries.
pub(crate) fn materials_in(
    cert: &X509Certificate<'_>,
) -> Result<Option<IdentityMaterials>, MaterialsError> {
    let oid = Oid::new(std::borrow::Cow::Borrowed(&MATERIALS_OID_DER[2..]));
    match cert.extensions().iter().find(|e| e.oid == oid) {
        Some(extension) => decode(extension.value).map(Some),
        None => Ok(None),
    }
}

/// The decoder's fuzz check, shared by the cargo-fuzz target (`fuzz/fuzz_targets/materials.rs`)
/// and the test that replays its seeds on stable: hostile bytes get a typed refusal, never a
/// panic; what decodes is within the limits and encodes back to materials that decode the same.
pub fn check_decode(data: &[u8]) {
    let Ok(materials) = decode(data) else {
        return;
    };
    assert!(within_limits(&materials), "decoded past the limits");
    let again = encode(&materials)
        .unwrap_or_else(|| panic!("decoded materials past the limits: {materials:?}"));
    assert_eq!(decode(&again).as_ref(), Ok(&materials), "round trip");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IdentityMaterials {
        IdentityMaterials {
            organization: "Example Travel".into(),
            developer: "dev@example.com".into(),
            function_type: "booking".into(),
            qualification_ref: "".into(),
            skills: vec!["flights".into(), "hotels".into()],
            permission_scope: vec!["payments".into()],
        }
    }

    #[test]
    fn the_oid_is_the_uuid_arc_written_in_der() {
        // The first byte holds the first two arcs (40 * 2 + 25); the UUID follows in base 128.
        let value = &MATERIALS_OID_DER[2..];
        assert_eq!(value[0], 40 * 2 + 25);
        let uuid = value[1..]
            .iter()
            .fold(0u128, |n, b| (n << 7) | u128::from(b & 0x7f));
        assert!(value[1..value.len() - 1].iter().all(|b| b & 0x80 != 0));
        assert_eq!(value[value.len() - 1] & 0x80, 0);
        assert_eq!(format!("2.25.{uuid}"), MATERIALS_OID);
        assert_eq!(
            (MATERIALS_OID_DER[0], MATERIALS_OID_DER[1] as usize),
            (0x06, MATERIALS_OID_DER.len() - 2)
        );
    }

    #[test]
    fn materials_encode_to_these_bytes_and_back() {
        let one = IdentityMaterials {
            organization: "O".into(),
            developer: "".into(),
            function_type: "f".into(),
            qualification_ref: "".into(),
            skills: vec![],
            permission_scope: vec!["p".into()],
        };
        let der = encode(&one).unwrap();
        assert_eq!(
            der,
            [
                0x30, 0x11, // SEQUENCE, 17 bytes
                0x0c, 0x01, b'O', // organization
                0x0c, 0x00, // developer
                0x0c, 0x01, b'f', // functionType
                0x0c, 0x00, // qualificationRef
                0x30, 0x00, // skills
                0x30, 0x03, 0x0c, 0x01, b'p', // permissionScopes
            ]
        );
        assert_eq!(decode(&der).unwrap(), one);
        assert_eq!(decode(&encode(&sample()).unwrap()).unwrap(), sample());
    }

    #[test]
    fn bad_bytes_are_refused_with_their_reason() {
        let good = encode(&sample()).unwrap();
        // Truncated anywhere, one field's tag changed, trailing bytes, nothing at all.
        for end in 0..good.len() {
            assert!(
                matches!(decode(&good[..end]), Err(MaterialsError::Malformed(_))),
                "{end}"
            );
        }
        let mut wrong_tag = good.clone();
        wrong_tag[2] = 0x13; // PrintableString where a UTF8String belongs
        assert!(matches!(
            decode(&wrong_tag),
            Err(MaterialsError::Malformed(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            decode(&trailing),
            Err(MaterialsError::Malformed(_))
        ));
        // Invalid UTF-8 inside a UTF8String.
        let bad_utf8 = [
            0x30, 0x0f, 0x0c, 0x01, 0xff, 0x0c, 0x00, 0x0c, 0x00, 0x0c, 0x00, 0x30, 0x00, 0x30,
            0x00,
        ];
        assert!(matches!(
            decode(&bad_utf8),
            Err(MaterialsError::Malformed(_))
        ));
        // A length that claims more than there is.
        assert!(matches!(
            decode(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            Err(MaterialsError::Malformed(_))
        ));
    }

    #[test]
    fn sizes_past_the_limits_are_refused_before_or_while_parsing() {
        assert_eq!(
            decode(&vec![0u8; MAX_ENCODED + 1]),
            Err(MaterialsError::TooLong(MAX_ENCODED + 1))
        );
        let mut long = sample();
        long.developer = "d".repeat(MAX_FIELD + 1);
        assert_eq!(encode(&long), None);
        let mut many = sample();
        many.permission_scope = (0..=MAX_ITEMS).map(|i| i.to_string()).collect();
        assert_eq!(encode(&many), None);
        // Written by hand past the limits, the decoder refuses them.
        let field = |s: &str, w: DERWriter<'_>| w.write_utf8_string(s);
        let long_field = yasna::construct_der(|w| {
            w.write_sequence(|seq| {
                field(&"d".repeat(MAX_FIELD + 1), seq.next());
                for _ in 0..3 {
                    field("", seq.next());
                }
                write_list(seq.next(), &[]);
                write_list(seq.next(), &[]);
            })
        });
        assert_eq!(decode(&long_field), Err(MaterialsError::TooBig));
        let many_items: Vec<String> = (0..=MAX_ITEMS).map(|i| i.to_string()).collect();
        let too_many = yasna::construct_der(|w| {
            w.write_sequence(|seq| {
                for _ in 0..4 {
                    field("", seq.next());
                }
                write_list(seq.next(), &many_items);
                write_list(seq.next(), &[]);
            })
        });
        assert_eq!(decode(&too_many), Err(MaterialsError::TooBig));
        // At the limits exactly, accepted.
        let mut full = sample();
        full.skills = (0..MAX_ITEMS).map(|_| "s".repeat(MAX_FIELD)).collect();
        full.permission_scope = full.skills.clone();
        full.organization = "o".repeat(MAX_FIELD);
        let der = encode(&full).unwrap();
        assert!(der.len() <= MAX_ENCODED);
        assert_eq!(decode(&der).unwrap(), full);
    }
}
