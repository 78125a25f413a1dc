//! A2A server agents: local agents whose profile carries an `a2a_url`. This follows the
//! registry (at start, then every batch of its changes) and names each such agent, with its
//! resolved address, to the relay ([`A2aServers`]), which keeps a connection to it as its
//! route; an agent deregistered or whose URL is removed is dropped.

use std::collections::HashMap;

use agw_ars::{Change, RegistryHandle};
use agw_dataplane::A2aServers;
use agw_proto::{a2a_url::A2aUrl, identity::AgentId};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// The agents a batch of registry changes names.
pub fn changed_agents(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Advertise(s) => s.agent.clone(),
            Change::Withdraw(agent) => agent.clone(),
        })
        .collect()
}

/// A channel for the agents the registry's changes name.
pub fn channel() -> (UnboundedSender<Vec<String>>, UnboundedReceiver<Vec<String>>) {
    tokio::sync::mpsc::unbounded_channel()
}

/// Names the registry's A2A server agents to the relay, now and after every change, until
/// the registry's changes stop.
pub async fn follow(
    registry: RegistryHandle,
    relay: A2aServers,
    mut changed: UnboundedReceiver<Vec<String>>,
) {
    // Agent -> the URL the relay was told.
    let mut told: HashMap<String, String> = HashMap::new();
    let everyone: Vec<String> = registry
        .view()
        .local_summaries()
        .into_iter()
        .map(|s| s.agent)
        .collect();
    apply(&registry, &relay, &mut told, everyone).await;
    while let Some(agents) = changed.recv().await {
        apply(&registry, &relay, &mut told, agents).await;
    }
}

async fn apply(
    registry: &RegistryHandle,
    relay: &A2aServers,
    told: &mut HashMap<String, String>,
    agents: Vec<String>,
) {
    for agent in agents {
        let url = {
            let view = registry.view();
            view.profile(&agent)
                .filter(|_| view.is_local(&agent))
                .map(|p| p.a2a_url.clone())
                .filter(|u| !u.is_empty())
        };
        let Ok(id) = AgentId::parse(&agent) else {
            continue;
        };
        match (told.get(&agent), url) {
            (Some(old), Some(new)) if *old == new => {}
            (_, Some(new)) => {
                // Checked by the registry when stored.
                let Ok(parsed) = A2aUrl::parse(&new) else {
                    continue;
                };
                let resolved = tokio::net::lookup_host(parsed.dial.clone())
                    .await
                    .map(|mut addresses| addresses.next());
                match resolved {
                    Ok(first) => match first {
                        Some(address) => {
                            tracing::info!(%agent, url = new, %address, "A2A server agent: the relay calls it");
                            relay.set(id, parsed, address);
                            told.insert(agent, new);
                        }
                        None => {
                            tracing::warn!(%agent, url = new, "A2A server's host has no address")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(%agent, url = new, error = %e, "A2A server's host does not resolve; tried again at the profile's next change");
                    }
                }
            }
            (Some(_), None) => {
                tracing::info!(%agent, "no longer an A2A server agent");
                relay.remove(id);
                told.remove(&agent);
            }
            (None, None) => {}
        }
    }
}
