//! CPU time of this process's threads, from `/proc/self/task/*/stat` (Linux).

use std::{fs, time::Duration};

/// CPU time (user + system) used so far by this process's threads whose name starts with
/// `prefix`; `None` where `/proc` cannot be read.
pub fn threads_cpu(prefix: &str) -> Option<Duration> {
    let ticks_per_second = 100.0; // USER_HZ, 100 on every Linux ABI in use.
    let mut ticks: u64 = 0;
    for entry in fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path();
        let Ok(comm) = fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        ticks += utime + stime;
    }
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second))
}

/// CPU time (user + system) used so far by the process with this name (its `comm`), found in
/// `/proc`: the relay peer (nats-server, nginx) measured the same way as the gateway.
pub fn process_cpu(name: &str) -> Option<Duration> {
    let mut ticks: u64 = 0;
    let mut found = false;
    for entry in fs::read_dir("/proc").ok()? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let Ok(comm) = fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        found = true;
    }
    found.then(|| Duration::from_secs_f64(ticks as f64 / 100.0))
}

/// (parent pid, user + system ticks) of a process, from `/proc/<pid>/stat`.
fn stat_of(pid: &str) -> Option<(u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks))
}

/// CPU time (user + system) used so far by process `pid` and its children (nginx's workers).
pub fn process_tree_cpu(pid: u32) -> Option<Duration> {
    let (_, mut ticks) = stat_of(&pid.to_string())?;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(name) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some((ppid, t)) = stat_of(name)
            && ppid == pid
        {
            ticks += t;
        }
    }
    Some(Duration::from_secs_f64(ticks as f64 / 100.0))
}

/// Where the relay and the load run. Pinned (on a machine with at least two CPUs), the relay
/// takes CPU 0 (the gateway's shard `i` takes CPU `i`; a peer server is started under
/// `taskset -c 0`) and the load generator's threads the other CPUs, so every relay measured
/// gets the same one core and never shares it with its clients.
#[derive(Debug, Clone)]
pub struct Affinity {
    pinned: bool,
    cpus: usize,
}

impl Affinity {
    /// Pinned or not; pinning needs two CPUs or more.
    pub fn new(pin: bool) -> Affinity {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Affinity {
            pinned: pin && cpus >= 2,
            cpus,
        }
    }

    /// Whether the relay and the load are pinned.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// A command starting `binary` where the relay runs.
    pub fn relay_command(&self, binary: &str) -> std::process::Command {
        if self.pinned {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", "0", binary]);
            c
        } else {
            std::process::Command::new(binary)
        }
    }

    /// A runtime for the load's async clients (two threads, on the load's CPUs).
    pub fn client_runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let clients = self.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || clients.pin_client())
            .build()
    }

    /// Moves the calling thread to the load's CPUs (all but CPU 0).
    pub fn pin_client(&self) {
        if !self.pinned {
            return;
        }
        let mut set = nix::sched::CpuSet::new();
        for cpu in 1..self.cpus {
            let _ = set.set(cpu);
        }
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}
