//! `netd-bench --quick` runs end to end and writes its results (a smoke
//! test: no speed is asserted here; see `cargo xtask bench`).

use std::{process::Command, sync::Mutex};

/// One bench at a time: two would measure each other.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `netd-bench ARGS…`, which must succeed, and reads the JSON results
/// it wrote to target/bench/`file`.
fn bench(args: &[&str], file: &str) -> serde_json::Value {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // netd-bench runs the netd binaries next to it: built now if they
    // are not current.
    netd_testbed::bin_under_test::netd();
    let out = Command::new(env!("CARGO_BIN_EXE_netd-bench"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = format!("{}/../target/bench/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn quick_bench_runs_and_reports_every_datapath() {
    let results = bench(&["--quick"], "results.json");
    let datapaths: Vec<&str> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["datapath"].as_str().unwrap())
        .collect();
    for datapath in ["none", "direct", "ebpf", "iptables", "nftables"] {
        assert!(
            datapaths.contains(&datapath),
            "{datapath} missing from {datapaths:?}"
        );
    }
    for row in results["results"].as_array().unwrap() {
        for direction in ["dnat", "snat"] {
            for figure in [
                "tcp_crr_per_s",
                "tcp_rr_per_s",
                "tcp_rr_p99_us",
                "udp64_pps",
                "tcp_stream_gbit_s",
            ] {
                let median = &row["figures"][format!("{direction}_{figure}")]["median"];
                assert!(
                    median.as_f64().unwrap() > 0.0,
                    "{direction}_{figure}: {row}"
                );
            }
            // Failures are counted and reported, every run.
            let failed = &row["figures"][format!("{direction}_tcp_crr_failed")]["median"];
            assert!(failed.as_f64().is_some(), "{direction}: {row}");
            let loss = &row["figures"][format!("{direction}_udp64_loss_pct")]["median"];
            assert!(
                (0.0..=100.0).contains(&loss.as_f64().unwrap()),
                "{direction}: {row}"
            );
        }
        if ["ebpf", "iptables", "nftables"].contains(&row["datapath"].as_str().unwrap()) {
            let control = &row["control_plane"];
            assert!(
                control["publish_one_port_us"]["median"].as_f64().unwrap() > 0.0,
                "{control}"
            );
            assert!(control["daemon_rss_kib"].as_u64().unwrap() > 0, "{control}");
        }
        if row["datapath"] == "ebpf" {
            let memlock = row["control_plane"]["bpf_map_memlock_bytes"].as_u64();
            assert!(memlock.unwrap() > 0, "{row}");
        }
    }
    // Paired A/B: every comparison has its pairs, a median inside its
    // interval; the typical host is compared in both directions, UDP
    // request/response included; the noise floor and sanity are reported.
    let paired = &results["paired"];
    let comparisons = paired["comparisons"].as_array().unwrap();
    for c in comparisons {
        let (median, low, high) = (
            c["median_ratio"].as_f64().unwrap(),
            c["ci95"][0].as_f64().unwrap(),
            c["ci95"][1].as_f64().unwrap(),
        );
        assert!(low <= median && median <= high && low > 0.0, "{c}");
        assert_eq!(c["pair_ratios"].as_array().unwrap().len(), 3, "{c}");
    }
    for (workload, direction) in [("UDP_RR", "dnat"), ("UDP_RR", "snat"), ("TCP_RR", "snat")] {
        assert!(
            comparisons
                .iter()
                .any(|c| c["what"] == "typical host: ebpf / iptables"
                    && c["workload"] == workload
                    && c["direction"] == direction),
            "typical host {workload} {direction} missing: {paired}"
        );
    }
    // IPv6 beside IPv4: ebpf against ip6tables at each port count, both
    // directions, and against plain IPv6 routing.
    for what in [
        "ebpf / ip6tables, 1 ports, IPv6",
        "ebpf / ip6tables, 1000 ports, IPv6",
        "ebpf / plain routing, 1 port, IPv6",
    ] {
        for direction in ["dnat", "snat"] {
            assert!(
                comparisons
                    .iter()
                    .any(|c| c["what"] == what && c["direction"] == direction),
                "{what} {direction} missing: {paired}"
            );
        }
    }
    assert!(paired["noise_floor"]["median_ratio"].as_f64().unwrap() > 0.0);
    assert!(paired["unreliable"].is_boolean());
    // BPF time per connection and per established packet, from BPF stats.
    for workload in ["dnat_tcp_crr", "dnat_tcp_rr", "snat_tcp_crr", "snat_tcp_rr"] {
        let per = &results["ebpf_profile"]["per_operation"][workload];
        assert!(
            per["bpf_ns_per_operation"].as_f64().unwrap() > 0.0,
            "{workload}: {per}"
        );
    }
    // UDP request/response through the published port, on every target.
    for row in results["results"].as_array().unwrap() {
        let rr = &row["figures"]["dnat_udp_rr_per_s"]["median"];
        assert!(rr.as_f64().unwrap() > 0.0, "{row}");
    }
    // Rule scaling on both datapaths, and the flood on its seven paths
    // (skbs and XDP frames): every flood packet sent was dropped.
    let parts = &results["rules_and_flood"];
    let scaling = parts["rule_scaling"].as_array().unwrap();
    assert_eq!(scaling.len(), 4, "{parts}");
    for c in scaling {
        assert!(c["median_ratio"].as_f64().unwrap() > 0.0, "{c}");
    }
    let paths = parts["flood"]["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 7, "{parts}");
    for path in paths {
        let flood = &path["flood"];
        let (sent, dropped) = (
            flood["sent_per_s"].as_f64().unwrap(),
            flood["dropped_per_s"].as_f64().unwrap(),
        );
        assert!(sent > 1000.0, "{path}");
        assert!(
            dropped >= 0.95 * sent,
            "every flood packet is dropped: {path}"
        );
        assert!(
            path["retained"]["median_ratio"].as_f64().unwrap() > 0.0,
            "{path}"
        );
        if !path["path"].as_str().unwrap().ends_with("iptables") {
            assert!(flood["bpf_ns_per_packet"].as_f64().unwrap() > 0.0, "{path}");
        }
    }
    assert_eq!(parts["flood"]["under_flood"].as_array().unwrap().len(), 7);
    // The drop cost beyond the floor: every path costs more than frames
    // into a one-instruction XDP_DROP (less would mean the floor measured
    // something else).
    let cost = &parts["flood"]["drop_cost"];
    assert!(cost["floor_ns_per_frame"].as_f64().unwrap() > 0.0, "{cost}");
    let costs = cost["paths"].as_array().unwrap();
    assert_eq!(costs.len(), 3, "{cost}");
    for path in costs {
        assert!(path["ns_beyond_floor"].as_f64().unwrap() > 0.0, "{cost}");
    }
    assert_eq!(cost["ratios"].as_array().unwrap().len(), 3, "{cost}");
    // The paced flood: three paths at three offered rates, each sent at
    // about the rate offered (a short quick run: within 30 %) and all of
    // it dropped.
    let paced = &parts["flood"]["paced"];
    let rows = paced["paths"].as_array().unwrap();
    assert_eq!(rows.len(), 9, "{paced}");
    for row in rows {
        let offered = row["offered_per_s"].as_f64().unwrap();
        let (sent, dropped) = (
            row["flood"]["sent_per_s"].as_f64().unwrap(),
            row["flood"]["dropped_per_s"].as_f64().unwrap(),
        );
        assert!((0.7 * offered..1.3 * offered).contains(&sent), "{row}");
        assert!(dropped >= 0.95 * sent, "{row}");
        assert!(
            row["retained"]["median_ratio"].as_f64().unwrap() > 0.0,
            "{row}"
        );
    }
    assert_eq!(paced["under_flood"].as_array().unwrap().len(), 9, "{paced}");
    // The profile saw the programs run, and the chart has its lines.
    let profile = &results["ebpf_profile"]["workloads"]["dnat_tcp_crr"];
    assert!(
        profile["from_uplink"]["runs"].as_u64().unwrap() > 0,
        "{profile}"
    );
    let chart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/bench/scaling.svg"
    ))
    .unwrap();
    // CRR: ebpf, iptables, plain routing, direct veth; publish time: ebpf, iptables.
    assert!(chart.matches("<polyline").count() >= 6, "{chart}");
    // Many containers (10 and 100 with --quick), on both datapaths: every
    // probed port answers, TCP_CRR runs, the restart keeps its connection.
    let scale: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/bench/scale.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let runs = scale.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{scale}");
    for run in runs {
        let points = run["points"].as_array().unwrap();
        let counts: Vec<u64> = points
            .iter()
            .map(|p| p["containers"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [10, 100], "{run}");
        for point in points {
            assert_eq!(point["probes_answered"], point["probes"], "{point}");
            assert!(point["tcp_crr_per_s"].as_f64().unwrap() > 0.0, "{point}");
            assert!(
                point["create_ms"]["median"].as_f64().unwrap() > 0.0,
                "{point}"
            );
            assert!(point["rm_ms"]["median"].as_f64().unwrap() > 0.0, "{point}");
            assert!(
                point["create_after_rm_ms"]["median"].as_f64().unwrap() > 0.0,
                "{point}"
            );
        }
        assert_eq!(run["connection_kept_across_restart"], true, "{run}");
    }
}

/// `netd-bench --docker --quick` and `--podman --quick`: every setup of
/// the runtime built, measured and reported, failures counted.
fn quick_runtime_bench_compares_every_setup(runtime: &str, setups: [&str; 3]) {
    let results = bench(
        &[&format!("--{runtime}"), "--quick"],
        &format!("{runtime}.json"),
    );
    let rows = results["results"].as_array().unwrap();
    for setup in setups {
        for ports in [1, 1000] {
            let row = rows
                .iter()
                .find(|r| r["setup"] == setup && r["published_ports"] == ports)
                .unwrap_or_else(|| panic!("{setup} with {ports} ports missing: {results}"));
            for figure in ["tcp_crr_per_s", "udp64_pps"] {
                let median = row["figures"][figure]["median"].as_f64().unwrap();
                assert!(median > 0.0, "{setup} {ports} {figure}: {row}");
            }
            assert!(
                row["figures"]["tcp_crr_failed"]["median"]
                    .as_f64()
                    .is_some()
            );
        }
        let start = &results["run_to_answer_ms"][setup]["median"];
        assert!(start.as_f64().unwrap() > 0.0, "{setup}: {results}");
    }
}

#[test]
fn quick_docker_bench_compares_every_setup() {
    quick_runtime_bench_compares_every_setup(
        "docker",
        ["docker+netd ebpf", "docker+netd iptables", "docker bridge"],
    );
}

#[test]
fn quick_podman_bench_compares_every_setup() {
    quick_runtime_bench_compares_every_setup(
        "podman",
        [
            "podman+netd ebpf",
            "podman+netd iptables",
            "podman cni bridge+portmap",
        ],
    );
}
