//! Who may message whom: the operator's authorization policy, evaluated by the shards for
//! every agent message from a published snapshot (no lock, no allocation per frame).
//!
//! A policy is a list of rules, first match wins, then a default: `local` for messages between
//! agents of this gateway's domain, `remote` for messages that cross domains. A rule names a
//! source and a destination pattern (an agent ID, every agent of a domain, the agents whose
//! certificate grants a permission scope, or anyone) and an action. Scopes are known for the
//! agents this gateway's authority certified: the control plane fills in who holds which
//! ([`Authorization::with_scopes`]) from the authority's records, again after every issuance
//! and revocation. A message a rule or default denies is NACKed `UNAUTHORIZED` to its sender with the
//! rule's reason. ACKs and NACKs are answers to messages already allowed: never checked.
//!
//! Cost: none while the policy allows everything (the default); otherwise a scan of the rules
//! with string comparisons (rules are few; a policy of thousands of rules would want an index).

use std::fmt;

/// What a rule or default does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The message goes on.
    Allow,
    /// The message is NACKed `UNAUTHORIZED`.
    Deny,
}

/// Which agents a rule side covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Any agent (`*`).
    Any,
    /// Every agent of this domain (`domain:travel.example`).
    Domain(String),
    /// This agent (`spiffe://travel.example/agent/alice`).
    Agent(String),
    /// Every agent whose valid certificate grants this permission scope (`scope:payments`).
    Scope(String),
}

impl Pattern {
    /// `*`, `domain:<domain>` or an agent ID.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::Any);
        }
        if let Some(scope) = text.strip_prefix("scope:") {
            if scope.is_empty() || scope.chars().any(char::is_whitespace) {
                return Err(format!("{text:?}: scope:<name>, a permission scope"));
            }
            return Ok(Pattern::Scope(scope.to_owned()));
        }
        if let Some(domain) = text.strip_prefix("domain:") {
            agw_proto::identity::Domain::new(domain).map_err(|e| format!("{text:?}: {e}"))?;
            return Ok(Pattern::Domain(domain.to_owned()));
        }
        agw_proto::identity::AgentId::parse(text)
            .map(|a| Pattern::Agent(a.to_string()))
            .map_err(|e| format!("{text:?}: {e} (an agent ID, domain:<domain>, scope:<name> or *)"))
    }

    fn covers(&self, agent: &str, domain: &str, scopes: &ScopeMembers) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Domain(d) => d == domain,
            Pattern::Agent(a) => a == agent,
            Pattern::Scope(s) => scopes.get(s).is_some_and(|holders| holders.contains(agent)),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Domain(d) => write!(f, "domain:{d}"),
            Pattern::Agent(a) => f.write_str(a),
            Pattern::Scope(s) => write!(f, "scope:{s}"),
        }
    }
}

/// One rule: messages from `from` to `to` get `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The senders it covers.
    pub from: Pattern,
    /// The destinations it covers.
    pub to: Pattern,
    /// Allow or deny.
    pub action: Action,
}

/// Scope -> the agents holding it.
type ScopeMembers = hashbrown::HashMap<String, hashbrown::HashSet<String>>;

/// The policy: rules, then the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// This gateway's domain: what `local` and `remote` are relative to.
    domain: String,
    rules: Vec<Rule>,
    /// Who holds the scopes the rules name (empty until [`Authorization::with_scopes`]).
    scopes: std::sync::Arc<ScopeMembers>,
    local: Action,
    remote: Action,
    /// Nothing to check: every message is allowed.
    open: bool,
}

/// Why a message was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// By rule number (from 1, in the order configured).
    Rule(usize),
    /// By the default for messages within the domain.
    Local,
    /// By the default for messages across domains.
    Remote,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Rule(n) => write!(f, "denied by authorization rule {n}"),
            Denial::Local => f.write_str("denied by the authorization default within the domain"),
            Denial::Remote => f.write_str("denied by the authorization default across domains"),
        }
    }
}

/// The domain of an agent or gateway ID (`spiffe://<domain>/...`), without allocating; empty
/// if it is not one.
/// The domain of a SPIFFE ID (agent or gateway), or ""; no check that the rest is valid.
pub fn domain_of(agent: &str) -> &str {
    agent
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map_or("", |(domain, _)| domain)
}

impl Authorization {
    /// Everything allowed: the default.
    pub fn allow_all(domain: &str) -> Authorization {
        Authorization::new(domain, Vec::new(), Action::Allow, Action::Allow)
    }

    /// `rules` in order, then `local` within `domain` and `remote` across domains.
    pub fn new(domain: &str, rules: Vec<Rule>, local: Action, remote: Action) -> Authorization {
        let open = rules.iter().all(|r| r.action == Action::Allow)
            && local == Action::Allow
            && remote == Action::Allow;
        Authorization {
            domain: domain.to_owned(),
            rules,
            scopes: Default::default(),
            local,
            remote,
            open,
        }
    }

    /// Whether `source` may message `destination` (both agent IDs): `Err` says what denied it.
    #[inline]
    pub fn check(&self, source: &str, destination: &str) -> Result<(), Denial> {
        if self.open {
            return Ok(());
        }
        let (from_domain, to_domain) = (domain_of(source), domain_of(destination));
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.from.covers(source, from_domain, &self.scopes)
                && rule.to.covers(destination, to_domain, &self.scopes)
            {
                return match rule.action {
                    Action::Allow => Ok(()),
                    Action::Deny => Err(Denial::Rule(i + 1)),
                };
            }
        }
        let local = from_domain == self.domain && to_domain == self.domain;
        match (local, self.local, self.remote) {
            (true, Action::Allow, _) | (false, _, Action::Allow) => Ok(()),
            (true, Action::Deny, _) => Err(Denial::Local),
            (false, _, Action::Deny) => Err(Denial::Remote),
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether a rule names a permission scope (so who holds which must be filled in).
    pub fn uses_scopes(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.from, Pattern::Scope(_)) || matches!(r.to, Pattern::Scope(_)))
    }

    /// The same policy with `holders` (each agent and the scopes its certificate grants) as
    /// who holds the scopes its rules name; scopes no rule names are left out.
    pub fn with_scopes(mut self, holders: &[(String, Vec<String>)]) -> Authorization {
        let named: Vec<&str> = self
            .rules
            .iter()
            .flat_map(|r| [&r.from, &r.to])
            .filter_map(|p| match p {
                Pattern::Scope(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        let mut members = ScopeMembers::default();
        for (agent, scopes) in holders {
            for scope in scopes.iter().filter(|s| named.contains(&s.as_str())) {
                members
                    .entry(scope.clone())
                    .or_default()
                    .insert(agent.clone());
            }
        }
        self.scopes = std::sync::Arc::new(members);
        self
    }
}

/// What each peer gateway may relay: frames whose source is an agent of its own domain or of
/// a domain it advertised agents of (a path through it exists). Kept by the control plane from
/// its peers' sessions (only a peer whose session is up relays anything) and the summaries
/// each sent; read by the shards per frame on peer links, lock-free.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerDomains(hashbrown::HashMap<String, hashbrown::HashSet<String>>);

impl PeerDomains {
    /// For each peer gateway ID whose session is up, the domains it advertised agents of.
    pub fn new(peers: impl IntoIterator<Item = (String, Vec<String>)>) -> PeerDomains {
        PeerDomains(
            peers
                .into_iter()
                .map(|(peer, domains)| (peer, domains.into_iter().collect()))
                .collect(),
        )
    }

    /// Whether `peer` (a gateway ID) may relay a frame from an agent of `domain`.
    pub fn allows(&self, peer: &str, domain: &str) -> bool {
        // A gateway ID has the same `spiffe://<domain>/` prefix as an agent ID.
        self.0
            .get(peer)
            .is_some_and(|d| domain_of(peer) == domain || d.contains(domain))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn scope_rules_match_the_holders_filled_in() {
        let pay = "spiffe://a.example/agent/pay";
        let bank = "spiffe://a.example/agent/bank";
        let policy = Authorization::new(
            "a.example",
            vec![
                rule("scope:payments", bank, Action::Allow),
                rule("*", bank, Action::Deny),
            ],
            Action::Allow,
            Action::Allow,
        );
        assert!(policy.uses_scopes());
        assert_eq!(policy.check(pay, bank), Err(Denial::Rule(2)));
        let filled = policy.with_scopes(&[
            (
                pay.to_owned(),
                vec!["payments".to_owned(), "unnamed".to_owned()],
            ),
            (
                "spiffe://a.example/agent/t".to_owned(),
                vec!["travel".to_owned()],
            ),
        ]);
        assert_eq!(filled.check(pay, bank), Ok(()));
        assert_eq!(
            filled.check("spiffe://a.example/agent/t", bank),
            Err(Denial::Rule(2))
        );
        assert_eq!(
            rule("scope:payments", "*", Action::Allow).from.to_string(),
            "scope:payments"
        );
        assert!(Pattern::parse("scope:").is_err());
        assert!(!Authorization::allow_all("a.example").uses_scopes());
    }

    #[test]
    fn a_peer_relays_its_own_and_its_advertised_domains_only_while_up() {
        let b = "spiffe://b.example/agw/b1";
        let domains = PeerDomains::new([(b.to_owned(), vec!["c.example".to_owned()])]);
        assert!(domains.allows(b, "b.example"));
        assert!(domains.allows(b, "c.example"));
        assert!(!domains.allows(b, "z.example"));
        // Another gateway of b's domain, not a peer up: nothing.
        assert!(!domains.allows("spiffe://b.example/agw/rogue", "b.example"));
        assert!(!PeerDomains::default().allows(b, "b.example"));
    }

    fn rule(from: &str, to: &str, action: Action) -> Rule {
        Rule {
            from: Pattern::parse(from).unwrap(),
            to: Pattern::parse(to).unwrap(),
            action,
        }
    }

    #[test]
    fn first_match_wins_then_the_defaults() {
        let a = |n: &str| format!("spiffe://a.example/agent/{n}");
        let b = |n: &str| format!("spiffe://b.example/agent/{n}");
        let policy = Authorization::new(
            "a.example",
            vec![
                rule(&a("intern"), &a("payments"), Action::Deny),
                rule("*", &a("payments"), Action::Allow),
                rule("domain:b.example", "*", Action::Deny),
            ],
            Action::Allow,
            Action::Allow,
        );
        assert_eq!(
            policy.check(&a("intern"), &a("payments")),
            Err(Denial::Rule(1))
        );
        assert_eq!(policy.check(&a("alice"), &a("payments")), Ok(()));
        // Rule 2 lets b's agents reach payments before rule 3 stops them.
        assert_eq!(policy.check(&b("bob"), &a("payments")), Ok(()));
        assert_eq!(policy.check(&b("bob"), &a("alice")), Err(Denial::Rule(3)));
        assert_eq!(policy.check(&a("alice"), &b("bob")), Ok(()));

        let closed = Authorization::new("a.example", Vec::new(), Action::Allow, Action::Deny);
        assert_eq!(closed.check(&a("alice"), &a("bob")), Ok(()));
        assert_eq!(closed.check(&a("alice"), &b("bob")), Err(Denial::Remote));
        assert_eq!(closed.check(&b("bob"), &a("alice")), Err(Denial::Remote));
        let local = Authorization::new("a.example", Vec::new(), Action::Deny, Action::Allow);
        assert_eq!(local.check(&a("alice"), &a("bob")), Err(Denial::Local));
    }

    #[test]
    fn patterns_parse_or_say_why_not() {
        assert_eq!(Pattern::parse("*"), Ok(Pattern::Any));
        assert_eq!(
            Pattern::parse("domain:a.example"),
            Ok(Pattern::Domain("a.example".into()))
        );
        assert!(Pattern::parse("alice").unwrap_err().contains("agent ID"));
        assert!(Pattern::parse("domain:").is_err());
        assert_eq!(domain_of("spiffe://a.example/agent/x"), "a.example");
        assert_eq!(domain_of("nonsense"), "");
    }
}
