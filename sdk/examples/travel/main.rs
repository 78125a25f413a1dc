//! The draft's travel scenario (2.4) as four agents written with the SDK alone. Each runs as
//! its own process against its domain's gateway:
//!
//! ```text
//! cargo run -p agw-sdk --example travel -- visa --name visa --domain local.agw \
//!     --gateway 127.0.0.1:7400 --registry 127.0.0.1:7403 --aca 127.0.0.1:7401 \
//!     --token "$TOKEN" --store visa.redb
//! ```
//!
//! `agw-demo` runs the same four in one process across three gateways (docs/agents.md).

// The agents' modules are the demo's too, where their items are reached.
#![allow(unreachable_pub)]

mod flight;
mod hotel;
mod traveller;
mod visa;

use std::{
    io::Write as _, net::SocketAddr, path::PathBuf, sync::atomic::AtomicBool, time::Duration,
};

use agw_proto::identity::{AgentId, Domain};
use agw_sdk::{agent::AccessOptions, lifecycle, session::Sessions};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Traveller,
    Visa,
    Flight,
    Hotel,
}

/// One agent of the travel scenario.
#[derive(Parser)]
struct Args {
    role: Role,
    /// The agent's name in its domain.
    #[arg(long)]
    name: String,
    #[arg(long)]
    domain: String,
    /// The domain's gateway (agents' port), registry and authority.
    #[arg(long)]
    gateway: SocketAddr,
    #[arg(long)]
    registry: SocketAddr,
    #[arg(long)]
    aca: SocketAddr,
    #[arg(long, default_value = "Example")]
    organization: String,
    /// The organisation's enrollment token, as its operator handed it out.
    #[arg(long)]
    token: String,
    /// The agent's session store.
    #[arg(long)]
    store: PathBuf,
    /// A flight agent goes offline when it is given its first booking.
    #[arg(long)]
    crash_mid_task: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let id = AgentId::new(&Domain::new(&args.domain)?, &args.name)?;
    let domain = lifecycle::Domain {
        gateway: args.gateway,
        registry: args.registry,
        aca: args.aca,
        other_gateways: Vec::new(),
    };
    let timeout = Duration::from_secs(10);
    let agent = lifecycle::Agent::enroll(
        id,
        &args.organization,
        &args.token,
        domain,
        AccessOptions::default(),
        timeout,
    )?;
    let mut sessions = Sessions::open(agent, &args.store)?;
    let log = |line: String| {
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    };
    let stop = AtomicBool::new(false);
    match args.role {
        Role::Traveller => {
            let status = traveller::plan_trip(&mut sessions, Duration::from_secs(5), &log)?;
            log(format!("task {}: {:?}", status.task_id, status.state()));
            if status.state() != agw_proto::pb::TaskState::Completed {
                return Err("the trip is not booked".into());
            }
        }
        Role::Visa => {
            register(&sessions, visa::profile(), args.gateway)?;
            visa::serve(&mut sessions, &stop, &log)?;
        }
        Role::Flight => {
            register(&sessions, flight::profile(&args.name), args.gateway)?;
            let crash = AtomicBool::new(args.crash_mid_task);
            flight::serve(&mut sessions, &args.name, &crash, &stop, &log)?;
        }
        Role::Hotel => {
            register(&sessions, hotel::profile(), args.gateway)?;
            hotel::serve(&mut sessions, &stop, &log)?;
        }
    }
    Ok(())
}

/// Registers `profile`, reached through `gateway`.
fn register(
    sessions: &Sessions,
    mut profile: agw_proto::pb::AgentProfile,
    gateway: SocketAddr,
) -> Result<(), agw_sdk::agent::AgentError> {
    profile.address = gateway.to_string();
    sessions.agent().register(profile).map(|_| ())
}
