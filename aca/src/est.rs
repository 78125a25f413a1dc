//! EST (RFC 7030) over HTTPS: enrollment and renewal for any agent that has openssl and curl,
//! without our SDK. Three operations under `/.well-known/est/`:
//!
//! - `GET cacerts`: the authority's chain and trust anchor, a certs-only PKCS#7, base64.
//! - `POST simpleenroll`: a base64 PKCS#10 request (`application/pkcs10`) naming one agent
//!   identity (URI SAN `spiffe://<domain>/agent/<name>`), authenticated by HTTP Basic with
//!   the organisation as user and its enrollment token as password (RFC 7030 3.2.3), or by a
//!   live certificate of an agent of the organisation as the TLS client certificate. The
//!   application is the native one: the same policy, tokens, approval queue and rates. The
//!   answer is the new certificate as a certs-only PKCS#7; `202` with `Retry-After` while the
//!   operator has not decided (RFC 7030 4.2.3).
//! - `POST simplereenroll`: the same request, over a TLS session that presented the current
//!   certificate (the handshake proves its key); the identity and materials are kept.
//!
//! Refusals carry the native error code's name and detail as text; statuses follow RFC 7030:
//! `401` (with `WWW-Authenticate`) for a missing or wrong credential, `503` with
//! `Retry-After` when rate-limited, `400` for a bad request, `403` for one the policy or the
//! authority's state refuses.

use std::{sync::Arc, time::SystemTime};

use agw_proto::pb::{self, ErrorCode};
use agw_rpc::{HttpAnswer, HttpRequest, Method};
use base64::{Engine, engine::general_purpose::STANDARD};
use cms::{
    cert::x509::{
        Certificate,
        der::{Decode, Encode},
    },
    content_info::ContentInfo,
};

use crate::{AcaError, CertificateAuthority, Issued};

/// Where the operations live.
pub const PREFIX: &str = "/.well-known/est/";

/// Largest request body taken: the base64 of the largest CSR the authority reads, with line
/// breaks.
pub const MAX_BODY: usize = crate::csr::MAX_CSR_LEN * 3 / 2;

/// Seconds an applicant waiting for the operator is told to wait before asking again.
const APPROVAL_RETRY_S: u32 = 60;

/// The content type of EST's certificate answers.
const PKCS7: &str = "application/pkcs7-mime; smime-type=certs-only";

/// Answers an EST request at `now`.
pub fn answer(
    authority: &CertificateAuthority,
    request: &HttpRequest,
    now: SystemTime,
) -> HttpAnswer {
    let Some(operation) = request.path.strip_prefix(PREFIX) else {
        return HttpAnswer::text(404, "not found: EST lives under /.well-known/est/\n");
    };
    let result = match (operation, &request.method) {
        ("cacerts", &Method::GET) => cacerts(authority),
        ("simpleenroll", &Method::POST) => simple_enroll(authority, request, now),
        ("simplereenroll", &Method::POST) => simple_reenroll(authority, request, now),
        ("cacerts", _) => {
            return HttpAnswer::text(405, "cacerts: GET\n").with_header("allow", "GET");
        }
        ("simpleenroll" | "simplereenroll", _) => {
            return HttpAnswer::text(405, format!("{operation}: POST\n"))
                .with_header("allow", "POST");
        }
        _ => {
            return HttpAnswer::text(
                404,
                format!("no EST operation {operation:?}: cacerts, simpleenroll, simplereenroll\n"),
            );
        }
    };
    match result {
        Ok(answer) => answer,
        Err(refusal) => refusal.into_answer(authority),
    }
}

/// Why an EST request is refused.
#[derive(Debug)]
enum Refusal {
    /// The request itself is wrong (HTTP-level): status and text.
    Http(u16, String),
    /// The authority refused it.
    Authority(AcaError),
}

impl From<AcaError> for Refusal {
    fn from(e: AcaError) -> Refusal {
        Refusal::Authority(e)
    }
}

impl Refusal {
    fn into_answer(self, authority: &CertificateAuthority) -> HttpAnswer {
        let e = match self {
            Refusal::Http(status, text) => return HttpAnswer::text(status, format!("{text}\n")),
            Refusal::Authority(e) => e,
        };
        let text = format!("{}: {}\n", e.code.as_str_name(), e.detail);
        match e.code {
            ErrorCode::ApprovalPending => {
                HttpAnswer::text(202, text).with_header("retry-after", APPROVAL_RETRY_S.to_string())
            }
            ErrorCode::EnrollmentUnauthenticated => HttpAnswer::text(401, text).with_header(
                "www-authenticate",
                format!("Basic realm=\"{}\"", authority.domain()),
            ),
            // The rates are per minute: a minute always has room again.
            ErrorCode::RateLimited => HttpAnswer::text(503, text).with_header("retry-after", "60"),
            ErrorCode::Malformed
            | ErrorCode::MissingField
            | ErrorCode::InvalidField
            | ErrorCode::BadSignature
            | ErrorCode::IdentityMismatch
            | ErrorCode::BadCsr
            | ErrorCode::WeakKey => HttpAnswer::text(400, text),
            ErrorCode::Internal => HttpAnswer::text(500, text),
            _ => HttpAnswer::text(403, text),
        }
    }
}

fn cacerts(authority: &CertificateAuthority) -> Result<HttpAnswer, Refusal> {
    let mut chain: Vec<&[u8]> = authority.ca_chain().iter().map(Vec::as_slice).collect();
    if !chain.contains(&authority.trust_anchor()) {
        chain.push(authority.trust_anchor());
    }
    certs_only(chain)
}

fn simple_enroll(
    authority: &CertificateAuthority,
    request: &HttpRequest,
    now: SystemTime,
) -> Result<HttpAnswer, Refusal> {
    if let Some(source) = request.caller.address {
        authority.take_from_source(source, now)?;
    }
    let csr = csr_body(request.header("content-type"), &request.body)?;
    let credentials = basic_credentials(request.header("authorization"))?;
    // Without a token, a certificate of an agent of the organisation, presented in the
    // handshake, stands for it: the application is in that certificate's organisation.
    match (credentials, request.client_chain.first()) {
        (Some((organization, token)), _) => {
            let materials = organization_only(organization);
            issued(authority.apply_with_token(&csr, &materials, &token, now)?)
        }
        (None, Some(voucher)) => {
            let organization = authority.organization_of(voucher, now)?;
            let materials = organization_only(organization);
            issued(authority.apply_vouched(&csr, &materials, voucher, now)?)
        }
        (None, None) => Err(AcaError::new(
            ErrorCode::EnrollmentUnauthenticated,
            "authentication is required: HTTP Basic with the organisation as user and its \
             enrollment token as password, or a certificate of an agent of the organisation",
        )
        .into()),
    }
}

fn organization_only(organization: String) -> pb::IdentityMaterials {
    pb::IdentityMaterials {
        organization,
        ..Default::default()
    }
}

fn simple_reenroll(
    authority: &CertificateAuthority,
    request: &HttpRequest,
    now: SystemTime,
) -> Result<HttpAnswer, Refusal> {
    let Some(current) = request.client_chain.first() else {
        return Err(AcaError::new(
            ErrorCode::NotAccessed,
            "simplereenroll needs the current certificate as the TLS client certificate",
        )
        .into());
    };
    let csr = csr_body(request.header("content-type"), &request.body)?;
    issued(authority.renew_presented(current, &csr, now)?)
}

/// The PKCS#10 request (DER) in a body of `content_type` `application/pkcs10`: base64, line
/// breaks allowed.
pub fn csr_body(content_type: Option<&str>, body: &[u8]) -> Result<Vec<u8>, EstError> {
    let content_type = content_type.unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/pkcs10") {
        return Err(EstError::ContentType(content_type.to_owned()));
    }
    if body.len() > MAX_BODY {
        return Err(EstError::TooLarge(body.len()));
    }
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(&text)
        .map_err(|e| EstError::NotBase64(e.to_string()))
}

/// HTTP Basic credentials: (user, password).
pub type Credentials = (String, String);

/// An `Authorization: Basic` header's credentials; `None` without the header.
pub fn basic_credentials(header: Option<&str>) -> Result<Option<Credentials>, EstError> {
    let Some(value) = header else {
        return Ok(None);
    };
    let (scheme, encoded) = value
        .trim()
        .split_once(' ')
        .ok_or(EstError::Authorization)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(EstError::Authorization);
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| EstError::Authorization)?;
    let text = String::from_utf8(decoded).map_err(|_| EstError::Authorization)?;
    let (user, password) = text.split_once(':').ok_or(EstError::Authorization)?;
    Ok(Some((user.to_owned(), password.to_owned())))
}

/// An EST request that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EstError {
    /// The body is not `application/pkcs10`.
    #[error("the body must be application/pkcs10 (base64 DER), not {0:?}")]
    ContentType(String),
    /// Longer than [`MAX_BODY`].
    #[error("a body of {0} bytes exceeds {MAX_BODY}")]
    TooLarge(usize),
    /// Not base64.
    #[error("the body is not base64: {0}")]
    NotBase64(String),
    /// An `Authorization` header that is not Basic `organisation:token`.
    #[error("Authorization must be Basic base64(organisation:token)")]
    Authorization,
}

impl From<EstError> for Refusal {
    fn from(e: EstError) -> Refusal {
        match e {
            EstError::ContentType(_) => Refusal::Http(415, e.to_string()),
            EstError::TooLarge(_) => Refusal::Http(413, e.to_string()),
            EstError::NotBase64(_) => Refusal::Http(400, e.to_string()),
            EstError::Authorization => Refusal::Authority(AcaError::new(
                ErrorCode::EnrollmentUnauthenticated,
                e.to_string(),
            )),
        }
    }
}

/// The fuzz check of EST's request decoding, shared by the cargo-fuzz target and the test
/// that replays its seeds: `data` is a content type and an `Authorization` value (each after
/// a length byte) and a body. Decoding must refuse with a typed error, never panic; a body
/// that decodes goes on to the CSR checks, which must do the same.
pub fn check_request(data: &[u8]) -> Option<(Vec<u8>, Option<Credentials>)> {
    let (content_type, rest) = length_prefixed(data)?;
    let (authorization, body) = length_prefixed(rest)?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let authorization = (!authorization.is_empty()).then(|| text(authorization));
    let credentials = basic_credentials(authorization.as_deref()).ok()?;
    let csr = csr_body(Some(&text(content_type)), body).ok()?;
    let _ = crate::csr::verify_csr(&csr);
    Some((csr, credentials))
}

fn length_prefixed(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = data.split_first()?;
    let len = usize::from(len).min(rest.len());
    Some(rest.split_at(len))
}

fn issued(issued: Issued) -> Result<HttpAnswer, Refusal> {
    // RFC 7030 4.2.3: the issued certificate; the chain is what cacerts gives.
    certs_only(issued.chain.iter().take(1).map(Vec::as_slice).collect())
}

/// `certificates` (DER) as a certs-only PKCS#7, base64, as EST answers them.
fn certs_only(certificates: Vec<&[u8]>) -> Result<HttpAnswer, Refusal> {
    let internal = |e: cms::cert::x509::der::Error| {
        Refusal::Authority(AcaError::new(ErrorCode::Internal, format!("PKCS#7: {e}")))
    };
    let path = certificates
        .into_iter()
        .map(Certificate::from_der)
        .collect::<Result<Vec<_>, _>>()
        .map_err(internal)?;
    let der = ContentInfo::try_from(path)
        .and_then(|c| c.to_der())
        .map_err(internal)?;
    Ok(HttpAnswer::new(200, PKCS7, base64_lines(&der))
        .with_header("content-transfer-encoding", "base64"))
}

/// Base64 in lines of 64 characters, as PEM and EST clients expect.
fn base64_lines(der: &[u8]) -> String {
    let flat = STANDARD.encode(der);
    let mut text = String::with_capacity(flat.len() + flat.len() / 64 + 1);
    for line in flat.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap_or_default());
        text.push('\n');
    }
    text
}

/// An EST route over `authority`, for an HTTPS endpoint.
pub fn route(authority: Arc<CertificateAuthority>) -> Arc<agw_rpc::Route> {
    Arc::new(move |request: &HttpRequest| answer(&authority, request, SystemTime::now()))
}
