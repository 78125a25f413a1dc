//! The traveller agent: plans a trip (visa first, then flight and hotel in parallel) and
//! answers the agents' questions while the task runs.

use std::time::{Duration, SystemTime};

use agw_proto::pb;
use agw_sdk::{
    session::{Outgoing, SessionError, Sessions},
    task::{
        Plan, Policy, Subtask, a2a_state,
        orchestrator::{self, Flow, Happening},
    },
};

/// Plans the trip and runs it to its end; `log` sees the progress as it happens.
pub fn plan_trip(
    sessions: &mut Sessions,
    silence: Duration,
    log: &(dyn Fn(String) + Sync),
) -> Result<pb::TaskStatus, SessionError> {
    let trip = serde_json::json!({
        "traveller": sessions.agent().id().as_str(),
        "from": "Paris", "city": "Lisbon", "country": "PT", "nights": 3,
    })
    .to_string();
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let plan = Plan {
        task_id: format!("trip-{}", started.as_millis()),
        subtasks: vec![
            Subtask::new("visa", "visa", &trip),
            Subtask::new("flight", "book-flight", &trip).after(&["visa"]),
            Subtask::new("hotel", "book-hotel", &trip).after(&["visa"]),
        ],
        context: Some(("application/json".into(), trip.into())),
    };
    log(format!(
        "   task {}: visa, then flight and hotel",
        plan.task_id
    ));
    let policy = Policy {
        silence,
        max_attempts: 3,
    };
    orchestrator::run(
        sessions,
        plan,
        policy,
        |sessions, happening| match happening {
            Happening::Changed(s, _) => {
                let what = match (s.output.is_empty(), s.error.is_empty()) {
                    (false, _) => String::from_utf8_lossy(&s.output).into_owned(),
                    (true, true) => s.agent.clone(),
                    (true, false) => format!("{} ({})", s.agent, s.error),
                };
                log(format!(
                    "   {:<6} {:<14} {what}",
                    s.id,
                    a2a_state(s.state())
                ));
                Ok(Flow::Continue)
            }
            Happening::Message(question) => {
                let text = String::from_utf8_lossy(question.payload()).into_owned();
                log(format!("   {} asks {text:?}", question.peer()));
                sessions
                    .reply(&question, Outgoing::text("twin, please"))
                    .map(|_| Flow::Continue)
            }
        },
    )
}
