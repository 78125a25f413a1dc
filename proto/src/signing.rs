//! The exact bytes that access signatures and proofs of key possession cover.
//!
//! Each input is a context string naming its purpose and version, a zero byte, then each field
//! as a 4-byte big-endian length and its bytes. The context keeps a signature made for one
//! purpose from being replayed for another; the lengths keep field boundaries unambiguous.

use bytes::BufMut;

use crate::identity::{AgentId, GatewayId};

/// Context of the signature an agent makes over a gateway's access challenge.
pub const ACCESS_CONTEXT: &str = "agw-access-v1";
/// Context of a proof of possession for a certificate renewal (field: the new CSR).
pub const RENEWAL_CONTEXT: &str = "agw-renewal-v1";
/// Context of a proof of possession for a revocation (field: the certificate's serial).
pub const REVOCATION_CONTEXT: &str = "agw-revocation-v1";

fn signing_input(context: &str, fields: &[&[u8]]) -> Vec<u8> {
    let len = context.len() + 1 + fields.iter().map(|f| 4 + f.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.put_slice(context.as_bytes());
    out.put_u8(0);
    for field in fields {
        // Fields come from bounded frames (at most 16 MiB), so the length fits in 32 bits.
        out.put_u32(u32::try_from(field.len()).unwrap_or(u32::MAX));
        out.put_slice(field);
    }
    out
}

/// What an agent signs to access `gateway` as `agent` with the challenge's `nonce`.
pub fn access_input(gateway: &GatewayId, nonce: &[u8], agent: &AgentId) -> Vec<u8> {
    signing_input(
        ACCESS_CONTEXT,
        &[
            gateway.as_str().as_bytes(),
            nonce,
            agent.as_str().as_bytes(),
        ],
    )
}

/// What the holder of a certificate signs to renew it with the new `csr` (DER).
pub fn renewal_input(csr: &[u8]) -> Vec<u8> {
    signing_input(RENEWAL_CONTEXT, &[csr])
}

/// What the holder of a certificate signs to revoke it: its `serial` and the signing time.
pub fn revocation_input(serial: &[u8], signed_at_unix_s: u64) -> Vec<u8> {
    signing_input(
        REVOCATION_CONTEXT,
        &[serial, &signed_at_unix_s.to_be_bytes()],
    )
}
