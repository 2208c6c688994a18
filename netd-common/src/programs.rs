//! Names of the BPF programs in the object file.

/// TC program on the host side of a container's veth, ingress direction
/// (packets the container sends).
pub const FROM_CONTAINER: &str = "from_container";
/// TC program on the uplink, ingress: packets from outside the host.
pub const FROM_UPLINK: &str = "from_uplink";
/// TC program on the uplink, egress: packets leaving the host.
pub const TO_UPLINK: &str = "to_uplink";

/// XDP program on the uplinks: early drops, before an skb exists.
pub const UPLINK_XDP: &str = "uplink_xdp";

/// Every TC program in the object (user space loads them all).
pub const CLASSIFIERS: &[&str] = &[FROM_CONTAINER, FROM_UPLINK, TO_UPLINK];

/// cgroup socket hooks for connections the host itself makes to
/// published ports (incl. 127.0.0.1): translated at connect()/sendmsg()
/// time, no per-packet NAT.
pub const HOST_CONNECT4: &str = "host_connect4";
pub const HOST_SENDMSG4: &str = "host_sendmsg4";
pub const HOST_RECVMSG4: &str = "host_recvmsg4";
pub const HOST_GETPEERNAME4: &str = "host_getpeername4";
/// Their IPv6 twins: ports published on IPv6, `[::1]` included.
pub const HOST_CONNECT6: &str = "host_connect6";
pub const HOST_SENDMSG6: &str = "host_sendmsg6";
pub const HOST_RECVMSG6: &str = "host_recvmsg6";
pub const HOST_GETPEERNAME6: &str = "host_getpeername6";
pub const SOCK_HOOKS: &[&str] = &[
    HOST_CONNECT4,
    HOST_SENDMSG4,
    HOST_RECVMSG4,
    HOST_GETPEERNAME4,
    HOST_CONNECT6,
    HOST_SENDMSG6,
    HOST_RECVMSG6,
    HOST_GETPEERNAME6,
];
