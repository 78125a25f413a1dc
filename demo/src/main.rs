//! `agw-demo`: three gateways peered in a chain on this machine, and a conversation across
//! them, step by step (see the library's docs).

fn main() {
    if let Err(e) = agw_demo::run() {
        eprintln!("agw-demo: {e}");
        std::process::exit(1);
    }
}
