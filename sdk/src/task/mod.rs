//! Tasks (draft 2.4: task orchestration and management). A requester's [`Plan`] breaks a task
//! into subtasks, each needing a capability and depending on others; [`TaskRun`] decides, as a
//! sans-IO state machine on the caller's clock, which subtask to hand to which agent and what
//! to do when one fails it; [`orchestrator::run`] performs its steps with an agent's
//! [`Sessions`](crate::session::Sessions) (discovery at the registry, one session per
//! assignment); [`worker`] is the side of the agents that do the work.
//!
//! States are the draft's (pending, in progress, completed, failed), with A2A's others
//! (input required, canceled, rejected): [`pb::TaskState`]. On the wire, a [`pb::TaskMessage`]
//! is the payload of media type [`TASK_CONTENT_TYPE`].

pub mod fuzzing;
pub mod orchestrator;
pub mod worker;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use agw_proto::pb::{self, TaskState};
use bytes::Bytes;
use prost::Message as _;

/// The media type of a [`pb::TaskMessage`] payload.
pub const TASK_CONTENT_TYPE: &str = "application/vnd.agw.task+protobuf";

/// The largest task message decoded (a frame's payload is bounded anyway; this bounds what an
/// agent accepts as one).
pub const MAX_TASK_MESSAGE: usize = 256 * 1024;

/// `payload` as a task message, if it is one.
pub fn decode(content_type: &str, payload: &[u8]) -> Option<pb::TaskMessage> {
    if content_type != TASK_CONTENT_TYPE || payload.len() > MAX_TASK_MESSAGE {
        return None;
    }
    pb::TaskMessage::decode(payload).ok()
}

/// `kind` encoded as a task message payload.
pub fn encode(kind: pb::task_message::Kind) -> Bytes {
    Bytes::from(pb::TaskMessage { kind: Some(kind) }.encode_to_vec())
}

/// The A2A task state a draft state maps to (A2A 1.0 spells them `TASK_STATE_*` too).
pub fn a2a_state(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified | TaskState::Pending => "submitted",
        TaskState::InProgress => "working",
        TaskState::InputRequired => "input-required",
        TaskState::Completed => "completed",
        TaskState::Failed => "failed",
        TaskState::Canceled => "canceled",
        TaskState::Rejected => "rejected",
    }
}

/// Whether a subtask in `state` is over.
pub fn terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Completed | TaskState::Failed | TaskState::Canceled | TaskState::Rejected
    )
}

/// A task broken into subtasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub task_id: String,
    pub subtasks: Vec<Subtask>,
    /// Context every assignment's session carries (the trip, say), with its media type.
    pub context: Option<(String, Bytes)>,
}

/// One subtask of a plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subtask {
    pub id: String,
    /// What an agent must offer to be given it (a capability of its profile).
    pub capability: String,
    pub content_type: String,
    pub input: Bytes,
    /// Subtasks that must complete first; their outputs come with the assignment.
    pub depends_on: Vec<String>,
}

impl Subtask {
    /// Subtask `id` for an agent that offers `capability`, with a JSON `input`.
    pub fn new(id: &str, capability: &str, input: &str) -> Subtask {
        Subtask {
            id: id.to_owned(),
            capability: capability.to_owned(),
            content_type: "application/json".to_owned(),
            input: Bytes::copy_from_slice(input.as_bytes()),
            depends_on: Vec::new(),
        }
    }

    /// Runs once `ids` have completed.
    pub fn after(mut self, ids: &[&str]) -> Subtask {
        self.depends_on = ids.iter().map(|s| (*s).to_owned()).collect();
        self
    }
}

/// How the orchestrator treats agents that do not finish a subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Silence from an assigned agent for this long moves the subtask to another.
    pub silence: Duration,
    /// Agents a subtask is assigned to at most, in all.
    pub max_attempts: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            silence: Duration::from_secs(30),
            max_attempts: 3,
        }
    }
}

/// Why a plan cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("a plan without subtasks")]
    Empty,
    #[error("a subtask or task without an ID")]
    NoId,
    #[error("subtask {0} twice")]
    Duplicate(String),
    #[error("subtask {subtask} depends on {missing}, which is not in the plan")]
    UnknownDependency { subtask: String, missing: String },
    #[error("the dependencies of {0} go round in a circle")]
    Cycle(String),
}

/// What the caller of [`TaskRun`] must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Find agents offering `capability` (online first) and tell [`TaskRun::found`].
    Discover { subtask: String, capability: String },
    /// Send `assignment` to `agent`; tell [`TaskRun::undeliverable`] if it cannot arrive.
    Assign {
        agent: String,
        assignment: pb::Assignment,
    },
    /// Tell `agent` to stop its work on the subtask.
    Cancel {
        agent: String,
        cancel: pb::TaskCancel,
    },
    /// A subtask changed (to record, to show).
    Changed(pb::SubtaskStatus),
    /// The task is over, in this state.
    Finished(TaskState),
}

#[derive(Debug)]
struct Sub {
    plan: Subtask,
    status: pb::SubtaskStatus,
    candidates: VecDeque<String>,
    asked: bool,
    deadline: Option<Instant>,
}

impl Sub {
    fn state(&self) -> TaskState {
        self.status.state()
    }
}

/// One task's run: which subtask goes to whom, and what happens when an agent fails one.
#[derive(Debug)]
pub struct TaskRun {
    task_id: String,
    policy: Policy,
    subs: Vec<Sub>,
    index: HashMap<String, usize>,
    finished: Option<TaskState>,
}

impl TaskRun {
    /// A run of `plan`, checked: IDs unique, dependencies in the plan and not circular.
    pub fn new(plan: Plan, policy: Policy) -> Result<TaskRun, PlanError> {
        if plan.subtasks.is_empty() {
            return Err(PlanError::Empty);
        }
        if plan.task_id.is_empty() || plan.subtasks.iter().any(|s| s.id.is_empty()) {
            return Err(PlanError::NoId);
        }
        let mut index = HashMap::new();
        for (i, s) in plan.subtasks.iter().enumerate() {
            if index.insert(s.id.clone(), i).is_some() {
                return Err(PlanError::Duplicate(s.id.clone()));
            }
        }
        for s in &plan.subtasks {
            if let Some(missing) = s.depends_on.iter().find(|d| !index.contains_key(*d)) {
                return Err(PlanError::UnknownDependency {
                    subtask: s.id.clone(),
                    missing: missing.clone(),
                });
            }
        }
        // Kahn: whatever is never freed is in a circle.
        let mut waiting: Vec<usize> = plan.subtasks.iter().map(|s| s.depends_on.len()).collect();
        let mut free: Vec<usize> = (0..waiting.len()).filter(|&i| waiting[i] == 0).collect();
        let mut done = 0;
        while let Some(i) = free.pop() {
            done += 1;
            for (j, s) in plan.subtasks.iter().enumerate() {
                if s.depends_on.contains(&plan.subtasks[i].id) {
                    waiting[j] -= 1;
                    if waiting[j] == 0 {
                        free.push(j);
                    }
                }
            }
        }
        if done < plan.subtasks.len() {
            let stuck = waiting.iter().position(|&w| w > 0).unwrap_or(0);
            return Err(PlanError::Cycle(plan.subtasks[stuck].id.clone()));
        }
        let subs = plan
            .subtasks
            .into_iter()
            .map(|plan| Sub {
                status: pb::SubtaskStatus {
                    id: plan.id.clone(),
                    capability: plan.capability.clone(),
                    depends_on: plan.depends_on.clone(),
                    state: TaskState::Pending as i32,
                    ..Default::default()
                },
                plan,
                candidates: VecDeque::new(),
                asked: false,
                deadline: None,
            })
            .collect();
        Ok(TaskRun {
            task_id: plan.task_id,
            policy,
            subs,
            index,
            finished: None,
        })
    }

    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Starts the subtasks that depend on nothing.
    pub fn start(&mut self, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        self.schedule(now, &mut steps);
        steps
    }

    /// The agents that offer subtask `id`'s capability, best first.
    pub fn found(&mut self, id: &str, agents: Vec<String>, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        if let Some(&i) = self.index.get(id)
            && self.subs[i].state() == TaskState::Pending
            && self.subs[i].status.agent.is_empty()
        {
            let sub = &mut self.subs[i];
            sub.candidates = agents
                .into_iter()
                .filter(|a| !sub.status.tried.contains(a))
                .collect();
            if sub.candidates.is_empty() {
                let why = format!("no agent offers {}", sub.plan.capability);
                self.fail(i, why, TaskState::Failed, now, &mut steps);
            } else {
                self.assign_next(i, now, &mut steps);
            }
        }
        self.finish(&mut steps);
        steps
    }

    /// `agent` reports on a subtask; reports from anyone but the subtask's agent now, or on a
    /// subtask that is over, are ignored.
    pub fn update(&mut self, agent: &str, update: &pb::TaskUpdate, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        let Some(&i) = self.index.get(&update.subtask_id) else {
            return steps;
        };
        if update.task_id != self.task_id
            || self.subs[i].status.agent != agent
            || terminal(self.subs[i].state())
        {
            return steps;
        }
        match update.state() {
            state @ (TaskState::InProgress | TaskState::InputRequired) => {
                let sub = &mut self.subs[i];
                sub.status.state = state as i32;
                // Why it moved here is history now (`tried` keeps who had it).
                sub.status.error.clear();
                sub.deadline = Some(now + self.policy.silence);
                steps.push(Step::Changed(sub.status.clone()));
            }
            TaskState::Completed => {
                let sub = &mut self.subs[i];
                sub.status.state = TaskState::Completed as i32;
                sub.status.content_type.clone_from(&update.content_type);
                sub.status.output = update.output.clone();
                sub.status.error.clear();
                sub.deadline = None;
                steps.push(Step::Changed(sub.status.clone()));
                self.schedule(now, &mut steps);
            }
            // The agent will not do it: another may.
            TaskState::Rejected => {
                self.subs[i].status.error = format!("{agent} rejected it: {}", update.error);
                self.assign_next(i, now, &mut steps);
            }
            // It was done and it failed (a visa refused): the subtask fails.
            TaskState::Failed | TaskState::Canceled => {
                let why = format!("{agent}: {}", update.error);
                self.fail(i, why, TaskState::Failed, now, &mut steps);
            }
            TaskState::Pending | TaskState::Unspecified => {}
        }
        self.finish(&mut steps);
        steps
    }

    /// The assignment of subtask `id` to `agent` cannot arrive (a NACK: offline, no route):
    /// the subtask moves to the next agent.
    pub fn undeliverable(&mut self, id: &str, agent: &str, why: &str, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        if let Some(&i) = self.index.get(id)
            && self.subs[i].status.agent == agent
            && !terminal(self.subs[i].state())
        {
            self.subs[i].status.error = format!("{agent}: {why}");
            self.assign_next(i, now, &mut steps);
        }
        self.finish(&mut steps);
        steps
    }

    /// Moves the subtasks whose agents have been silent too long.
    pub fn tick(&mut self, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        for i in 0..self.subs.len() {
            let sub = &mut self.subs[i];
            if sub.deadline.is_some_and(|d| d <= now) && !terminal(sub.state()) {
                let agent = sub.status.agent.clone();
                sub.status.error =
                    format!("{agent}: no word in {} ms", self.policy.silence.as_millis());
                steps.push(Step::Cancel {
                    agent,
                    cancel: pb::TaskCancel {
                        task_id: self.task_id.clone(),
                        subtask_id: sub.status.id.clone(),
                        reason: "moved to another agent: no word in time".into(),
                    },
                });
                self.assign_next(i, now, &mut steps);
            }
        }
        self.finish(&mut steps);
        steps
    }

    /// Cancels subtask `id` and what depends on it, or (`None`) the whole task.
    pub fn cancel(&mut self, id: Option<&str>, reason: &str, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        match id {
            Some(id) => {
                if let Some(&i) = self.index.get(id) {
                    self.fail(i, reason.to_owned(), TaskState::Canceled, now, &mut steps);
                }
            }
            None => {
                for i in 0..self.subs.len() {
                    self.end(i, reason.to_owned(), TaskState::Canceled, &mut steps);
                }
            }
        }
        self.finish(&mut steps);
        steps
    }

    /// When [`TaskRun::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.subs.iter().filter_map(|s| s.deadline).min()
    }

    /// The subtask an agent works on now, if `id` is one of this run's.
    pub fn agent_of(&self, id: &str) -> Option<&str> {
        self.index
            .get(id)
            .map(|&i| self.subs[i].status.agent.as_str())
            .filter(|a| !a.is_empty())
    }

    /// Whether `agent` has been given any subtask of this task (it may query its status).
    pub fn involves(&self, agent: &str) -> bool {
        self.subs
            .iter()
            .any(|s| s.status.tried.iter().any(|t| t == agent))
    }

    /// The task's state now.
    pub fn state(&self) -> TaskState {
        if let Some(state) = self.finished {
            return state;
        }
        if self
            .subs
            .iter()
            .any(|s| s.state() != TaskState::Pending || !s.status.agent.is_empty())
        {
            TaskState::InProgress
        } else {
            TaskState::Pending
        }
    }

    /// The whole task as it stands.
    pub fn status(&self) -> pb::TaskStatus {
        pb::TaskStatus {
            task_id: self.task_id.clone(),
            state: self.state() as i32,
            subtasks: self.subs.iter().map(|s| s.status.clone()).collect(),
            error: String::new(),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// Asks for agents for each pending subtask whose dependencies completed.
    fn schedule(&mut self, _now: Instant, steps: &mut Vec<Step>) {
        let completed: HashSet<String> = self
            .subs
            .iter()
            .filter(|s| s.state() == TaskState::Completed)
            .map(|s| s.status.id.clone())
            .collect();
        for sub in &mut self.subs {
            if sub.state() == TaskState::Pending
                && !sub.asked
                && sub.plan.depends_on.iter().all(|d| completed.contains(d))
            {
                sub.asked = true;
                steps.push(Step::Discover {
                    subtask: sub.status.id.clone(),
                    capability: sub.plan.capability.clone(),
                });
            }
        }
    }

    /// Gives subtask `i` to its next candidate, or fails it when none is left.
    fn assign_next(&mut self, i: usize, now: Instant, steps: &mut Vec<Step>) {
        let attempts = u32::try_from(self.subs[i].status.tried.len()).unwrap_or(u32::MAX);
        let next = if attempts >= self.policy.max_attempts {
            None
        } else {
            self.subs[i].candidates.pop_front()
        };
        let Some(agent) = next else {
            let sub = &self.subs[i];
            let why = format!(
                "no capable agent left (tried {}){}",
                sub.status.tried.join(", "),
                if sub.status.error.is_empty() {
                    String::new()
                } else {
                    format!("; last: {}", sub.status.error)
                }
            );
            self.fail(i, why, TaskState::Failed, now, steps);
            return;
        };
        let inputs = self.subs[i]
            .plan
            .depends_on
            .iter()
            .filter_map(|d| self.index.get(d))
            .map(|&d| pb::SubtaskOutput {
                subtask_id: self.subs[d].status.id.clone(),
                content_type: self.subs[d].status.content_type.clone(),
                output: self.subs[d].status.output.clone(),
            })
            .collect();
        let sub = &mut self.subs[i];
        sub.status.agent.clone_from(&agent);
        sub.status.tried.push(agent.clone());
        sub.status.state = TaskState::Pending as i32;
        sub.deadline = Some(now + self.policy.silence);
        steps.push(Step::Assign {
            agent,
            assignment: pb::Assignment {
                task_id: self.task_id.clone(),
                subtask_id: sub.status.id.clone(),
                capability: sub.plan.capability.clone(),
                content_type: sub.plan.content_type.clone(),
                input: sub.plan.input.clone(),
                inputs,
            },
        });
        steps.push(Step::Changed(sub.status.clone()));
    }

    /// Ends subtask `i` in `state` and cancels everything that depends on it.
    fn fail(
        &mut self,
        i: usize,
        why: String,
        state: TaskState,
        _now: Instant,
        steps: &mut Vec<Step>,
    ) {
        self.end(i, why, state, steps);
        let mut gone = vec![self.subs[i].status.id.clone()];
        while let Some(id) = gone.pop() {
            for j in 0..self.subs.len() {
                if self.subs[j].plan.depends_on.contains(&id) && !terminal(self.subs[j].state()) {
                    self.end(
                        j,
                        format!("depends on {id}, which did not complete"),
                        TaskState::Canceled,
                        steps,
                    );
                    gone.push(self.subs[j].status.id.clone());
                }
            }
        }
    }

    /// Ends subtask `i` in `state`, telling its agent to stop if one works on it.
    fn end(&mut self, i: usize, why: String, state: TaskState, steps: &mut Vec<Step>) {
        let task_id = self.task_id.clone();
        let sub = &mut self.subs[i];
        if terminal(sub.state()) {
            return;
        }
        if !sub.status.agent.is_empty() && state == TaskState::Canceled {
            steps.push(Step::Cancel {
                agent: sub.status.agent.clone(),
                cancel: pb::TaskCancel {
                    task_id,
                    subtask_id: sub.status.id.clone(),
                    reason: why.clone(),
                },
            });
        }
        sub.status.state = state as i32;
        sub.status.error = why;
        sub.deadline = None;
        sub.candidates.clear();
        steps.push(Step::Changed(sub.status.clone()));
    }

    /// Ends the task when every subtask is over.
    fn finish(&mut self, steps: &mut Vec<Step>) {
        if self.finished.is_some() || !self.subs.iter().all(|s| terminal(s.state())) {
            return;
        }
        let state = if self.subs.iter().all(|s| s.state() == TaskState::Completed) {
            TaskState::Completed
        } else if self
            .subs
            .iter()
            .any(|s| matches!(s.state(), TaskState::Failed | TaskState::Rejected))
        {
            TaskState::Failed
        } else {
            TaskState::Canceled
        };
        self.finished = Some(state);
        steps.push(Step::Finished(state));
    }
}

#[cfg(test)]
mod tests;
