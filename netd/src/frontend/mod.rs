//! Front-ends: each translates one protocol into the engine's typed calls.

pub mod docker;
pub mod socket;
