//! Running a loaded TC program on one crafted frame through BPF_PROG_TEST_RUN.

use anyhow::{Context as _, Result};
use aya::programs::{TestRun as _, TestRunOptions};
use netd::bpf::Datapath;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
/// BPF_PROG_TEST_RUN runs TC programs as if on loopback.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// Runs `program` once on `frame`; returns (verdict, output frame).
pub fn run_classifier(dp: &mut Datapath, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let result = dp
        .classifier(program)?
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .with_context(|| format!("test run of {program} on {} bytes", frame.len()))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}
