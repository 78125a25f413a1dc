//! The bytes that signatures cover, byte for byte: context, zero byte, length-prefixed fields.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agw_proto::{
    identity::{AgentId, GatewayId},
    signing,
};
use common::bytes;

#[test]
fn access_input_is_context_then_length_prefixed_fields() {
    let gateway = GatewayId::parse("spiffe://a/agw/g").unwrap();
    let agent = AgentId::parse("spiffe://a/agent/x").unwrap();
    let input = signing::access_input(&gateway, &[0xde, 0xad], &agent);
    let expected = bytes(
        "'agw-access-v1' 00
         00000010 'spiffe://a/agw/g'
         00000002 dead
         00000012 'spiffe://a/agent/x'",
    );
    assert_eq!(input, expected);
}

#[test]
fn proofs_of_possession_are_bound_to_their_purpose() {
    assert_eq!(
        signing::renewal_input(&[0x30, 0x00]),
        bytes("'agw-renewal-v1' 00 00000002 3000")
    );
    assert_eq!(
        signing::revocation_input(&[0x01, 0x02], 1_700_000_000),
        bytes("'agw-revocation-v1' 00 00000002 0102 00000008 000000006553f100")
    );
    // The same field under two purposes never gives the same bytes.
    assert_ne!(
        signing::renewal_input(&[1, 2]),
        signing::revocation_input(&[1, 2], 0)
    );
}
