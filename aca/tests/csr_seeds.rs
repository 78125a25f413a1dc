//! Replays the CSR fuzz target's seed corpus (`fuzz/seeds/csr/`) on stable: CSRs made by
//! openssl with each accepted key, and broken ones, each with the outcome its name promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_aca::{
    csr::{CsrError, verify_csr},
    keys::{KeyAlgorithm, KeyError},
};

#[test]
fn seed_csrs_verify_or_fail_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/csr");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let result = verify_csr(&std::fs::read(&path).unwrap());
        match name.as_str() {
            "valid-p256" => assert_eq!(result.unwrap().algorithm, KeyAlgorithm::EcdsaP256),
            "valid-p384" => assert_eq!(result.unwrap().algorithm, KeyAlgorithm::EcdsaP384),
            "valid-ed25519" => assert_eq!(result.unwrap().algorithm, KeyAlgorithm::Ed25519),
            "valid-rsa2048" => assert_eq!(result.unwrap().algorithm, KeyAlgorithm::Rsa(2048)),
            "weak-rsa1024" => assert_eq!(result, Err(CsrError::Key(KeyError::RsaTooShort(1024)))),
            "truncated-p256" => assert_eq!(result, Err(CsrError::Malformed)),
            "bad-signature-p384" => assert_eq!(result, Err(CsrError::BadSignature)),
            // Inputs saved from fuzzing runs: any typed outcome, no panic.
            _ => drop(result),
        }
        if let Some(agent) = name.strip_prefix("valid-") {
            let uri = format!("spiffe://travel.example/agent/{agent}");
            assert_eq!(
                verify_csr(&std::fs::read(&path).unwrap()).unwrap().uris,
                vec![uri]
            );
        }
        seen += 1;
    }
    assert!(seen >= 7, "{seen} seeds in {}", dir.display());
}
