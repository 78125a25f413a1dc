//! Agent access to a gateway (draft 3.3.1), the agent's side: answering the gateway's
//! challenge with a signature by the certificate's key, and heartbeats.

use agw_proto::{
    identity::{AgentId, GatewayId},
    pb, signing,
};

use crate::certificates::{AgentKey, CertificateError, HeldCertificate};

/// The answer to `challenge`: the agent's identity, certificate chain and its signature over
/// the gateway ID, the nonce and the agent ID (`agw_proto::signing::access_input`).
pub fn access_request(
    challenge: &pb::AccessChallenge,
    agent: &AgentId,
    held: &HeldCertificate,
    key: &AgentKey,
) -> Result<pb::AccessRequest, CertificateError> {
    let gateway = GatewayId::parse(&challenge.gateway).map_err(|e| {
        CertificateError::BadReply(format!("challenge from {}: {e}", challenge.gateway))
    })?;
    let signature = key.sign(&signing::access_input(&gateway, &challenge.nonce, agent))?;
    Ok(pb::AccessRequest {
        agent: agent.to_string(),
        certificate_chain: held.chain.clone(),
        signature: signature.into(),
        ..Default::default()
    })
}
