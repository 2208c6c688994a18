//! The resolver on dual-stack networks: AAAA beside A, PTR in ip6.arpa.

use std::net::Ipv6Addr;

use hickory_proto::rr::RecordType;

use super::records::{
    Records,
    tests::{addresses, ask, container, state},
};

#[test]
fn dual_stack_containers_answer_aaaa_and_ip6_arpa() {
    let mut state = state();
    let front = state.networks.get_mut("front").unwrap();
    front.ipv6 = Some(crate::state::NetworkIpv6 {
        subnet: "fd00:1::/64".parse().unwrap(),
        gateway: "fd00:1::1".parse().unwrap(),
    });
    let mut six = container("six", &[("front", "10.1.0.9", &["sixer"])]);
    six.attachments[0].ip6 = Some("fd00:1::9".parse().unwrap());
    state.containers.insert("six".into(), six);
    let r = Records::from_state(&state);
    assert_eq!(
        addresses(ask(&r, "web", "six", RecordType::A)),
        ["10.1.0.9"]
    );
    assert_eq!(
        addresses(ask(&r, "web", "sixer.", RecordType::AAAA)),
        ["fd00:1::9"]
    );
    // An IPv4-only container: AAAA answered empty, not forwarded.
    assert!(addresses(ask(&r, "web", "db", RecordType::AAAA)).is_empty());
    let nibbles: String = "fd00:1::9"
        .parse::<Ipv6Addr>()
        .unwrap()
        .octets()
        .iter()
        .rev()
        .map(|b| format!("{:x}.{:x}.", b & 0xf, b >> 4))
        .collect();
    assert_eq!(
        addresses(ask(
            &r,
            "web",
            &format!("{nibbles}ip6.arpa."),
            RecordType::PTR
        )),
        ["six.front."]
    );
}
