//! Identities: what parses, what is refused and why, and that parsing and formatting agree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_proto::identity::{AgentId, Domain, GatewayId, IdError, ResourceId};
use proptest::prelude::*;

#[test]
fn agent_and_gateway_ids_parse_into_their_parts() {
    let a = AgentId::parse("spiffe://travel.example/agent/hotel-booker_2").expect("valid");
    assert_eq!(a.domain(), "travel.example");
    assert_eq!(a.name(), "hotel-booker_2");
    assert_eq!(
        a.to_string(),
        "spiffe://travel.example/agent/hotel-booker_2"
    );

    let g: GatewayId = "spiffe://travel.example/agw/edge.1".parse().expect("valid");
    assert_eq!(g.domain(), "travel.example");
    assert_eq!(g.name(), "edge.1");

    let built = AgentId::new(
        &Domain::new("travel.example").expect("valid"),
        "hotel-booker_2",
    );
    assert_eq!(built, Ok(a));
}

#[test]
fn invalid_ids_are_refused_with_the_reason() {
    let cases: &[(&str, IdError)] = &[
        ("http://a/agent/x", IdError::Scheme),
        ("spiffe://a", IdError::Path("agent")),
        ("spiffe:///agent/x", IdError::Domain("empty")),
        (
            "spiffe://A.example/agent/x",
            IdError::Domain("only lowercase letters, digits, '.', '-', '_' are allowed"),
        ),
        ("spiffe://a..b/agent/x", IdError::Domain("empty label")),
        ("spiffe://.a/agent/x", IdError::Domain("empty label")),
        (
            "spiffe://a:443/agent/x",
            IdError::Domain("only lowercase letters, digits, '.', '-', '_' are allowed"),
        ),
        ("spiffe://a/agw/x", IdError::Path("agent")),
        ("spiffe://a/agent/", IdError::Name("empty")),
        (
            "spiffe://a/agent/..",
            IdError::Name("'.' and '..' are not names"),
        ),
        (
            "spiffe://a/agent/x/y",
            IdError::Name("only letters, digits, '.', '-', '_' are allowed"),
        ),
        (
            "spiffe://a/agent/x?q",
            IdError::Name("only letters, digits, '.', '-', '_' are allowed"),
        ),
        (
            "spiffe://a/agent/caf\u{e9}",
            IdError::Name("only letters, digits, '.', '-', '_' are allowed"),
        ),
    ];
    for (uri, expected) in cases {
        assert_eq!(AgentId::parse(uri).as_ref(), Err(expected), "{uri}");
    }
    let long_name = format!("spiffe://a/agent/{}", "n".repeat(129));
    assert_eq!(
        AgentId::parse(&long_name),
        Err(IdError::Name("longer than 128 bytes"))
    );
    let long_domain = format!("spiffe://{}/agent/x", "d".repeat(254));
    assert_eq!(
        AgentId::parse(&long_domain),
        Err(IdError::Domain("longer than 253 bytes"))
    );
    assert_eq!(
        GatewayId::parse("spiffe://a/agent/x"),
        Err(IdError::Path("agw"))
    );
}

#[test]
fn resource_ids_format_and_parse() {
    let id = ResourceId::new(Domain::new("travel.example").expect("valid"), 0xabc);
    let text = id.to_string();
    assert_eq!(text, "ars:travel.example:00000000000000000000000000000abc");
    assert_eq!(text.parse::<ResourceId>(), Ok(id));

    for bad in [
        "ars:travel.example:abc",
        "ars:travel.example:00000000000000000000000000000ABC",
        "ars::00000000000000000000000000000abc",
        "res:travel.example:00000000000000000000000000000abc",
        "ars:travel.example:+0000000000000000000000000000abc",
    ] {
        assert!(ResourceId::parse(bad).is_err(), "{bad}");
    }
}

proptest! {
    #[test]
    fn valid_ids_format_back_to_themselves(
        domain in "[a-z0-9_-]{1,20}(\\.[a-z0-9_-]{1,20}){0,3}",
        name in "[A-Za-z0-9_-][A-Za-z0-9._-]{0,60}",
        value in any::<u128>(),
    ) {
        let d = Domain::new(&domain).expect("valid domain");
        let a = AgentId::new(&d, &name).expect("valid name");
        prop_assert_eq!(AgentId::parse(a.as_str()), Ok(a.clone()));
        prop_assert_eq!(a.domain(), domain.as_str());
        prop_assert_eq!(a.name(), name.as_str());
        let g = GatewayId::new(&d, &name).expect("valid name");
        prop_assert_eq!(GatewayId::parse(g.as_str()), Ok(g));
        let r = ResourceId::new(d, value);
        prop_assert_eq!(ResourceId::parse(&r.to_string()), Ok(r));
    }

    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,300}") {
        if let Ok(a) = AgentId::parse(&s) {
            prop_assert_eq!(a.as_str(), s.as_str());
        }
        let _ = GatewayId::parse(&s);
        let _ = ResourceId::parse(&s);
    }
}
