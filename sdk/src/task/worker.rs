//! The side of the agents that do subtasks: [`serve`] waits for an assignment, tells the
//! requester it is in progress, hands it to the agent's code as a [`Job`] and reports the
//! outcome (completed with its output, or failed with why). A [`Job`] can ask the requester a
//! question in the assignment's session and wait for the answer, read the context the
//! requester attached, and ask the task's status.

use std::time::Duration;

use agw_proto::pb::{self, TaskState, task_message::Kind};
use bytes::Bytes;

use super::{TASK_CONTENT_TYPE, decode, encode};
use crate::session::{Event, Outgoing, Received, SessionError, Sessions};

/// A subtask an agent was given.
#[derive(Debug)]
pub struct Job<'a> {
    sessions: &'a mut Sessions,
    received: Received,
    pub assignment: pb::Assignment,
}

/// What a job's code returns: its output (media type and bytes), or why it failed.
pub type Outcome = Result<(String, Bytes), String>;

impl Job<'_> {
    /// The requester's context of this subtask's session, as its latest message carried it.
    pub fn context(&self) -> Result<Bytes, SessionError> {
        let session = self.session()?;
        Ok(self.sessions.session(session)?.peer_context)
    }

    /// The output of subtask `id` this one depended on, if it came with the assignment.
    pub fn input_of(&self, id: &str) -> Option<&Bytes> {
        self.assignment
            .inputs
            .iter()
            .find(|i| i.subtask_id == id)
            .map(|i| &i.output)
    }

    /// Asks the requester `question` and waits up to `within` for its answer; the subtask
    /// is input-required meanwhile.
    pub fn ask(&mut self, question: Outgoing, within: Duration) -> Result<Received, SessionError> {
        self.report(
            TaskState::InputRequired,
            Outcome::Ok((String::new(), Bytes::new())),
        )?;
        let session = self.session()?;
        let answer = self.sessions.request(session, question, within)?;
        self.report(
            TaskState::InProgress,
            Outcome::Ok((String::new(), Bytes::new())),
        )?;
        Ok(answer)
    }

    /// The whole task's status, as the requester knows it.
    pub fn task_status(&mut self, within: Duration) -> Result<pb::TaskStatus, SessionError> {
        let session = self.session()?;
        let query = Kind::Query(pb::TaskQuery {
            task_id: self.assignment.task_id.clone(),
        });
        let answer = self.sessions.request(
            session,
            Outgoing::new(TASK_CONTENT_TYPE, encode(query)),
            within,
        )?;
        match decode(answer.content_type(), answer.payload()).and_then(|t| t.kind) {
            Some(Kind::Status(status)) => Ok(status),
            _ => Err(SessionError::Session(
                "an answer that is not a task status".into(),
            )),
        }
    }

    /// The agent's sessions (to talk to others while working).
    pub fn sessions(&mut self) -> &mut Sessions {
        self.sessions
    }

    fn session(&self) -> Result<u64, SessionError> {
        self.received
            .session
            .ok_or_else(|| SessionError::Session("an assignment outside a session".into()))
    }

    fn report(&mut self, state: TaskState, outcome: Outcome) -> Result<(), SessionError> {
        let (content_type, output, error) = match outcome {
            Ok((content_type, output)) => (content_type, output, String::new()),
            Err(error) => (String::new(), Bytes::new(), error),
        };
        let update = Kind::Update(pb::TaskUpdate {
            task_id: self.assignment.task_id.clone(),
            subtask_id: self.assignment.subtask_id.clone(),
            state: state as i32,
            content_type,
            output,
            error,
        });
        self.sessions.reply(
            &self.received,
            Outgoing::new(TASK_CONTENT_TYPE, encode(update)),
        )?;
        Ok(())
    }
}

/// What one call of [`serve`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Served {
    /// Nothing arrived in time.
    Idle,
    /// A subtask was done, ending in this state.
    Job(pb::Assignment, TaskState),
    /// The requester cancelled a subtask (this agent no longer works on it).
    Cancelled(pb::TaskCancel),
    /// Something that is not an assignment arrived.
    Other(Event),
}

/// Waits up to `within` for the next event and [`handle`]s it.
pub fn serve(
    sessions: &mut Sessions,
    within: Duration,
    work: impl FnOnce(&mut Job<'_>) -> Outcome,
) -> Result<Served, SessionError> {
    match sessions.next(within)? {
        Some(event) => handle(sessions, event, work),
        None => Ok(Served::Idle),
    }
}

/// The assignment `event` carries, if it is one.
pub fn assignment(event: &Event) -> Option<pb::Assignment> {
    match event {
        Event::Message(m) if m.session.is_some() => {
            match decode(m.content_type(), m.payload()).and_then(|t| t.kind) {
                Some(Kind::Assign(a)) => Some(a),
                _ => None,
            }
        }
        _ => None,
    }
}

/// An assignment is reported in progress, done by `work`, and reported completed or failed;
/// anything else is returned as it is.
pub fn handle(
    sessions: &mut Sessions,
    event: Event,
    work: impl FnOnce(&mut Job<'_>) -> Outcome,
) -> Result<Served, SessionError> {
    let Event::Message(received) = event else {
        return Ok(Served::Other(event));
    };
    match decode(received.content_type(), received.payload()).and_then(|t| t.kind) {
        Some(Kind::Assign(assignment)) if received.session.is_some() => {
            let mut job = Job {
                sessions,
                received,
                assignment,
            };
            job.report(TaskState::InProgress, Ok((String::new(), Bytes::new())))?;
            let outcome = work(&mut job);
            let state = if outcome.is_ok() {
                TaskState::Completed
            } else {
                TaskState::Failed
            };
            job.report(state, outcome)?;
            Ok(Served::Job(job.assignment, state))
        }
        Some(Kind::Cancel(cancel)) => Ok(Served::Cancelled(cancel)),
        _ => Ok(Served::Other(Event::Message(received))),
    }
}
