//! The ACA's side of the wire protocol: each request message in, its reply out.

use std::{net::IpAddr, time::SystemTime};

use agw_proto::{Admission, Kind, Message, pb};

use crate::{AcaError, CertificateAuthority, CertificateStatus};

/// What the authority's protocol port takes: its requests, each within 64 KiB (a CSR is at
/// most 16 KiB, a certificate being renewed a few).
pub const REQUESTS: Admission = Admission::only(
    &[
        Kind::CertificateApplication,
        Kind::RenewalRequest,
        Kind::RevocationRequest,
        Kind::StatusQuery,
        Kind::CrlRequest,
    ],
    64 * 1024,
);

impl CertificateAuthority {
    /// Answers one ACA request (`CertificateApplication`, `RenewalRequest`,
    /// `RevocationRequest`, `StatusQuery`, `CrlRequest`). Any other kind returns `None`: the
    /// caller answers it as an unexpected message.
    pub fn handle(&self, request: &Message, now: SystemTime) -> Option<Message> {
        self.handle_from(request, None, now)
    }

    /// [`CertificateAuthority::handle`] for a request from `source`: its applications count
    /// against the source's rate (`applications_per_minute_per_source`) before anything else
    /// is checked.
    pub fn handle_from(
        &self,
        request: &Message,
        source: Option<IpAddr>,
        now: SystemTime,
    ) -> Option<Message> {
        let wire = |e: AcaError| Some(e.to_wire());
        if let (Message::CertificateApplication(req), Some(source)) = (request, source)
            && let Err(e) = self.take_from_source(source, now)
        {
            return Some(certificate_reply(req.request_id, Err(e), wire));
        }
        Some(match request {
            Message::CertificateApplication(req) => {
                let materials = req.materials.clone().unwrap_or_default();
                let issued =
                    self.apply_with_token(&req.csr, &materials, &req.enrollment_token, now);
                certificate_reply(req.request_id, issued, wire)
            }
            Message::RenewalRequest(req) => {
                certificate_reply(req.request_id, self.renew(req, now), wire)
            }
            Message::RevocationRequest(req) => {
                let mut reply = pb::RevocationReply {
                    request_id: req.request_id,
                    ..Default::default()
                };
                match self.revoke_by_holder(req, now) {
                    Ok(also) => reply.also_revoked = also.into_iter().map(Into::into).collect(),
                    Err(e) => reply.error = wire(e),
                }
                reply.into()
            }
            Message::StatusQuery(req) => {
                let mut reply = pb::StatusReply {
                    request_id: req.request_id,
                    ..Default::default()
                };
                match self.status(&req.serial, now) {
                    Ok(status) => fill_status(&mut reply, status),
                    Err(e) => reply.error = wire(e),
                }
                reply.into()
            }
            Message::CrlRequest(req) => match self.crl(now) {
                Ok(crl) => pb::CrlReply {
                    request_id: req.request_id,
                    error: None,
                    crl: crl.der.into(),
                    crl_number: crl.number,
                },
                Err(e) => pb::CrlReply {
                    request_id: req.request_id,
                    error: wire(e),
                    ..Default::default()
                },
            }
            .into(),
            _ => return None,
        })
    }
}

fn certificate_reply(
    request_id: u64,
    result: Result<crate::Issued, AcaError>,
    wire: impl Fn(AcaError) -> Option<pb::Error>,
) -> Message {
    match result {
        Ok(issued) => pb::CertificateReply {
            request_id,
            error: None,
            certificate_chain: issued.chain.into_iter().map(Into::into).collect(),
            serial: issued.serial.into(),
        },
        Err(e) => pb::CertificateReply {
            request_id,
            error: wire(e),
            ..Default::default()
        },
    }
    .into()
}

fn fill_status(reply: &mut pb::StatusReply, status: CertificateStatus) {
    use pb::CertificateState as S;
    let unsigned = |t: i64| u64::try_from(t).unwrap_or(0);
    match status {
        CertificateStatus::Valid { not_after } => {
            reply.state = S::Valid as i32;
            reply.not_after_unix_s = unsigned(not_after);
        }
        CertificateStatus::Expired { not_after } => {
            reply.state = S::Expired as i32;
            reply.not_after_unix_s = unsigned(not_after);
        }
        CertificateStatus::Revoked(r) => {
            reply.state = S::Revoked as i32;
            reply.revocation_reason = r.reason;
            reply.revoked_at_unix_s = unsigned(r.at);
        }
        CertificateStatus::Unknown => reply.state = S::Unknown as i32,
    }
}
