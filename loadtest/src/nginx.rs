//! nginx's stream proxy as the relay under load: L4 pass-through with no parsing, the ceiling
//! for a user-space relay. Each agent listens; nginx proxies a port per agent to it. A sender
//! connects through the proxy port of each agent it sends to, says who it is in four bytes,
//! then writes the same frames a gateway would carry (this project's framing, `AgentMessage`
//! bodies); replies come back on that connection. nginx is started here with one worker
//! (pinned like the gateway's shard when asked) and its CPU time read from `/proc`.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use agw_proto::{FrameDecoder, FrameEncoder, FrameLimits, Message, pb};
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::{
    cpu::{Affinity, process_tree_cpu},
    nats::await_listening,
    transport::{Agent, Error, Event, Inbox, Outbox, Relay, Side},
};

/// Debian's place for the dynamic stream module (built in elsewhere).
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// An nginx child process proxying a port per agent.
pub struct NginxRelay {
    binary: String,
    affinity: Affinity,
    dir: tempfile::TempDir,
    master: Option<Child>,
}

impl std::fmt::Debug for NginxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NginxRelay")
            .field("binary", &self.binary)
            .finish_non_exhaustive()
    }
}

impl Drop for NginxRelay {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker and exits (SIGKILL would orphan the worker,
        // still listening); SIGKILL only if it has not exited within two seconds.
        if let Some(mut m) = self.master.take() {
            let pid = nix::unistd::Pid::from_raw(m.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while matches!(m.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

impl NginxRelay {
    /// Prepares to run `binary` (started once the agents' ports are known).
    pub fn new(binary: &str, affinity: &Affinity) -> Result<NginxRelay, Error> {
        Ok(NginxRelay {
            binary: binary.to_owned(),
            affinity: affinity.clone(),
            dir: tempfile::tempdir()?,
            master: None,
        })
    }

    fn start(&mut self, routes: &[(u16, u16)]) -> Result<(), Error> {
        let dir = self.dir.path();
        let mut conf = String::new();
        if Path::new(STREAM_MODULE).exists() {
            conf.push_str(&format!("load_module {STREAM_MODULE};\n"));
        }
        conf.push_str(&format!(
            "worker_processes 1;\ndaemon off;\npid {0}/nginx.pid;\nerror_log {0}/error.log warn;\n\
             events {{ worker_connections 8192; }}\nstream {{\n",
            dir.display()
        ));
        for (proxy, backend) in routes {
            conf.push_str(&format!(
                "  server {{ listen 127.0.0.1:{proxy}; proxy_pass 127.0.0.1:{backend}; }}\n"
            ));
        }
        conf.push_str("}\n");
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let mut command = self.affinity.relay_command(&self.binary);
        command
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = command
            .spawn()
            .map_err(|e| format!("{}: {e} (install nginx)", self.binary))?;
        self.master = Some(child);
        for (proxy, _) in routes {
            if let Err(e) = await_listening(*proxy, "nginx") {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                return Err(format!("{e}: {}", log.trim()).into());
            }
        }
        Ok(())
    }
}

/// Connections to one agent through the proxy, and from others to it, shared by its outbox
/// (which writes) and the threads that read them (which feed its inbox).
#[derive(Default)]
struct Links {
    /// Agents that connected to this one, by their index: replies go back on them.
    from: HashMap<usize, TcpStream>,
}

impl Relay for NginxRelay {
    fn connect(&mut self, sides: &[Side]) -> Result<Vec<Agent>, Error> {
        let n = sides.len();
        let ids: Arc<Vec<String>> = Arc::new(
            (0..n)
                .map(|i| format!("spiffe://load.example/agent/agent-{i}"))
                .collect(),
        );
        let mut listeners = Vec::new();
        let mut routes = Vec::new();
        // The proxy ports are held until all are chosen, so no two are the same.
        let mut held = Vec::new();
        for _ in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let proxy = TcpListener::bind("127.0.0.1:0")?;
            routes.push((proxy.local_addr()?.port(), listener.local_addr()?.port()));
            listeners.push(listener);
            held.push(proxy);
        }
        drop(held);
        self.start(&routes)?;
        let proxies: Arc<Vec<u16>> = Arc::new(routes.iter().map(|(p, _)| *p).collect());
        let mut agents = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let links = Arc::new(Mutex::new(Links::default()));
            let (accept_tx, accept_links) = (tx.clone(), links.clone());
            std::thread::Builder::new()
                .name(format!("nginx-accept-{i}"))
                .spawn(move || accept(listener, accept_links, accept_tx))?;
            agents.push(Agent {
                outbox: Box::new(NginxOutbox {
                    me: i,
                    ids: ids.clone(),
                    proxies: proxies.clone(),
                    links,
                    to: HashMap::new(),
                    inbox: tx,
                    message_id: 0,
                }),
                inbox: Box::new(NginxInbox { rx }),
            });
        }
        Ok(agents)
    }

    fn cpu(&self) -> Option<Duration> {
        process_tree_cpu(self.master.as_ref()?.id())
    }
}

/// Takes connections made to an agent: each starts with the sender's index.
fn accept(listener: TcpListener, links: Arc<Mutex<Links>>, inbox: Sender<Event>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { return };
        let _ = stream.set_nodelay(true);
        let mut hello = [0u8; 4];
        if stream.read_exact(&mut hello).is_err() {
            continue;
        }
        let from = u32::from_be_bytes(hello) as usize;
        let Ok(writer) = stream.try_clone() else {
            continue;
        };
        if let Ok(mut l) = links.lock() {
            l.from.insert(from, writer);
        }
        let inbox = inbox.clone();
        let _ = std::thread::Builder::new()
            .name("nginx-read".into())
            .spawn(move || read_frames(stream, inbox));
    }
}

/// Reads frames from one connection into an agent's inbox until it closes.
fn read_frames(mut stream: TcpStream, inbox: Sender<Event>) {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.read_buf(n).extend_from_slice(&chunk[..n]);
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    let event = match frame.message() {
                        Ok(Message::AgentMessage(m)) => Event::Message(m.payload),
                        _ => Event::Other,
                    };
                    if inbox.send(event).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

struct Outgoing {
    stream: TcpStream,
    encoder: FrameEncoder,
}

struct NginxOutbox {
    me: usize,
    ids: Arc<Vec<String>>,
    proxies: Arc<Vec<u16>>,
    links: Arc<Mutex<Links>>,
    /// Connections this agent made, by destination.
    to: HashMap<usize, Outgoing>,
    inbox: Sender<Event>,
    message_id: u64,
}

impl NginxOutbox {
    fn outgoing(&mut self, to: usize) -> Result<&mut Outgoing, Error> {
        if !self.to.contains_key(&to) {
            // A reply to an agent that connected to this one goes back on its connection.
            let back = self
                .links
                .lock()
                .map_err(|_| "poisoned")?
                .from
                .get(&to)
                .map(TcpStream::try_clone)
                .transpose()?;
            let stream = match back {
                Some(s) => s,
                None => {
                    let port = *self.proxies.get(to).ok_or("no such agent")?;
                    let mut s = TcpStream::connect(("127.0.0.1", port))?;
                    s.set_nodelay(true)?;
                    s.write_all(&(self.me as u32).to_be_bytes())?;
                    let (reader, inbox) = (s.try_clone()?, self.inbox.clone());
                    std::thread::Builder::new()
                        .name("nginx-read".into())
                        .spawn(move || read_frames(reader, inbox))?;
                    s
                }
            };
            self.to.insert(
                to,
                Outgoing {
                    stream,
                    encoder: FrameEncoder::new(FrameLimits::default()),
                },
            );
        }
        self.to.get_mut(&to).ok_or_else(|| "no connection".into())
    }
}

impl Outbox for NginxOutbox {
    fn queue(&mut self, to: usize, payload: Bytes) -> Result<(), Error> {
        self.message_id += 1;
        let message = pb::AgentMessage {
            destination: self.ids.get(to).cloned().unwrap_or_default(),
            source: self.ids.get(self.me).cloned().unwrap_or_default(),
            message_id: self.message_id,
            payload,
            ..Default::default()
        };
        let out = self.outgoing(to)?;
        out.encoder.push_message(&message.into(), 64)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        for out in self.to.values_mut() {
            if !out.encoder.is_empty() {
                out.stream.write_all(&out.encoder.take())?;
            }
        }
        Ok(())
    }
}

struct NginxInbox {
    rx: Receiver<Event>,
}

impl Inbox for NginxInbox {
    fn recv(&mut self) -> Result<Event, Error> {
        match self.rx.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => Ok(e),
            Err(RecvTimeoutError::Timeout) => Ok(Event::Idle),
            Err(RecvTimeoutError::Disconnected) => Err("closed".into()),
        }
    }
}
