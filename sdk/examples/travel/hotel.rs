//! The hotel agent: books a room for the trip in its session's context, after asking the
//! traveller a follow-up question in the same session (and checking how the task stands).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use agw_proto::pb::{self, TaskState};
use agw_sdk::{
    session::{Outgoing, SessionError, Sessions},
    task::worker::{self, Served},
};

/// What the hotel agent registers: it offers `book-hotel`.
pub fn profile() -> pb::AgentProfile {
    pb::AgentProfile {
        description: "Books hotel rooms".into(),
        capabilities: vec!["book-hotel".into()],
        protocols: vec![pb::Protocol::Native as i32],
        ..Default::default()
    }
}

/// Serves room bookings until `stop`.
pub fn serve(
    sessions: &mut Sessions,
    stop: &AtomicBool,
    log: &(dyn Fn(String) + Sync),
) -> Result<(), SessionError> {
    while !stop.load(Ordering::Relaxed) {
        let served = worker::serve(sessions, Duration::from_millis(200), |job| {
            // The trip is the session's context: nothing to ask again.
            let context = job.context().map_err(|e| e.to_string())?;
            let trip: serde_json::Value =
                serde_json::from_slice(&context).map_err(|e| e.to_string())?;
            let status = job
                .task_status(Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let visa = status.subtasks.iter().find(|s| s.id == "visa");
            if visa.is_none_or(|v| v.state() != TaskState::Completed) {
                return Err("no visa yet".into());
            }
            log(format!(
                "   [hotel] {} nights in {}; asking about beds",
                trip["nights"], trip["city"]
            ));
            let question = Outgoing::text("Double or twin beds?");
            let answer = job
                .ask(question, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            let beds = String::from_utf8_lossy(answer.payload()).into_owned();
            log(format!("   [hotel] the traveller answered {beds:?}"));
            let output = serde_json::json!({ "hotel": "Lisboa Centro", "room": 412, "beds": beds });
            Ok(("application/json".into(), output.to_string().into()))
        })?;
        if let Served::Job(assignment, state) = served {
            log(format!("   [hotel] {}: {state:?}", assignment.subtask_id));
        }
    }
    Ok(())
}
