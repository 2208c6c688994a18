//! `netd daemon --metrics ADDR`: Prometheus metrics scraped over HTTP, and
//! numbers that move with real traffic through a published port, a real
//! drop, and the requests that made them.

use std::net::SocketAddr;

use netd_testbed::bin_under_test::netd;
use netd_testbed::{
    daemon_host::{DaemonHost, HOST_IP},
    probe::{self, EchoServer},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The value of the sample named exactly `series` (name and labels).
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn metrics_are_scraped_and_move_with_real_traffic() {
    let h = DaemonHost::start(netd(), &["--metrics", "127.0.0.1:9464"]);
    let (content_type, before) = h.scrape_metrics();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert_eq!(value(&before, "netd_published_ports"), 0.0);

    let web = h.name("web");
    h.ok(&["container", "create", &web, "-p", "8080:80"]);
    let _server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("172.17.0.2:80")).unwrap();
    let mut conn = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
    for _ in 0..5 {
        probe::echo_roundtrip(&mut conn, b"count me").unwrap();
    }
    // Straight at the container's address from outside: netd drops it.
    h.outside
        .ip(&["route", "add", "172.17.0.0/16", "via", HOST_IP])
        .unwrap();
    assert!(probe::tcp_connect(&h.outside, addr("172.17.0.2:80")).is_err());

    let (_, after) = h.scrape_metrics();
    assert_eq!(value(&after, "netd_published_ports"), 1.0);
    assert_eq!(
        value(&after, r#"netd_map_entries{map="PUBLISHED_PORTS"}"#),
        1.0
    );
    assert_eq!(
        value(&after, r#"netd_map_capacity{map="PUBLISHED_PORTS"}"#),
        65536.0
    );
    let tcp = r#"netd_traffic_packets_total{class="tcp"}"#;
    // Five round trips: at least ten data segments, one way or the other.
    assert!(value(&after, tcp) - value(&before, tcp) >= 10.0, "{after}");
    let unsolicited = r#"netd_dropped_packets_total{reason="unsolicited-inbound"}"#;
    assert!(value(&after, unsolicited) >= 1.0, "{after}");
    // ... and counted on the uplink it came in by.
    let on_uplink = format!(
        r#"netd_dropped_packets_by_interface_total{{interface="{}",reason="unsolicited-inbound"}}"#,
        h.uplink
    );
    assert!(value(&after, &on_uplink) >= 1.0, "{after}");
    assert!(
        value(
            &after,
            r#"netd_conntrack_entries{protocol="tcp",direction="original"}"#
        ) >= 1.0,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            r#"netd_request_duration_seconds_count{kind="container_create"}"#
        ),
        1.0
    );
    assert!(after.contains("netd_conntrack_gc_runs_total"), "{after}");
    drop(conn);
}
