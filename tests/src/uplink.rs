//! Addresses of the uplink segment every test host uses (inside the
//! testbed's own namespaces only).

/// The host's primary uplink address (masquerade source).
pub const HOST_IP: &str = "198.51.100.1";
/// A second address on the host's uplink (ports published on one host IP).
pub const HOST_SECOND_IP: &str = "198.51.100.3";
/// The outside client (the host's next hop).
pub const OUTSIDE_IP: &str = "198.51.100.2";
