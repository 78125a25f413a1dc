//! The requester's side: [`run`] performs a [`TaskRun`]'s steps with an agent's sessions until
//! the task is over. Each assignment goes in a session of its own with the chosen agent (so
//! its updates, questions and the plan's context travel there, stored on both sides); a NACK
//! of the assignment or the agent's silence moves the subtask to the next agent discovery
//! found; every change is stored (`agw-agent task status` reads it) and shown to the caller.
//! Agents working on the task may ask its status ([`pb::TaskQuery`]) in their sessions; the
//! requester answers from the run.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use agw_proto::{
    identity::AgentId,
    pb::{self, ErrorCode, task_message::Kind},
};

use super::{Plan, Policy, Step, TASK_CONTENT_TYPE, TaskRun, decode, encode, terminal};
use crate::session::{Event, Outgoing, Received, SessionError, Sessions};

/// What the orchestrator shows its caller while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Happening {
    /// A subtask changed; the whole task as it stands comes with it.
    Changed(pb::SubtaskStatus, pb::TaskStatus),
    /// A message that is not about the task's progress: a question from an agent working on
    /// it (answer it with [`Sessions::reply`]), or anything else that arrived.
    Message(Received),
}

/// What the caller wants after a [`Happening`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Cancel this subtask (and what depends on it), or the whole task (`None`), for `reason`.
    Cancel(Option<String>, String),
}

/// Runs `plan` to its end with `sessions`' agent as the requester; `on` sees every change and
/// every other message as it happens (it may answer with the sessions it is handed, and
/// cancel). Returns the task's last status, which the store keeps too.
pub fn run(
    sessions: &mut Sessions,
    plan: Plan,
    policy: Policy,
    mut on: impl FnMut(&mut Sessions, Happening) -> Result<Flow, SessionError>,
) -> Result<pb::TaskStatus, SessionError> {
    let context = plan.context.clone();
    let mut run =
        TaskRun::new(plan, policy).map_err(|e| SessionError::Session(format!("the plan: {e}")))?;
    let mut driver = Driver {
        context,
        session_of: HashMap::new(),
        subtask_of: HashMap::new(),
    };
    let mut steps: VecDeque<Step> = run.start(Instant::now()).into();
    loop {
        while let Some(step) = steps.pop_front() {
            let more = driver.perform(sessions, &mut run, step, &mut on)?;
            steps.extend(more);
        }
        if run.is_finished() {
            let status = run.status();
            sessions.store().put_task(&status)?;
            return Ok(status);
        }
        let wait = run
            .next_deadline()
            .map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        let now_steps = match sessions.next(wait)? {
            Some(Event::Message(m)) => driver.message(sessions, &mut run, m, &mut on)?,
            // A gateway that is busy or a link coming up: the sessions send it again after a
            // backoff (the silence bounds how long). An agent offline, unknown or refused: the
            // subtask moves.
            Some(Event::Refused { nack, .. }) if !agent_specific(nack.reason()) => Vec::new(),
            Some(Event::Refused { session, nack, .. }) => match driver.subtask_of.get(&session) {
                Some((subtask, agent)) => {
                    let why = format!("{:?} {}", nack.reason(), nack.detail);
                    run.undeliverable(subtask, agent, &why, Instant::now())
                }
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        steps.extend(now_steps);
        steps.extend(run.tick(Instant::now()));
    }
}

/// Whether a NACK says something about the agent (offline, unknown, not allowed), rather
/// than about the gateways on the way (busy, draining, a link not up).
fn agent_specific(reason: ErrorCode) -> bool {
    !matches!(
        reason,
        ErrorCode::Overloaded
            | ErrorCode::RateLimited
            | ErrorCode::Unreachable
            | ErrorCode::Draining
            | ErrorCode::TranslationFailed
    )
}

fn flow_steps(run: &mut TaskRun, flow: Flow) -> Vec<Step> {
    match flow {
        Flow::Continue => Vec::new(),
        Flow::Cancel(subtask, reason) => run.cancel(subtask.as_deref(), &reason, Instant::now()),
    }
}

struct Driver {
    context: Option<(String, bytes::Bytes)>,
    /// subtask -> its current assignment's session.
    session_of: HashMap<String, u64>,
    /// session -> (subtask, agent).
    subtask_of: HashMap<u64, (String, String)>,
}

impl Driver {
    fn perform(
        &mut self,
        sessions: &mut Sessions,
        run: &mut TaskRun,
        step: Step,
        on: &mut impl FnMut(&mut Sessions, Happening) -> Result<Flow, SessionError>,
    ) -> Result<Vec<Step>, SessionError> {
        match step {
            Step::Discover {
                subtask,
                capability,
            } => {
                let me = sessions.agent().id().to_string();
                let found = sessions.agent().discover(pb::DiscoverRequest {
                    request_id: 1,
                    capabilities: vec![capability],
                    online_only: true,
                    ..Default::default()
                });
                // A registry that cannot answer finds no one: the subtask fails, saying so.
                let agents = found
                    .map(|profiles| {
                        profiles
                            .into_iter()
                            .map(|p| p.agent)
                            .filter(|a| *a != me)
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(run.found(&subtask, agents, Instant::now()))
            }
            Step::Assign { agent, assignment } => {
                let subtask = assignment.subtask_id.clone();
                if let Some(old) = self.session_of.remove(&subtask) {
                    self.subtask_of.remove(&old);
                    sessions.close(old)?;
                }
                let Ok(peer) = AgentId::parse(&agent) else {
                    return Ok(run.undeliverable(
                        &subtask,
                        &agent,
                        "not an agent ID",
                        Instant::now(),
                    ));
                };
                let label = format!("task {} {}", assignment.task_id, subtask);
                let session = sessions.start(&peer, &label)?;
                if let Some((content_type, context)) = &self.context {
                    sessions.set_context(session, content_type, context.clone())?;
                }
                self.session_of.insert(subtask.clone(), session);
                self.subtask_of.insert(session, (subtask, agent));
                sessions.send(
                    session,
                    Outgoing::new(TASK_CONTENT_TYPE, encode(Kind::Assign(assignment))),
                )?;
                Ok(Vec::new())
            }
            Step::Cancel { agent: _, cancel } => {
                if let Some(session) = self.session_of.remove(&cancel.subtask_id) {
                    self.subtask_of.remove(&session);
                    // Best effort: an agent that is gone does not hear it.
                    let _ = sessions.send(
                        session,
                        Outgoing::new(TASK_CONTENT_TYPE, encode(Kind::Cancel(cancel))),
                    );
                    sessions.close(session)?;
                }
                Ok(Vec::new())
            }
            Step::Changed(subtask) => {
                // A subtask given up: its assignment is never sent again.
                if terminal(subtask.state())
                    && subtask.state() != pb::TaskState::Completed
                    && let Some(session) = self.session_of.remove(&subtask.id)
                {
                    self.subtask_of.remove(&session);
                    sessions.close(session)?;
                }
                let status = run.status();
                sessions.store().put_task(&status)?;
                let flow = on(sessions, Happening::Changed(subtask, status))?;
                Ok(flow_steps(run, flow))
            }
            Step::Finished(_) => {
                // Nothing of the task is sent again; what its agents still send is stored.
                for (_, session) in self.session_of.drain() {
                    sessions.close(session)?;
                }
                self.subtask_of.clear();
                sessions.store().put_task(&run.status())?;
                Ok(Vec::new())
            }
        }
    }

    /// A message in one of the task's sessions: an update, a status query, or something for
    /// the caller.
    fn message(
        &mut self,
        sessions: &mut Sessions,
        run: &mut TaskRun,
        m: Received,
        on: &mut impl FnMut(&mut Sessions, Happening) -> Result<Flow, SessionError>,
    ) -> Result<Vec<Step>, SessionError> {
        let ours =
            m.session.and_then(|s| self.subtask_of.get(&s)).is_some() || run.involves(m.peer());
        match decode(m.content_type(), m.payload()).and_then(|t| t.kind) {
            Some(Kind::Update(update)) if ours => Ok(run.update(m.peer(), &update, Instant::now())),
            Some(Kind::Query(query)) => {
                let status = if query.task_id == run.task_id() && ours {
                    run.status()
                } else {
                    pb::TaskStatus {
                        task_id: query.task_id,
                        error: "no such task here for you".into(),
                        ..Default::default()
                    }
                };
                if m.session.is_some() {
                    sessions.reply(
                        &m,
                        Outgoing::new(TASK_CONTENT_TYPE, encode(Kind::Status(status))),
                    )?;
                }
                Ok(Vec::new())
            }
            _ => {
                let flow = on(sessions, Happening::Message(m))?;
                Ok(flow_steps(run, flow))
            }
        }
    }
}
