//! EST's request decoding, byte by byte: the fuzz target's seed corpus
//! (`fuzz/seeds/est_request/`) replayed on stable, each seed with the outcome its name
//! promises, and the refusals' types.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_aca::est::{EstError, basic_credentials, check_request, csr_body};

#[test]
fn seed_requests_decode_or_fail_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/est_request");
    let csr = std::fs::read(dir.join("../csr/valid-p256")).unwrap();
    let acme = Some(("Acme".to_owned(), "secret".to_owned()));
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let result = check_request(&std::fs::read(&path).unwrap());
        match name.as_str() {
            "valid" | "valid-content-type-parameters" => {
                assert_eq!(result, Some((csr.clone(), acme.clone())), "{name}")
            }
            "valid-no-authorization" => assert_eq!(result, Some((csr.clone(), None))),
            "wrong-content-type"
            | "not-base64"
            | "bearer-authorization"
            | "basic-without-colon" => assert_eq!(result, None, "{name}"),
            // Decodes; the CSR checks refuse it.
            "base64-of-garbage" => assert!(agw_aca::csr::verify_csr(&result.unwrap().0).is_err()),
            // Inputs saved from fuzzing runs: any outcome, no panic.
            _ => drop(result),
        }
        seen += 1;
    }
    assert!(seen >= 8, "{seen} seeds in {}", dir.display());
}

#[test]
fn refusals_are_typed() {
    assert_eq!(
        csr_body(None, b"MA=="),
        Err(EstError::ContentType(String::new()))
    );
    assert_eq!(
        csr_body(Some("application/pkcs10"), b"M A\r\n= ="),
        Ok(vec![0x30])
    );
    assert!(matches!(
        csr_body(Some("application/pkcs10"), b"M"),
        Err(EstError::NotBase64(_))
    ));
    let huge = vec![b'A'; agw_aca::est::MAX_BODY + 4];
    assert_eq!(
        csr_body(Some("application/pkcs10"), &huge),
        Err(EstError::TooLarge(huge.len()))
    );
    assert_eq!(basic_credentials(None), Ok(None));
    // "a:b:c": the token is everything after the first colon.
    assert_eq!(
        basic_credentials(Some("basic YTpiOmM=")),
        Ok(Some(("a".into(), "b:c".into())))
    );
    for bad in [
        "Basic",
        "Basic !!!",
        "Digest YTpi",
        "Basic /w==",
        "Basic YWI=",
    ] {
        assert_eq!(
            basic_credentials(Some(bad)),
            Err(EstError::Authorization),
            "{bad}"
        );
    }
}
