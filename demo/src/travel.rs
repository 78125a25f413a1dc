//! The draft's scenario (2.4): a traveller agent of c.example plans a trip; a visa agent of
//! a.example, flight agents of b.example and c.example and a hotel agent of b.example do it.
//! Visa first, then flight and hotel in parallel; the first flight agent given the booking goes
//! offline mid-task and the orchestrator moves it to the other; the hotel agent asks a
//! follow-up question in its session and books with the answer and the trip's context.
//!
//! The agents are the SDK's example agents (`sdk/examples/travel/`), compiled in here as they
//! are.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use agw_controlplane::node::Node;
use agw_proto::{identity::AgentId, pb};
use agw_sdk::{
    agent::AccessOptions,
    lifecycle::{self, Agent},
    session::Sessions,
};

use crate::{WAIT, say};

#[path = "../../sdk/examples/travel/flight.rs"]
pub mod flight;
#[path = "../../sdk/examples/travel/hotel.rs"]
pub mod hotel;
#[path = "../../sdk/examples/travel/traveller.rs"]
pub mod traveller;
#[path = "../../sdk/examples/travel/visa.rs"]
pub mod visa;

/// An agent named `name` of `node`'s domain, enrolled and connected, with its session store
/// in `dir`.
pub fn agent(node: &Node, name: &str, dir: &Path) -> Result<Sessions, String> {
    let id = AgentId::new(node.authority.domain(), name).map_err(|e| e.to_string())?;
    let domain = lifecycle::Domain {
        gateway: node.addresses().agents,
        registry: node.addresses().registry,
        aca: node.addresses().aca,
        other_gateways: Vec::new(),
    };
    let token = node
        .enrollment_token("Example")
        .ok_or("no enrollment token for Example")?;
    let agent = Agent::enroll(id, "Example", token, domain, AccessOptions::default(), WAIT)
        .map_err(|e| format!("{name}: {e}"))?;
    Sessions::open(agent, &dir.join(format!("{name}.redb"))).map_err(|e| e.to_string())
}

fn register(sessions: &Sessions, mut profile: pb::AgentProfile, node: &Node) -> Result<(), String> {
    profile.address = node.addresses().agents.to_string();
    sessions
        .agent()
        .register(profile)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Runs the scenario on gateways `a`, `b` and `c` (peered); `silence` is how long the
/// traveller waits on a quiet agent before it moves the subtask. Returns the task's end.
pub fn run(
    a: &Node,
    b: &Node,
    c: &Node,
    dir: &Path,
    silence: Duration,
) -> Result<pb::TaskStatus, String> {
    say("== the draft's travel scenario: visa (a), flights (b, c), hotel (b), traveller (c)");
    let log = |line: String| say(line);
    let stop = AtomicBool::new(false);
    let crash = AtomicBool::new(true);
    let mut visa_agent = agent(a, "visa", dir)?;
    register(&visa_agent, visa::profile(), a)?;
    let mut flights = Vec::new();
    for (node, airline) in [(b, "skyways"), (c, "tagus-air")] {
        let sessions = agent(node, airline, dir)?;
        register(&sessions, flight::profile(airline), node)?;
        flights.push((sessions, airline));
    }
    let mut hotel_agent = agent(b, "hotel", dir)?;
    register(&hotel_agent, hotel::profile(), b)?;
    let mut traveller_agent = agent(c, "trip-planner", dir)?;
    let everyone: Vec<String> = [&visa_agent, &flights[0].0, &flights[1].0, &hotel_agent]
        .iter()
        .map(|s| s.agent().id().to_string())
        .collect();
    wait_for_discovery(&traveller_agent, &everyone)?;

    std::thread::scope(|s| {
        let (stop, crash, log) = (&stop, &crash, &log);
        let mut workers = vec![
            s.spawn(move || visa::serve(&mut visa_agent, stop, log).map_err(|e| e.to_string())),
            s.spawn(move || hotel::serve(&mut hotel_agent, stop, log).map_err(|e| e.to_string())),
        ];
        for (mut sessions, airline) in flights {
            workers.push(s.spawn(move || {
                let crashed = flight::serve(&mut sessions, airline, crash, stop, log)
                    .map_err(|e| e.to_string())?;
                // Gone: its connection closes with it, its gateway takes it offline.
                drop(sessions);
                if crashed {
                    log(format!("   [{airline}] offline"));
                }
                Ok(())
            }));
        }
        let status =
            traveller::plan_trip(&mut traveller_agent, silence, &log).map_err(|e| e.to_string());
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().map_err(|_| "an agent panicked".to_owned())??;
        }
        let status = status?;
        say(format!(
            "   task {}: {}",
            status.task_id,
            agw_sdk::task::a2a_state(status.state())
        ));
        for s in &status.subtasks {
            say(format!(
                "   recorded {}: {} by {} (tried {})",
                s.id,
                String::from_utf8_lossy(&s.output),
                s.agent,
                s.tried.join(", ")
            ));
        }
        Ok(status)
    })
}

/// Waits until the traveller's registry (c) finds online, for each capability the trip needs,
/// the scenario's agents and no others (the first act's hotel has just gone offline).
fn wait_for_discovery(traveller: &Sessions, scenario: &[String]) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    for (capability, count) in [("visa", 1), ("book-flight", 2), ("book-hotel", 1)] {
        loop {
            let found = traveller
                .agent()
                .discover(pb::DiscoverRequest {
                    request_id: 1,
                    capabilities: vec![capability.into()],
                    online_only: true,
                    ..Default::default()
                })
                .map_err(|e| e.to_string())?;
            if found.len() == count && found.iter().all(|p| scenario.contains(&p.agent)) {
                let names: Vec<&str> = found.iter().map(|p| p.agent.as_str()).collect();
                say(format!(
                    "   c's registry finds {capability}: {}",
                    names.join(", ")
                ));
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{capability}: {} found, {count} wanted",
                    found.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}
