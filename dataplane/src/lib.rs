//! The Agent Gateway's relay dataplane: one glommio (io_uring) executor per core, each owning
//! its agent connections, forwarding framed agent messages by an immutable routing snapshot.
//!
//! Status: empty. The relay is built by the dataplane issue; `docs/architecture.md` describes
//! the design it follows. The wire format it forwards is in `agw-proto`.
