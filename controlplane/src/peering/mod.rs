//! Gateway peering (draft 3.4): the session state machine ([`session`]) and route selection
//! across peers ([`rib`]), both sans-IO. `docs/peering.md` describes them.

pub mod driver;
pub mod rib;
pub mod session;
