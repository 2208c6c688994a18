//! `netd-bench --quick` runs end to end and writes its results (a smoke
//! test: no speed is asserted here; see `cargo xtask bench`).

use std::process::Command;

#[test]
fn quick_bench_runs_and_reports_every_datapath() {
    let out = Command::new(env!("CARGO_BIN_EXE_netd-bench"))
        .arg("--quick")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/bench/results.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let datapaths: Vec<&str> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["datapath"].as_str().unwrap())
        .collect();
    for datapath in ["none", "direct", "ebpf", "iptables"] {
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
        if row["datapath"] == "ebpf" || row["datapath"] == "iptables" {
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
}
