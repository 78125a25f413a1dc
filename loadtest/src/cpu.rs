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
