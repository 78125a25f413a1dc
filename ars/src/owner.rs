//! The registry owned by one thread and changed by commands.
//!
//! [`spawn`] moves a [`Registry`] onto its own thread (`agw-registry`). Whoever holds a
//! [`RegistryHandle`] changes it by sending a command, a closure run on that thread in the
//! order sent, and may wait for the command's answer. The owner takes the commands that are
//! waiting (up to [`MAX_BATCH`]), runs them, then:
//! 1. publishes the registry's [`View`] (an `ArcSwap`; the clone is cheap, see
//!    [`crate::index`]), so discovery and the control plane read it without a lock;
//! 2. answers the batch's commands: a registration's reply leaves after the snapshot that
//!    holds it, so an agent that registered finds itself;
//! 3. hands the batch's changes of local agents to `on_changes` (the control plane, which
//!    tells the peers), so nobody polls for them.
//!
//! Writes reach the store on the owner's thread; a slow disk delays writes, never discovery.

use std::{
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

use agw_proto::{Message, pb, pb::ErrorCode};
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};

use crate::{Change, Registry, RegistryError, limits::DiscoveryLimiter, view::View};

/// Commands run before the owner publishes a snapshot and answers them.
pub const MAX_BATCH: usize = 256;

/// An answer to send once the batch is published.
type Answer = Box<dyn FnOnce() + Send>;
/// A command: what to do on the owner's thread, and the answer it gives.
type Command = Box<dyn FnOnce(&mut Registry) -> Option<Answer> + Send>;

/// A registry on its own thread: send it commands, read its snapshot. Cheap to clone; the
/// thread ends when the last handle is dropped, or at [`RegistryHandle::stop`].
#[derive(Clone)]
pub struct RegistryHandle {
    commands: Sender<Command>,
    shared: Arc<Shared>,
}

struct Shared {
    /// The owner runs (false once its thread ended: every write is refused then).
    running: AtomicBool,
    view: ArcSwap<View>,
    /// Discoveries per requester: a lock held for one bucket's arithmetic, never for a query.
    limiter: Mutex<DiscoveryLimiter>,
    /// Asked to stop: the owner ends after its batch.
    stopping: AtomicBool,
    /// The owner's thread, joined by [`RegistryHandle::stop`].
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for RegistryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryHandle")
            .field("profiles", &self.view().len())
            .finish_non_exhaustive()
    }
}

/// Starts the owner of `registry`. `on_changes` hears every batch's changes of local agents
/// (registrations, updates, deregistrations, statuses), on the owner's thread.
pub fn spawn(
    mut registry: Registry,
    on_changes: impl Fn(Vec<Change>) + Send + 'static,
) -> io::Result<RegistryHandle> {
    let (commands, queue) = crossbeam_channel::unbounded::<Command>();
    let shared = Arc::new(Shared {
        running: AtomicBool::new(true),
        view: ArcSwap::from_pointee(registry.snapshot()),
        limiter: Mutex::new(DiscoveryLimiter::new(registry.discovery_per_minute())),
        stopping: AtomicBool::new(false),
        thread: Mutex::new(None),
    });
    let published = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("agw-registry".into())
        .spawn(move || {
            // Whatever ends the thread (its handles gone, a stop, a command that panicked)
            // says so; the registry, and its store, are closed before.
            let _stopped = Stopped(&published);
            own(&mut registry, &queue, &published, &on_changes);
            drop(registry);
        })?;
    if let Ok(mut t) = shared.thread.lock() {
        *t = Some(thread);
    }
    Ok(RegistryHandle { commands, shared })
}

/// Marks the owner stopped when dropped.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

fn own(
    registry: &mut Registry,
    queue: &Receiver<Command>,
    shared: &Shared,
    on_changes: &dyn Fn(Vec<Change>),
) {
    let mut answers: Vec<Answer> = Vec::new();
    while let Ok(first) = queue.recv() {
        answers.extend(first(registry));
        for command in queue.try_iter().take(MAX_BATCH - 1) {
            answers.extend(command(registry));
        }
        shared.view.store(Arc::new(registry.snapshot()));
        for answer in answers.drain(..) {
            answer();
        }
        let changes = registry.take_changes();
        if !changes.is_empty() {
            on_changes(changes);
        }
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
    }
}

fn stopped() -> RegistryError {
    RegistryError::new(ErrorCode::Internal, "the registry stopped")
}

impl RegistryHandle {
    /// Whether the owner still runs: `false` once it stopped (a command panicked), when
    /// writes get `INTERNAL` and only discovery from the last snapshot answers.
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Relaxed)
    }

    /// Stops the owner after the commands sent before, closes the registry's store and waits
    /// for it, whoever else holds a handle: later writes get `INTERNAL` ("the registry
    /// stopped"), discovery answers from the last snapshot. A gateway stopping calls it, so
    /// that its data directory can be opened again at once.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        // Wakes the owner if it waits for a command.
        let _ = self.commands.send(Box::new(|_: &mut Registry| None));
        let thread = self.shared.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }

    /// The registry as of its last batch of changes.
    pub fn view(&self) -> Arc<View> {
        self.shared.view.load_full()
    }

    /// Sends a change, without waiting for it. False if the registry stopped.
    pub fn change(&self, command: impl FnOnce(&mut Registry) + Send + 'static) -> bool {
        self.commands
            .send(Box::new(move |r: &mut Registry| {
                command(r);
                None
            }))
            .is_ok()
    }

    /// Runs `command` on the registry and waits for its answer, which comes once the
    /// snapshot holding its effect is published. Blocks: call it from a thread that may wait
    /// (a server's blocking pool, the control loop), never from an async task.
    pub fn ask<T: Send + 'static>(
        &self,
        command: impl FnOnce(&mut Registry) -> T + Send + 'static,
    ) -> Result<T, RegistryError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.commands
            .send(Box::new(move |r: &mut Registry| {
                let answer = command(r);
                Some(Box::new(move || {
                    let _ = tx.send(answer);
                }) as Answer)
            }))
            .map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())
    }

    /// Discovery (draft 3.2.3) from the snapshot, rate-limited per requester: it never waits
    /// for the owner.
    pub fn discover(
        &self,
        req: &pb::DiscoverRequest,
        requester: &str,
        now: SystemTime,
    ) -> Result<Vec<pb::AgentProfile>, RegistryError> {
        self.shared
            .limiter
            .lock()
            .map_err(|_| RegistryError::new(ErrorCode::Internal, "discovery limiter poisoned"))?
            .take(requester, now)?;
        self.view().discover(req)
    }

    /// Answers one registry request from `requester` (the identity its connection
    /// authenticated): discovery from the snapshot, on the caller's thread; registration,
    /// update and deregistration by the owner (the caller waits). Any other kind returns
    /// `None`.
    pub fn serve(&self, request: &Message, requester: &str, now: SystemTime) -> Option<Message> {
        if let Message::DiscoverRequest(req) = request {
            return Some(crate::service::discover_reply(
                req.request_id,
                self.discover(req, requester, now),
            ));
        }
        let (request, requester) = (request.clone(), requester.to_owned());
        self.ask(move |r| r.handle(&request, &requester, now))
            .unwrap_or_else(|e| Some(agw_rpc::notification(e.code, &e.detail)))
    }
}
