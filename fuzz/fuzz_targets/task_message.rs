//! Fuzzes what an agent does with a task message (decoded, re-encoded, an update applied to a
//! run in progress) and with a session header it receives: `None` or ignored, never a panic.
//!
//! `cargo +nightly fuzz run task_message fuzz/corpus/task_message fuzz/seeds/task_message`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agw_sdk::task::fuzzing::check(data);
});
