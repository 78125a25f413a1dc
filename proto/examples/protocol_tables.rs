//! Prints the message-kind and error-code tables of docs/protocol.md from the code, so the
//! document can be refreshed after a schema change:
//! `cargo run -p agw-proto --example protocol_tables`.

#![allow(clippy::print_stdout)]

use agw_proto::{Kind, pb::ErrorCode};

fn main() {
    println!("| code | kind | max body | what it carries |");
    println!("| --- | --- | --- | --- |");
    for kind in Kind::ALL {
        let max = if kind.is_data() {
            format!("`max_data_body`, at most {}", human(kind.max_body()))
        } else {
            human(kind.max_body())
        };
        println!(
            "| 0x{:02x} | {} | {max} | {} |",
            kind.code(),
            kind.name(),
            kind.doc()
        );
    }
    println!();
    println!("| code | name | meaning | retry helps |");
    println!("| --- | --- | --- | --- |");
    for code in (1..1000).filter_map(|n| ErrorCode::try_from(n).ok()) {
        let retry = if code.is_retryable() { "yes" } else { "no" };
        println!(
            "| {} | {} | {} | {retry} |",
            code as i32,
            code.as_str_name(),
            code.meaning()
        );
    }
}

fn human(bytes: u32) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}
