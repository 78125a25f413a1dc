//! The materials an authority checked before it issued an agent's certificate (draft 2.2:
//! developer, organisation, function type, skills, permissions), written into the
//! certificate so that whoever verifies the certificate (a gateway at access, any other
//! domain's tools) reads them from it, not from the authority's records.
//!
//! They travel as one attribute of the standard Subject Directory Attributes extension
//! (RFC 5280 4.2.1.8, `2.5.29.9`, non-critical), whose attributes are "identification
//! attributes of the subject". The attribute's type is
//! `2.25.96270484195323521592085208309151316107`, an OID under X.667's UUID arc, which needs
//! no registration. Only the extension's OID is parsed by generic X.509 libraries (the value
//! is an opaque OCTET STRING to them): a 128-bit arc as the extension's own OID breaks
//! pyca/cryptography, RustCrypto's x509-cert and Go's older parsers, which accept arcs up to
//! 2^32 or 2^63 (RFC 5280 asks for 2^28). The extension's value:
//!
//! ```text
//! SubjectDirectoryAttributes ::= SEQUENCE SIZE (1..MAX) OF Attribute
//! Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET OF AttributeValue }
//!   -- ours: type 2.25.96270484195323521592085208309151316107, one value:
//! AgentMaterials ::= SEQUENCE {
//!     organization      UTF8String (SIZE (0..256)),
//!     developer         UTF8String (SIZE (0..256)),
//!     functionType      UTF8String (SIZE (0..256)),
//!     qualificationRef  UTF8String (SIZE (0..256)),
//!     skills            SEQUENCE SIZE (0..64) OF UTF8String (SIZE (0..256)),
//!     permissionScopes  SEQUENCE SIZE (0..64) OF UTF8String (SIZE (0..256)) }
//! ```
//!
//! The decoder refuses more than [`MAX_ENCODED`] bytes before it parses anything, any field or
//! list past the sizes above, and more than [`MAX_ATTRIBUTES`] attributes; attributes of other
//! types are skipped.

use agw_proto::pb::IdentityMaterials;
use x509_parser::{oid_registry::Oid, prelude::FromDer, prelude::X509Certificate};
use yasna::{ASN1Error, ASN1ErrorKind, BERReader, DERWriter};

/// The extension's OID: Subject Directory Attributes (RFC 5280).
pub const EXTENSION_OID: &[u64] = &[2, 5, 29, 9];

/// The attribute type of the agent's materials, dotted.
pub const MATERIALS_OID: &str = "2.25.96270484195323521592085208309151316107";

/// The same as DER (tag, length, value), as the extension's value carries it.
pub const MATERIALS_OID_DER: &[u8] = &[
    0x06, 0x14, 0x69, 0x81, 0x90, 0xed, 0x82, 0xd5, 0x9d, 0xf2, 0xc2, 0x9e, 0xf1, 0xaf, 0xb0, 0xe5,
    0xe9, 0xa7, 0xe6, 0x80, 0xf1, 0x0b,
];

/// The most attributes read from the extension.
pub const MAX_ATTRIBUTES: usize = 16;

/// The longest field, in bytes.
pub const MAX_FIELD: usize = 256;
/// The most skills, and the most permission scopes.
pub const MAX_ITEMS: usize = 64;
/// The longest extension value the decoder reads: every field and item at its longest, with
/// room for the DER headers.
pub const MAX_ENCODED: usize = (4 + 2 * MAX_ITEMS) * (MAX_FIELD + 4) + 64;

/// Why an extension's value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaterialsError {
    /// Longer than [`MAX_ENCODED`]; nothing was parsed.
    #[error("subject directory attributes of {0} bytes (at most {MAX_ENCODED})")]
    TooLong(usize),
    /// A field or list past its size, more than one value or [`MAX_ATTRIBUTES`] attributes.
    #[error(
        "materials field past {MAX_FIELD} bytes, list past {MAX_ITEMS} items, or past {MAX_ATTRIBUTES} attributes"
    )]
    TooBig,
    /// Not the DER the module describes.
    #[error("materials extension is not valid DER: {0}")]
    Malformed(String),
    /// The certificate itself does not parse.
    #[error("certificate does not parse")]
    Certificate,
}

/// The extension's value (Subject Directory Attributes) holding `materials`; `None` when a
/// field or list is past its size (the authority checks them before it issues).
pub fn encode(materials: &IdentityMaterials) -> Option<Vec<u8>> {
    if !within_limits(materials) {
        return None;
    }
    let (fields, lists) = parts(materials);
    Some(yasna::construct_der(|writer| {
        writer.write_sequence(|attributes| {
            attributes.next().write_sequence(|attribute| {
                attribute.next().write_der(MATERIALS_OID_DER);
                attribute.next().write_set(|values| {
                    values.next().write_sequence(|seq| {
                        for field in fields {
                            seq.next().write_utf8_string(field);
                        }
                        for list in lists {
                            write_list(seq.next(), list);
                        }
                    })
                })
            })
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

/// The materials in a Subject Directory Attributes extension's value `der`; `None` when none
/// of its attributes is of the materials' type.
pub fn decode(der: &[u8]) -> Result<Option<IdentityMaterials>, MaterialsError> {
    if der.len() > MAX_ENCODED {
        return Err(MaterialsError::TooLong(der.len()));
    }
    let mut oversized = false;
    let parsed = yasna::parse_der(der, |reader| {
        let mut found = None;
        let mut attributes = 0;
        // Counted once read: yasna calls these callbacks once more at the end of each list,
        // taking an error before anything is read for that end.
        reader.read_sequence_of(|attribute| {
            attribute.read_sequence(|attribute| {
                // Read whole: an OID under 2.25 has an arc past yasna's u64.
                let kind = attribute.next().read_der()?;
                if kind.first() != Some(&0x06) {
                    return Err(ASN1Error::new(ASN1ErrorKind::Invalid));
                }
                if kind != MATERIALS_OID_DER {
                    // Another issuer's attribute: its values are not ours to read.
                    attribute.next().read_der()?;
                    return Ok(());
                }
                let mut values = 0;
                attribute.next().read_set_of(|value| {
                    let materials = read_materials(value, &mut oversized)?;
                    values += 1;
                    if values > 1 || found.is_some() {
                        oversized = true;
                        return Err(ASN1Error::new(ASN1ErrorKind::Extra));
                    }
                    found = Some(materials);
                    Ok(())
                })
            })?;
            attributes += 1;
            if attributes > MAX_ATTRIBUTES {
                oversized = true;
                return Err(ASN1Error::new(ASN1ErrorKind::Extra));
            }
            Ok(())
        })?;
        if attributes == 0 {
            // SIZE (1..MAX).
            return Err(ASN1Error::new(ASN1ErrorKind::Invalid));
        }
        Ok(found)
    });
    parsed.map_err(|e| {
        if oversized {
            MaterialsError::TooBig
        } else {
            MaterialsError::Malformed(e.to_string())
        }
    })
}

fn read_materials(
    reader: BERReader<'_, '_>,
    oversized: &mut bool,
) -> Result<IdentityMaterials, ASN1Error> {
    reader.read_sequence(|seq| {
        let mut field = || -> Result<String, ASN1Error> {
            let text = seq.next().read_utf8string()?;
            if text.len() > MAX_FIELD {
                *oversized = true;
                return Err(ASN1Error::new(ASN1ErrorKind::Extra));
            }
            Ok(text)
        };
        let organization = field()?;
        let developer = field()?;
        let function_type = field()?;
        let qualification_ref = field()?;
        let skills = read_list(seq.next(), oversized)?;
        let permission_scope = read_list(seq.next(), oversized)?;
        Ok(IdentityMaterials {
            organization,
            developer,
            function_type,
            qualification_ref,
            skills,
            permission_scope,
        })
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
    let oid = Oid::from(EXTENSION_OID).map_err(|_| MaterialsError::Certificate)?;
    match cert.extensions().iter().find(|e| e.oid == oid) {
        Some(extension) => decode(extension.value),
        None => Ok(None),
    }
}

/// The decoder's fuzz check, shared by the cargo-fuzz target (`fuzz/fuzz_targets/materials.rs`)
/// and the test that replays its seeds on stable: hostile bytes get a typed refusal, never a
/// panic; what decodes is within the limits and encodes back to materials that decode the same.
pub fn check_decode(data: &[u8]) {
    let Ok(Some(materials)) = decode(data) else {
        return;
    };
    assert!(within_limits(&materials), "decoded past the limits");
    let again = encode(&materials)
        .unwrap_or_else(|| panic!("decoded materials past the limits: {materials:?}"));
    assert_eq!(decode(&again), Ok(Some(materials)), "round trip");
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
        let mut expected = vec![
            0x30, 0x2d, // SubjectDirectoryAttributes, 45 bytes
            0x30, 0x2b, // its one Attribute, 43 bytes
        ];
        expected.extend_from_slice(MATERIALS_OID_DER); // type, 22 bytes
        expected.extend_from_slice(&[
            0x31, 0x13, // values: SET, 19 bytes
            0x30, 0x11, // AgentMaterials, 17 bytes
            0x0c, 0x01, b'O', // organization
            0x0c, 0x00, // developer
            0x0c, 0x01, b'f', // functionType
            0x0c, 0x00, // qualificationRef
            0x30, 0x00, // skills
            0x30, 0x03, 0x0c, 0x01, b'p', // permissionScopes
        ]);
        assert_eq!(der, expected);
        assert_eq!(decode(&der).unwrap(), Some(one));
        assert_eq!(decode(&encode(&sample()).unwrap()).unwrap(), Some(sample()));
        // Beside another issuer's attribute (here countryOfCitizenship, 1.3.6.1.5.5.7.9.4),
        // which is skipped.
        let other = [
            0x30, 0x10, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x09, 0x04, 0x31, 0x04,
            0x13, 0x02, b'F', b'R',
        ];
        let mut both = vec![0x30, 0x2d + other.len() as u8];
        both.extend_from_slice(&other[..]);
        both.extend_from_slice(&der[2..]);
        assert_eq!(decode(&both).unwrap().unwrap().permission_scope, ["p"]);
        // That attribute alone: no materials.
        let mut alone = vec![0x30, other.len() as u8];
        alone.extend_from_slice(&other);
        assert_eq!(decode(&alone), Ok(None));
    }

    /// `materials` (an AgentMaterials encoding) as the one attribute of the extension.
    fn wrapped(materials: &[u8]) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|attributes| {
                attributes.next().write_sequence(|attribute| {
                    attribute.next().write_der(MATERIALS_OID_DER);
                    attribute
                        .next()
                        .write_set(|values| values.next().write_der(materials));
                })
            })
        })
    }

    #[test]
    fn bad_bytes_are_refused_with_their_reason() {
        let good = encode(&sample()).unwrap();
        // Truncated anywhere, one field's tag changed, trailing bytes.
        for end in 0..good.len() {
            assert!(
                matches!(decode(&good[..end]), Err(MaterialsError::Malformed(_))),
                "{end}"
            );
        }
        let mut wrong_tag = good.clone();
        let first_string = good.iter().position(|b| *b == 0x0c).unwrap();
        wrong_tag[first_string] = 0x13; // PrintableString where a UTF8String belongs
        assert!(matches!(
            decode(&wrong_tag),
            Err(MaterialsError::Malformed(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(
            matches!(decode(&trailing), Err(MaterialsError::Malformed(_))),
            "{:?}",
            decode(&trailing)
        );
        // Invalid UTF-8 inside a UTF8String.
        let bad_utf8 = wrapped(&[
            0x30, 0x0f, 0x0c, 0x01, 0xff, 0x0c, 0x00, 0x0c, 0x00, 0x0c, 0x00, 0x30, 0x00, 0x30,
            0x00,
        ]);
        assert!(matches!(
            decode(&bad_utf8),
            Err(MaterialsError::Malformed(_))
        ));
        // A length that claims more than there is; no attribute at all (SIZE (1..MAX)); an
        // attribute type that is not an OID.
        for bytes in [
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..],
            &[0x30, 0x00],
            &[0x30, 0x07, 0x30, 0x05, 0x02, 0x01, 0x01, 0x31, 0x00],
        ] {
            assert!(
                matches!(decode(bytes), Err(MaterialsError::Malformed(_))),
                "{bytes:?}"
            );
        }
        // Two values, or the attribute twice: refused, not one picked.
        let value = &good[2 + 2 + MATERIALS_OID_DER.len() + 2..];
        let two_values = yasna::construct_der(|w| {
            w.write_sequence(|attributes| {
                attributes.next().write_sequence(|attribute| {
                    attribute.next().write_der(MATERIALS_OID_DER);
                    attribute.next().write_set(|values| {
                        values.next().write_der(value);
                        values.next().write_der(value);
                    });
                })
            })
        });
        assert_eq!(decode(&two_values), Err(MaterialsError::TooBig));
        let one = &good[2..];
        let twice = yasna::construct_der(|w| {
            w.write_sequence(|attributes| {
                attributes.next().write_der(one);
                attributes.next().write_der(one);
            })
        });
        assert_eq!(decode(&twice), Err(MaterialsError::TooBig));
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
        let long_field = wrapped(&yasna::construct_der(|w| {
            w.write_sequence(|seq| {
                field(&"d".repeat(MAX_FIELD + 1), seq.next());
                for _ in 0..3 {
                    field("", seq.next());
                }
                write_list(seq.next(), &[]);
                write_list(seq.next(), &[]);
            })
        }));
        assert_eq!(decode(&long_field), Err(MaterialsError::TooBig));
        let many_items: Vec<String> = (0..=MAX_ITEMS).map(|i| i.to_string()).collect();
        let too_many = wrapped(&yasna::construct_der(|w| {
            w.write_sequence(|seq| {
                for _ in 0..4 {
                    field("", seq.next());
                }
                write_list(seq.next(), &many_items);
                write_list(seq.next(), &[]);
            })
        }));
        assert_eq!(decode(&too_many), Err(MaterialsError::TooBig));
        // More attributes than are read.
        let other = [
            0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x06, 0x31, 0x03, 0x13, 0x01, b'X',
        ];
        let crowd = yasna::construct_der(|w| {
            w.write_sequence(|attributes| {
                for _ in 0..=MAX_ATTRIBUTES {
                    attributes.next().write_der(&other);
                }
            })
        });
        assert_eq!(decode(&crowd), Err(MaterialsError::TooBig));
        // At the limits exactly, accepted.
        let mut full = sample();
        full.skills = (0..MAX_ITEMS).map(|_| "s".repeat(MAX_FIELD)).collect();
        full.permission_scope = full.skills.clone();
        full.organization = "o".repeat(MAX_FIELD);
        let der = encode(&full).unwrap();
        assert!(der.len() <= MAX_ENCODED);
        assert_eq!(decode(&der).unwrap(), Some(full));
    }
}
