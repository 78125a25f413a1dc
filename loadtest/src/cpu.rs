//! CPU time of threads and processes, from `/proc` (Linux): each thread's time on a CPU in
//! nanoseconds (`schedstat`), so that light loads, where a relay runs milliseconds a second,
//! are measured as exactly as saturated ones (`stat`'s ticks are 10 ms).

use std::{fs, path::Path, time::Duration};

/// Time on a CPU of one thread (`/proc/.../task/<tid>`), in nanoseconds: `schedstat`'s first
/// field, or `stat`'s user + system ticks where the kernel keeps no schedstat.
fn task_ns(task: &Path) -> Option<u64> {
    if let Some(ns) = fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
    {
        return Some(ns);
    }
    let stat = fs::read_to_string(task.join("stat")).ok()?;
    // Fields after the parenthesised name: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000_000) // USER_HZ is 100 on every Linux ABI in use.
}

/// Time on a CPU of a process's live threads whose name starts with `prefix`, nanoseconds.
fn tasks_ns(process: &Path, prefix: &str) -> Option<u64> {
    let mut ns = 0;
    for entry in fs::read_dir(process.join("task")).ok()?.flatten() {
        let path = entry.path();
        let Ok(comm) = fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim_end().starts_with(prefix) {
            ns += task_ns(&path).unwrap_or(0);
        }
    }
    Some(ns)
}

/// CPU time used so far by this process's threads whose name starts with `prefix`; `None`
/// where `/proc` cannot be read.
pub fn threads_cpu(prefix: &str) -> Option<Duration> {
    tasks_ns(Path::new("/proc/self"), prefix).map(Duration::from_nanos)
}

/// CPU time used so far by process `pid` and its children (nginx's workers), all threads.
pub fn process_tree_cpu(pid: u32) -> Option<Duration> {
    let mut ns = tasks_ns(&Path::new("/proc").join(pid.to_string()), "")?;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let is_child = fs::read_to_string(path.join("stat"))
            .ok()
            .is_some_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            });
        if is_child {
            ns += tasks_ns(&path, "").unwrap_or(0);
        }
    }
    Some(Duration::from_nanos(ns))
}

/// Where the relay and the load run. Pinned (on a machine with at least two CPUs), the relay
/// takes CPU 0 (the gateway's shard `i` takes CPU `i`; a peer server is started under
/// `taskset -c 0`) and the load generator's threads the CPUs after the relay's, so every
/// relay measured gets the same cores and never shares them with its clients.
#[derive(Debug, Clone)]
pub struct Affinity {
    pinned: bool,
    cpus: usize,
    /// The first CPU of the load's: after the relay's, unless the relay takes them all.
    first_load: usize,
}

impl Affinity {
    /// Pinned or not (pinning needs two CPUs or more); the relay takes `relay_cores` CPUs
    /// from CPU 0, and the load the rest (all but CPU 0 when the relay would leave none).
    pub fn new(pin: bool, relay_cores: usize) -> Affinity {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Affinity {
            pinned: pin && cpus >= 2,
            cpus,
            first_load: if relay_cores.max(1) < cpus {
                relay_cores.max(1)
            } else {
                1
            },
        }
    }

    /// CPUs the load generator's threads may run on.
    pub fn load_cpus(&self) -> usize {
        if self.pinned {
            self.cpus - self.first_load
        } else {
            self.cpus
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
            // Counted as the load's CPU (`load-` threads), beside the relay's.
            .thread_name("load-client")
            .enable_all()
            .on_thread_start(move || clients.pin_client())
            .build()
    }

    /// Moves the calling thread to the load's CPUs.
    pub fn pin_client(&self) {
        if !self.pinned {
            return;
        }
        let mut set = nix::sched::CpuSet::new();
        for cpu in self.first_load..self.cpus {
            let _ = set.set(cpu);
        }
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}
