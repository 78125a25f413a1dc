//! The visa agent: issues a visa document for the country of the trip it is given.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use agw_proto::pb;
use agw_sdk::{
    session::{SessionError, Sessions},
    task::worker::{self, Served},
};

/// What the visa agent registers: it offers `visa`.
pub fn profile() -> pb::AgentProfile {
    pb::AgentProfile {
        description: "Processes visa applications".into(),
        capabilities: vec!["visa".into()],
        protocols: vec![pb::Protocol::Native as i32],
        ..Default::default()
    }
}

/// Serves visa subtasks until `stop`.
pub fn serve(
    sessions: &mut Sessions,
    stop: &AtomicBool,
    log: &(dyn Fn(String) + Sync),
) -> Result<(), SessionError> {
    let mut issued = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let served = worker::serve(sessions, Duration::from_millis(200), |job| {
            let trip: serde_json::Value =
                serde_json::from_slice(&job.assignment.input).map_err(|e| e.to_string())?;
            let country = trip["country"].as_str().ok_or("no country in the trip")?;
            issued += 1;
            let visa = format!("VISA-{country}-{issued:04}");
            log(format!("   [visa] issued {visa} for {}", trip["traveller"]));
            let output = serde_json::json!({ "visa": visa }).to_string();
            Ok(("application/json".into(), output.into()))
        })?;
        if let Served::Job(assignment, state) = served {
            log(format!("   [visa] {}: {state:?}", assignment.subtask_id));
        }
    }
    Ok(())
}
