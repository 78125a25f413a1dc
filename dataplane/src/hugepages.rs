//! Huge pages for the routing table. A lookup at 1M routes reads a slot on a different 4 KiB
//! page each time, so with small pages nearly every lookup also walks the page tables (on a VM,
//! a nested walk); backed by 2 MiB pages the table fits the TLB (docs/benchmarks.md: 1M-route
//! lookups 131 ns -> 78 ns with the batch prefetch). glibc takes huge pages for its heap only
//! through a tunable read when a process starts, so a program that wants them re-executes
//! itself once with the tunable set.

use std::{ffi::OsString, os::unix::process::CommandExt};

/// The glibc tunable that backs the malloc heap with transparent huge pages.
pub const TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// Set to `0` to run without re-executing (small pages).
pub const OPT_OUT: &str = "AGW_HUGEPAGES";

/// The `GLIBC_TUNABLES` value to run with, or `None` when `current` already sets the huge-page
/// tunable (any value: an operator's choice stands).
pub fn tunables_with_huge_pages(current: Option<&str>) -> Option<String> {
    match current {
        Some(t)
            if t.split(':')
                .any(|kv| kv.starts_with("glibc.malloc.hugetlb=")) =>
        {
            None
        }
        Some(t) if !t.is_empty() => Some(format!("{t}:{TUNABLE}")),
        _ => Some(TUNABLE.to_owned()),
    }
}

/// Re-executes this program with the huge-page tunable unless it is set already or
/// `AGW_HUGEPAGES=0`. Returns when it does not re-execute (set, turned off, or the exec failed:
/// the program then runs on small pages). Call it first thing in `main`, before threads start.
pub fn ensure() {
    if std::env::var_os(OPT_OUT).is_some_and(|v| v == "0") {
        return;
    }
    let current = std::env::var("GLIBC_TUNABLES").ok();
    let Some(tunables) = tunables_with_huge_pages(current.as_deref()) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Only returns on failure.
    let _ = std::process::Command::new(exe)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunable_is_added_once_and_an_operators_choice_stands() {
        assert_eq!(tunables_with_huge_pages(None).as_deref(), Some(TUNABLE));
        assert_eq!(tunables_with_huge_pages(Some("")).as_deref(), Some(TUNABLE));
        assert_eq!(
            tunables_with_huge_pages(Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
        assert_eq!(tunables_with_huge_pages(Some(TUNABLE)), None);
        assert_eq!(
            tunables_with_huge_pages(Some("glibc.malloc.hugetlb=0")),
            None,
            "an operator who turned it off keeps it off"
        );
    }
}
