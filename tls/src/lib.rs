//! Identities on the wire: TLS with the authority's certificates (rustls, ring provider),
//! mutual authentication where identities are SPIFFE URIs, not DNS names; and public keys and
//! signatures ([`keys`]). The relay, the control plane and the SDK's users need this without
//! the certificate authority itself (crate `agw-aca`, which re-exports it as `agw_aca::tls`).
//!
//! Servers require a client certificate chaining to the trust anchor and not on the CRLs given;
//! [`peer_identity`] then reads the client's identity. Everywhere (servers, clients, and
//! [`CertificateChecker`]) a leaf must also have been issued by the authority of the domain it
//! names ([`issued_in_its_domain`]): under a federation's shared root, one domain's authority
//! cannot vouch for another domain's names. Clients check the server's chain and
//! CRLs with webpki, then require its URI SAN to be the identity they meant to reach: the DNS
//! name check webpki would make is replaced by that identity check.
//!
//! A long-running holder (a gateway) renews its certificate without restarting anything: a
//! [`RenewableCertificate`] in its [`TlsIdentity`] is what every configuration made from it
//! presents, and [`RenewableCertificate::renew`] swaps in the new chain for the next handshake.

use std::sync::Arc;

use arc_swap::ArcSwap;

pub mod keys;
pub mod materials;

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, ServerConfig,
    SignatureScheme,
    client::{
        ResolvesClientCert, WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, ring},
    pki_types::{
        CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
        ServerName, UnixTime,
    },
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use x509_parser::{extensions::GeneralName, prelude::FromDer, prelude::X509Certificate};

/// The ALPN name of the native agent protocol: what an agent offers on a gateway's agent port,
/// and what the port selects.
pub const AGENT_ALPN: &[u8] = b"agw/1";
/// The ALPN name of MQTT (the IANA registry's), which the agent port also speaks.
pub const MQTT_ALPN: &[u8] = b"mqtt";
/// The ALPN name of HTTP/1.1: an A2A client on the agent port.
pub const HTTP_ALPN: &[u8] = b"http/1.1";
/// The ALPN name of HTTP/2: an A2A client of its gRPC binding on the agent port.
pub const H2_ALPN: &[u8] = b"h2";

/// What TLS needs to speak for one identity and trust one authority.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Our certificate first, then its chain, DER.
    pub chain: Vec<Vec<u8>>,
    /// Our private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// The authority's trust anchor, DER.
    pub trust_anchor: Vec<u8>,
    /// The CRLs (DER) handshakes check, as they are at each handshake: replacing them
    /// ([`Crls::set`]) reaches every configuration made from this identity.
    pub crls: Crls,
    /// Accept a peer certificate whose issuer has no CRL among `crls` (a peer domain whose CRL
    /// was not configured). `false`: such a certificate is refused (unknown revocation status).
    pub allow_unknown_revocation: bool,
    /// When set, what every configuration made from this identity presents, instead of
    /// `chain` (same key): renewing it reaches every server and client at their next
    /// handshake. `None`: `chain`, fixed.
    pub renewable: Option<RenewableCertificate>,
}

/// CRLs (DER) that can be replaced while configurations made with them run: a clone shares
/// them. Each verifier built from them is rebuilt at its first handshake after a change.
#[derive(Clone, Default)]
pub struct Crls(Arc<ArcSwap<Vec<Vec<u8>>>>);

impl Crls {
    /// These CRLs.
    pub fn new(crls: Vec<Vec<u8>>) -> Crls {
        Crls(Arc::new(ArcSwap::from_pointee(crls)))
    }

    /// The CRLs now.
    pub fn current(&self) -> Arc<Vec<Vec<u8>>> {
        self.0.load_full()
    }

    /// Replaces them: the next handshake of every configuration sharing them checks these.
    pub fn set(&self, crls: Vec<Vec<u8>>) {
        self.0.store(Arc::new(crls));
    }
}

impl From<Vec<Vec<u8>>> for Crls {
    fn from(crls: Vec<Vec<u8>>) -> Crls {
        Crls::new(crls)
    }
}

impl std::fmt::Debug for Crls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crls({})", self.current().len())
    }
}

/// Builds a verifier from CRLs.
type BuildVerifier<V> = Box<dyn Fn(&[Vec<u8>]) -> Result<Arc<V>, Error> + Send + Sync>;

/// A verifier and the CRLs it was built with.
type Built<V> = (Arc<Vec<Vec<u8>>>, Arc<V>);

/// A verifier kept in step with [`Crls`]: rebuilt when they were replaced since it was built.
struct Live<V: ?Sized> {
    crls: Crls,
    build: BuildVerifier<V>,
    /// The CRLs it was built with, and the verifier.
    built: ArcSwap<Built<V>>,
    /// The first one built: what does not depend on CRLs (root hints, schemes) is read here.
    first: Arc<V>,
}

impl<V: ?Sized> Live<V> {
    fn new(crls: Crls, build: BuildVerifier<V>) -> Result<Live<V>, Error> {
        let now = crls.current();
        let first = build(&now)?;
        Ok(Live {
            crls,
            build,
            built: ArcSwap::from_pointee((now, Arc::clone(&first))),
            first,
        })
    }

    /// The verifier for the CRLs of the moment.
    fn get(&self) -> Result<Arc<V>, Error> {
        let now = self.crls.current();
        let built = self.built.load();
        if Arc::ptr_eq(&built.0, &now) {
            return Ok(Arc::clone(&built.1));
        }
        let verifier = (self.build)(&now)?;
        self.built.store(Arc::new((now, Arc::clone(&verifier))));
        Ok(verifier)
    }
}

impl<V: ?Sized> std::fmt::Debug for Live<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("crls", &self.crls).finish()
    }
}

/// A certificate (same key, successive chains) that TLS configurations present as it is now.
#[derive(Clone)]
pub struct RenewableCertificate {
    key: Arc<dyn rustls::sign::SigningKey>,
    current: Arc<ArcSwap<CertifiedKey>>,
}

impl std::fmt::Debug for RenewableCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewableCertificate")
            .field("identity", &peer_identity(&self.current.load().cert))
            .field("key", &"...")
            .finish()
    }
}

impl RenewableCertificate {
    /// `chain` (leaf first, DER) for the key `key_pkcs8` (PKCS#8 DER); refused when the
    /// leaf is not the key's.
    pub fn new(chain: Vec<Vec<u8>>, key_pkcs8: &[u8]) -> Result<RenewableCertificate, Error> {
        let key = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key_pkcs8.to_vec(),
            )))?;
        let certified = certified(chain, Arc::clone(&key))?;
        Ok(RenewableCertificate {
            key,
            current: Arc::new(ArcSwap::from_pointee(certified)),
        })
    }

    /// From the next handshake on, presents `chain`, which must be for the same key.
    pub fn renew(&self, chain: Vec<Vec<u8>>) -> Result<(), Error> {
        let certified = certified(chain, Arc::clone(&self.key))?;
        self.current.store(Arc::new(certified));
        Ok(())
    }

    /// The chain presented now, DER, leaf first.
    pub fn chain(&self) -> Vec<Vec<u8>> {
        self.current
            .load()
            .cert
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect()
    }
}

fn certified(
    chain: Vec<Vec<u8>>,
    key: Arc<dyn rustls::sign::SigningKey>,
) -> Result<CertifiedKey, Error> {
    if chain.is_empty() {
        return Err(Error::General("an empty certificate chain".into()));
    }
    let certified = CertifiedKey::new(chain.into_iter().map(CertificateDer::from).collect(), key);
    match certified.keys_match() {
        Ok(()) | Err(Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(e),
    }
}

impl ResolvesServerCert for RenewableCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for RenewableCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("chain", &self.chain.len())
            .field("key_pkcs8", &"...")
            .field("crls", &self.crls)
            .finish()
    }
}

/// ring's suites, AES-128-GCM before AES-256-GCM: 128-bit security, and cheaper on the relay,
/// which encrypts and decrypts every message (servers choose by this order, not the client's).
fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        matches!(
            s.suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
    });
    Arc::new(provider)
}

impl TlsIdentity {
    fn roots(&self) -> Result<Arc<RootCertStore>, Error> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(self.trust_anchor.clone()))?;
        Ok(Arc::new(roots))
    }

    fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = self
            .chain
            .iter()
            .cloned()
            .map(CertificateDer::from)
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()));
        (chain, key)
    }

    /// A server that requires clients certified by the authority and not revoked.
    pub fn server_config(&self) -> Result<ServerConfig, Error> {
        self.server_config_with(ClientAuth::Required)
    }

    /// The server of the authority's EST endpoint: clients without a certificate are served
    /// (enrollment authenticates them by HTTP); one that presents a certificate must chain to
    /// the trust anchor (renewal uses it). Revocation is the authority's to check, with a
    /// typed refusal, as on the agent port.
    pub fn est_server_config(&self) -> Result<ServerConfig, Error> {
        let without_crls = TlsIdentity {
            crls: Crls::default(),
            allow_unknown_revocation: true,
            ..self.clone()
        };
        without_crls.server_config_with(ClientAuth::Optional)
    }

    fn server_config_with(&self, client_auth: ClientAuth) -> Result<ServerConfig, Error> {
        let (roots, allow_unknown) = (self.roots()?, self.allow_unknown_revocation);
        let build: BuildVerifier<dyn rustls::server::danger::ClientCertVerifier> = Box::new(
            move |crls: &[Vec<u8>]| {
                let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
                        .with_crls(crl_ders(crls))
                        // The issuing authority's CRL covers the leaf; an intermediate under
                        // an operator's root has no CRL of its own to check against.
                        .only_check_end_entity_revocation();
                if allow_unknown {
                    builder = builder.allow_unknown_revocation_status();
                }
                if client_auth == ClientAuth::Optional {
                    builder = builder.allow_unauthenticated();
                }
                builder.build().map_err(|e| Error::General(e.to_string()))
            },
        );
        let verifier = Arc::new(DomainBoundClientVerifier {
            webpki: Live::new(self.crls.clone(), build)?,
            anchor: self.trust_anchor.clone(),
        });
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier);
        let mut config = match &self.renewable {
            Some(renewable) => builder.with_cert_resolver(Arc::new(renewable.clone())),
            None => {
                let (chain, key) = self.chain_and_key();
                builder.with_single_cert(chain, key)?
            }
        };
        config.ignore_client_order = true;
        // No resumption: a resumed session skips the client certificate's checks, so a client
        // revoked since its first handshake would come back in on its ticket.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// The server of a gateway's agent port: a client certificate chaining to the trust
    /// anchor is required, [`AGENT_ALPN`], [`MQTT_ALPN`], [`HTTP_ALPN`] or [`H2_ALPN`] (A2A, JSON or gRPC) selected (a client that offers
    /// other protocols only is refused; one that offers none is served). Revocation is not checked here but by the agent access that follows,
    /// against the CRL of the moment, so that a revoked agent is told `CERT_REVOKED` in a
    /// typed refusal rather than by a TLS alert, and a CRL issued after this configuration
    /// counts at once.
    pub fn agent_server_config(&self) -> Result<ServerConfig, Error> {
        let without_crls = TlsIdentity {
            crls: Crls::default(),
            allow_unknown_revocation: true,
            ..self.clone()
        };
        let mut config = without_crls.server_config()?;
        config.alpn_protocols = vec![
            AGENT_ALPN.to_vec(),
            MQTT_ALPN.to_vec(),
            HTTP_ALPN.to_vec(),
            H2_ALPN.to_vec(),
        ];
        Ok(config)
    }

    /// A client that presents this identity and accepts only a server whose certificate names
    /// `expected_server` (a SPIFFE URI).
    pub fn client_config(&self, expected_server: &str) -> Result<ClientConfig, Error> {
        self.client_config_expecting(Expected::Exactly(expected_server.to_owned()))
    }

    /// An agent's client for its own domain's agent port: it accepts any gateway of `domain`
    /// (`spiffe://<domain>/agw/...`, the agent learns which from the access challenge) and
    /// offers [`AGENT_ALPN`].
    pub fn agent_client_config(&self, domain: &str) -> Result<ClientConfig, Error> {
        let mut config =
            self.client_config_expecting(Expected::GatewayOf(format!("spiffe://{domain}/agw/")))?;
        config.alpn_protocols = vec![AGENT_ALPN.to_vec()];
        Ok(config)
    }

    fn client_config_expecting(&self, expected: Expected) -> Result<ClientConfig, Error> {
        let verifier = server_verifier(
            self.roots()?,
            &self.trust_anchor,
            self.crls.clone(),
            self.allow_unknown_revocation,
            expected,
        )?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match &self.renewable {
            Some(renewable) => Ok(builder.with_client_cert_resolver(Arc::new(renewable.clone()))),
            None => {
                let (chain, key) = self.chain_and_key();
                builder.with_client_auth_cert(chain, key)
            }
        }
    }
}

/// A client without a certificate of its own (an applicant before its first one) that accepts
/// only a gateway of `domain` chained to `trust_anchor` (DER): how an agent reaches its
/// domain's authority over TLS to enroll, its enrollment token unreadable on the way.
pub fn applicant_client_config(trust_anchor: &[u8], domain: &str) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(trust_anchor.to_vec()))?;
    let verifier = server_verifier(
        Arc::new(roots),
        trust_anchor,
        Crls::default(),
        true,
        Expected::GatewayOf(format!("spiffe://{domain}/agw/")),
    )?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// webpki's checks of a server's chain against `roots` and `crls`, then its SPIFFE identity.
fn server_verifier(
    roots: Arc<RootCertStore>,
    anchor: &[u8],
    crls: Crls,
    allow_unknown: bool,
    expected: Expected,
) -> Result<Arc<SpiffeServerVerifier>, Error> {
    let build: BuildVerifier<WebPkiServerVerifier> = Box::new(move |crls: &[Vec<u8>]| {
        let mut builder =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), provider())
                .with_crls(crl_ders(crls))
                .only_check_end_entity_revocation();
        if allow_unknown {
            builder = builder.allow_unknown_revocation_status();
        }
        builder.build().map_err(|e| Error::General(e.to_string()))
    });
    Ok(Arc::new(SpiffeServerVerifier {
        webpki: Live::new(crls, build)?,
        expected,
        anchor: anchor.to_vec(),
    }))
}

/// Whether a server requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    Required,
    Optional,
}

/// The serial number of a presented chain's leaf, big-endian bytes.
pub fn leaf_serial(certs: &[CertificateDer<'_>]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(certs.first()?).ok()?;
    Some(cert.raw_serial().to_vec())
}

/// The URI SAN of a peer's certificate: its identity.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(certs.first()?).ok()?;
    uri_of(&cert)
}

fn crl_ders(crls: &[Vec<u8>]) -> Vec<CertificateRevocationListDer<'static>> {
    crls.iter().cloned().map(Into::into).collect()
}

/// Which server identity a client accepts.
#[derive(Debug)]
enum Expected {
    /// This SPIFFE URI.
    Exactly(String),
    /// Any gateway ID under this prefix (`spiffe://<domain>/agw/`).
    GatewayOf(String),
}

impl Expected {
    fn accepts(&self, id: &str) -> bool {
        match self {
            Expected::Exactly(e) => id == e,
            Expected::GatewayOf(prefix) => id
                .strip_prefix(prefix.as_str())
                .is_some_and(|name| !name.is_empty() && !name.contains('/')),
        }
    }
}

/// webpki's chain, validity and CRL checks, then the SPIFFE identity instead of a DNS name.
#[derive(Debug)]
struct SpiffeServerVerifier {
    webpki: Live<WebPkiServerVerifier>,
    expected: Expected,
    anchor: Vec<u8>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // webpki checks the name last, after the chain and the CRLs: a name error means the
        // rest passed.
        match self.webpki.get()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        if !issued_in_its_domain(end_entity, intermediates, &self.anchor) {
            return Err(foreign_issuer());
        }
        match peer_identity(std::slice::from_ref(end_entity)) {
            Some(id) if self.expected.accepts(&id) => Ok(ServerCertVerified::assertion()),
            _ => Err(Error::InvalidCertificate(CertificateError::NotValidForName)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.first.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.first.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.first.supported_verify_schemes()
    }
}

/// Checks certificates presented outside a TLS handshake (a registration, an access request)
/// exactly as the TLS server would: chain to the trust anchor, validity, and the CRLs.
#[derive(Debug, Clone)]
pub struct CertificateChecker {
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    anchor: Vec<u8>,
}

/// Why a presented certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No certificate, or not DER.
    #[error("no usable certificate")]
    Malformed,
    /// Does not chain to the trust anchor.
    #[error("certificate does not chain to the trust anchor: {0}")]
    Untrusted(String),
    /// On the CRL.
    #[error("certificate revoked")]
    Revoked,
    /// Outside its validity.
    #[error("certificate expired or not yet valid")]
    Expired,
    /// Valid, but names no identity URI.
    #[error("certificate names no identity URI")]
    NoIdentity,
}

impl ChainError {
    /// The wire code for this refusal.
    pub fn code(&self) -> agw_proto::pb::ErrorCode {
        use agw_proto::pb::ErrorCode as E;
        match self {
            ChainError::Malformed => E::Malformed,
            ChainError::Untrusted(_) => E::CertUntrusted,
            ChainError::Revoked => E::CertRevoked,
            ChainError::Expired => E::CertExpired,
            ChainError::NoIdentity => E::IdentityMismatch,
        }
    }
}

impl CertificateChecker {
    /// A checker trusting `trust_anchor` (DER) and refusing what `crls` (DER) list.
    pub fn new(trust_anchor: &[u8], crls: &[Vec<u8>]) -> Result<CertificateChecker, Error> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(trust_anchor.to_vec()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(crls.iter().cloned().map(Into::into))
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        Ok(CertificateChecker {
            verifier,
            anchor: trust_anchor.to_vec(),
        })
    }

    /// Checks `chain` (leaf first, DER) at `now` and returns the leaf's identity and serial.
    pub fn check(
        &self,
        chain: &[impl AsRef<[u8]>],
        now: std::time::SystemTime,
    ) -> Result<CheckedCertificate, ChainError> {
        let chain: Vec<CertificateDer<'_>> = chain
            .iter()
            .map(|c| CertificateDer::from(c.as_ref()))
            .collect();
        let (leaf, intermediates) = chain.split_first().ok_or(ChainError::Malformed)?;
        let since_epoch = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| ChainError::Expired)?;
        match self.verifier.verify_client_cert(
            leaf,
            intermediates,
            UnixTime::since_unix_epoch(since_epoch),
        ) {
            Ok(_) => {}
            Err(Error::InvalidCertificate(e)) => {
                return Err(match e {
                    CertificateError::Revoked => ChainError::Revoked,
                    CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. } => ChainError::Expired,
                    CertificateError::BadEncoding => ChainError::Malformed,
                    other => ChainError::Untrusted(format!("{other:?}")),
                });
            }
            Err(other) => return Err(ChainError::Untrusted(other.to_string())),
        }
        if !issued_in_its_domain(leaf, intermediates, &self.anchor) {
            return Err(ChainError::Untrusted(
                "issued by the authority of another domain than the one it names".into(),
            ));
        }
        let identity = peer_identity(&chain).ok_or(ChainError::NoIdentity)?;
        let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| ChainError::Malformed)?;
        let materials = materials::materials_in(&cert).map_err(|_| ChainError::Malformed)?;
        Ok(CheckedCertificate {
            identity,
            serial: cert.raw_serial().to_vec(),
            spki_der: cert.public_key().raw.to_vec(),
            materials,
        })
    }
}

/// Whether `leaf` was issued by the authority of the domain its identity names
/// (`spiffe://<domain>/...`): the certificate that signed it names `spiffe://<domain>`. That
/// signer is the trust anchor itself (a domain whose authority is its own root), or one of
/// `intermediates` that the anchor signed (a domain authority under a federation's root; a
/// presented certificate not signed by the anchor is never believed, whatever it names).
/// Call it after the chain was validated.
pub fn issued_in_its_domain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchor: &[u8],
) -> bool {
    let (Ok((_, leaf)), Ok((_, anchor))) = (
        X509Certificate::from_der(leaf),
        X509Certificate::from_der(anchor),
    ) else {
        return false;
    };
    let Some(domain) = uri_of(&leaf).and_then(|id| {
        let (domain, _) = id.strip_prefix("spiffe://")?.split_once('/')?;
        Some(domain.to_owned())
    }) else {
        return false;
    };
    let names_domain =
        |ca: &X509Certificate<'_>| uri_of(ca).is_some_and(|u| u == format!("spiffe://{domain}"));
    if leaf.verify_signature(Some(anchor.public_key())).is_ok() {
        return names_domain(&anchor);
    }
    intermediates.iter().any(|der| {
        X509Certificate::from_der(der).is_ok_and(|(_, ca)| {
            ca.subject() == leaf.issuer()
                && ca.verify_signature(Some(anchor.public_key())).is_ok()
                && leaf.verify_signature(Some(ca.public_key())).is_ok()
                && names_domain(&ca)
        })
    })
}

/// The first URI SAN of a parsed certificate.
fn uri_of(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(uri) => Some((*uri).to_owned()),
        _ => None,
    })
}

fn foreign_issuer() -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        ForeignIssuer,
    ))))
}

/// A certificate of one domain issued by another domain's authority.
#[derive(Debug, thiserror::Error)]
#[error("issued by the authority of another domain than the one it names")]
struct ForeignIssuer;

/// webpki's client checks, then [`issued_in_its_domain`].
#[derive(Debug)]
struct DomainBoundClientVerifier {
    webpki: Live<dyn rustls::server::danger::ClientCertVerifier>,
    anchor: Vec<u8>,
}

impl rustls::server::danger::ClientCertVerifier for DomainBoundClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.first.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.first.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.webpki.first.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, Error> {
        let verified = self
            .webpki
            .get()?
            .verify_client_cert(end_entity, intermediates, now)?;
        if issued_in_its_domain(end_entity, intermediates, &self.anchor) {
            Ok(verified)
        } else {
            Err(foreign_issuer())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.first.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.first.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.first.supported_verify_schemes()
    }
}

/// A certificate that passed [`CertificateChecker::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCertificate {
    /// Its identity URI.
    pub identity: String,
    /// Its serial number, big-endian bytes.
    pub serial: Vec<u8>,
    /// Its public key, DER SubjectPublicKeyInfo, to verify what it signs.
    pub spki_der: Vec<u8>,
    /// The materials its issuer checked and wrote into it ([`materials`]), if any.
    pub materials: Option<agw_proto::pb::IdentityMaterials>,
}

/// The URIs of a certificate's CRL distribution points (RFC 5280 4.2.1.13): where its
/// issuer's CRL is published.
pub fn crl_distribution_points(certificate: &[u8]) -> Vec<String> {
    use x509_parser::extensions::{DistributionPointName, ParsedExtension};
    let Ok((_, cert)) = X509Certificate::from_der(certificate) else {
        return Vec::new();
    };
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for point in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                    uris.extend(names.iter().filter_map(|n| match n {
                        GeneralName::URI(uri) => Some((*uri).to_owned()),
                        _ => None,
                    }));
                }
            }
        }
    }
    uris
}

/// The certificate in `chain` (leaf first, DER, as a peer presented it) that issued the leaf:
/// the one named as its issuer whose key verifies the leaf's signature, wherever it stands in
/// the chain (a peer chooses the order, and may add certificates that play no part).
pub fn leaf_issuer(chain: &[Vec<u8>]) -> Option<Vec<u8>> {
    let (leaf, rest) = chain.split_first()?;
    let (_, leaf) = X509Certificate::from_der(leaf).ok()?;
    rest.iter()
        .find(|der| {
            X509Certificate::from_der(der).is_ok_and(|(_, ca)| {
                ca.subject() == leaf.issuer()
                    && leaf.verify_signature(Some(ca.public_key())).is_ok()
            })
        })
        .cloned()
}

/// A CRL whose signature its issuer's key verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// Its CRL number, big-endian bytes (empty when it has none).
    pub number: Vec<u8>,
    /// The serials it revokes, big-endian bytes as certificates carry them.
    pub revoked: Vec<Vec<u8>>,
}

/// The issuer name of a CRL (DER), as raw DER.
pub fn crl_issuer(crl: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let (_, list) = CertificateRevocationList::from_der(crl).ok()?;
    Some(list.issuer().as_raw().to_vec())
}

/// Checks that `crl` (DER) was issued and signed by `issuer` (a CA certificate, DER).
pub fn verify_crl(crl: &[u8], issuer: &[u8]) -> Result<VerifiedCrl, String> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let (rest, list) =
        CertificateRevocationList::from_der(crl).map_err(|e| format!("not a DER CRL: {e}"))?;
    if !rest.is_empty() {
        return Err("bytes after the CRL".into());
    }
    let (_, ca) =
        X509Certificate::from_der(issuer).map_err(|e| format!("not a DER certificate: {e}"))?;
    if list.issuer() != ca.subject() {
        return Err(format!(
            "the CRL is issued by {}, not {}",
            list.issuer(),
            ca.subject()
        ));
    }
    list.verify_signature(ca.public_key())
        .map_err(|e| format!("the CRL's signature does not verify: {e}"))?;
    Ok(VerifiedCrl {
        number: list
            .crl_number()
            .map(|n| n.to_bytes_be())
            .unwrap_or_default(),
        revoked: list
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect(),
    })
}
