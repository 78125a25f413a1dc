//! A flight agent: books a flight once the visa is there. With `crash` set, the first one
//! given a booking goes offline before it answers (the demo's agent that fails mid-task).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use agw_proto::pb;
use agw_sdk::{
    session::{SessionError, Sessions},
    task::worker::{self, Served},
};

/// What a flight agent registers: it offers `book-flight`.
pub fn profile(airline: &str) -> pb::AgentProfile {
    pb::AgentProfile {
        description: format!("Books {airline} flights"),
        capabilities: vec!["book-flight".into()],
        protocols: vec![pb::Protocol::Native as i32],
        ..Default::default()
    }
}

/// Serves bookings until `stop`, or until it crashes (returns `true`): the caller then drops
/// its sessions, and with them its connection.
pub fn serve(
    sessions: &mut Sessions,
    airline: &str,
    crash: &AtomicBool,
    stop: &AtomicBool,
    log: &(dyn Fn(String) + Sync),
) -> Result<bool, SessionError> {
    while !stop.load(Ordering::Relaxed) {
        let Some(event) = sessions.next(Duration::from_millis(200))? else {
            continue;
        };
        if let Some(a) = worker::assignment(&event)
            && crash.swap(false, Ordering::Relaxed)
        {
            log(format!(
                "   [{airline}] took {} and went offline",
                a.subtask_id
            ));
            return Ok(true);
        }
        let served = worker::handle(sessions, event, |job| {
            let visa = job.input_of("visa").ok_or("no visa: no flight")?;
            let visa: serde_json::Value =
                serde_json::from_slice(visa).map_err(|e| e.to_string())?;
            let trip: serde_json::Value =
                serde_json::from_slice(&job.assignment.input).map_err(|e| e.to_string())?;
            let confirmation = format!("{}-{}", airline.to_uppercase(), 4711);
            log(format!(
                "   [{airline}] booked {} -> {} on visa {}: {confirmation}",
                trip["from"], trip["city"], visa["visa"]
            ));
            let output = serde_json::json!({ "flight": confirmation, "airline": airline });
            Ok(("application/json".into(), output.to_string().into()))
        })?;
        if let Served::Job(assignment, state) = served {
            log(format!(
                "   [{airline}] {}: {state:?}",
                assignment.subtask_id
            ));
        }
    }
    Ok(false)
}
