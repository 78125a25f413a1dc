//! nats-server as the relay under load, the peer the gateway is compared with: the same agents,
//! one subject per agent (`agent.<index>`), through the official client (async-nats). The
//! server is started here (pinned like the gateway's shard when asked) and its CPU time read
//! from `/proc`.

use std::{
    net::TcpStream,
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::runtime::{Handle, Runtime};

use crate::{
    cpu::{Affinity, process_tree_cpu},
    transport::{Agent, Error, Event, Inbox, Outbox, Relay, Side},
};

/// A nats-server child process and the client runtime.
pub struct NatsRelay {
    server: Child,
    url: String,
    runtime: Runtime,
}

impl std::fmt::Debug for NatsRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsRelay").field("url", &self.url).finish()
    }
}

impl Drop for NatsRelay {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A free loopback port (bound, then released for the child to take).
pub(crate) fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts on `port`.
pub(crate) fn await_listening(port: u16, what: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not listen on port {port}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl NatsRelay {
    /// Starts `binary` on a free port; `affinity` places it and the client threads.
    pub fn start(binary: &str, affinity: &Affinity) -> Result<NatsRelay, Error> {
        let port = free_port()?;
        let mut command = affinity.relay_command(binary);
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = command
            .spawn()
            .map_err(|e| format!("{binary}: {e} (install nats-server)"))?;
        await_listening(port, "nats-server")?;
        let runtime = affinity.client_runtime()?;
        Ok(NatsRelay {
            server,
            url: format!("nats://127.0.0.1:{port}"),
            runtime,
        })
    }

    /// Where it listens.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Relay for NatsRelay {
    fn connect(&mut self, sides: &[Side]) -> Result<Vec<Agent>, Error> {
        let subjects: Arc<Vec<String>> =
            Arc::new((0..sides.len()).map(|i| format!("agent.{i}")).collect());
        let handle = self.runtime.handle().clone();
        let mut agents = Vec::new();
        for subject in subjects.iter() {
            let (client, subscription) = handle.block_on(async {
                let client = async_nats::connect(&self.url).await?;
                let subscription = client.subscribe(subject.clone()).await?;
                client.flush().await?;
                Ok::<_, Error>((client, subscription))
            })?;
            agents.push(Agent {
                outbox: Box::new(NatsOutbox {
                    client: Some(client),
                    handle: handle.clone(),
                    subjects: subjects.clone(),
                    queued: Vec::new(),
                }),
                inbox: Box::new(NatsInbox {
                    subscription: Some(subscription),
                    handle: handle.clone(),
                    ready: std::collections::VecDeque::new(),
                }),
            });
        }
        Ok(agents)
    }

    fn cpu(&self) -> Option<Duration> {
        process_tree_cpu(self.server.id())
    }
}

/// The client's handles unsubscribe and disconnect by spawning onto its runtime when dropped:
/// they are dropped inside it (an agent may be dropped from any thread, after the run).
struct NatsOutbox {
    client: Option<async_nats::Client>,
    handle: Handle,
    subjects: Arc<Vec<String>>,
    /// Messages queued since the last flush: published together, so the client's runtime is
    /// entered once per batch, not per message.
    queued: Vec<(usize, Bytes)>,
}

impl Outbox for NatsOutbox {
    fn queue(&mut self, to: usize, payload: Bytes) -> Result<(), Error> {
        self.queued.push((to, payload));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        let batch = std::mem::take(&mut self.queued);
        let client = self.client.as_ref().ok_or("the client is gone")?;
        let subjects = &self.subjects;
        self.handle.block_on(async {
            for (to, payload) in batch {
                let subject = subjects.get(to).ok_or("no such agent")?;
                client.publish(subject.clone(), payload).await?;
            }
            client.flush().await?;
            Ok::<_, Error>(())
        })
    }
}

impl Drop for NatsOutbox {
    fn drop(&mut self) {
        let _inside = self.handle.enter();
        drop(self.client.take());
    }
}

struct NatsInbox {
    subscription: Option<async_nats::Subscriber>,
    handle: Handle,
    /// Messages taken with the last wait: the client's runtime is entered once per burst.
    ready: std::collections::VecDeque<Bytes>,
}

impl Inbox for NatsInbox {
    fn recv(&mut self) -> Result<Event, Error> {
        if let Some(payload) = self.ready.pop_front() {
            return Ok(Event::Message(payload));
        }
        let subscription = self
            .subscription
            .as_mut()
            .ok_or("the subscription is gone")?;
        let ready = &mut self.ready;
        let next = self.handle.block_on(async {
            let first = tokio::time::timeout(Duration::from_secs(1), subscription.next()).await;
            if let Ok(Some(_)) = &first {
                while ready.len() < 256 {
                    match subscription.next().now_or_never() {
                        Some(Some(m)) => ready.push_back(m.payload),
                        _ => break,
                    }
                }
            }
            first
        });
        match next {
            Ok(Some(message)) => Ok(Event::Message(message.payload)),
            Ok(None) => Err("the subscription ended".into()),
            Err(_) => Ok(Event::Idle),
        }
    }
}

impl Drop for NatsInbox {
    fn drop(&mut self) {
        let _inside = self.handle.enter();
        drop(self.subscription.take());
    }
}
