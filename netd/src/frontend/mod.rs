//! Front-ends: each translates one protocol into the engine's typed calls.

pub mod cni;
pub mod docker;
pub mod socket;
