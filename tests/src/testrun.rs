//! Running a loaded TC program on one crafted frame through BPF_PROG_TEST_RUN.

use anyhow::{Context as _, Result};
use aya::programs::{TestRun as _, TestRunOptions};
use netd::datapath::Datapath;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
/// BPF_PROG_TEST_RUN runs TC programs as if on loopback.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// Runs `program` once on `frame`; returns (verdict, output frame).
pub fn run_classifier(dp: &mut Datapath, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    test_run(dp, program, frame, None)
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Runs the XDP program once on `frame` (as if received on loopback);
/// returns (verdict, output frame).
pub fn run_xdp(dp: &mut Datapath, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let result = dp
        .xdp()?
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .with_context(|| format!("XDP test run on {} bytes", frame.len()))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// Offset of `mark` in `struct __sk_buff` (after `len` and `pkt_type`).
const SKB_MARK_OFFSET: usize = 8;
/// Room for the kernel's whole `struct __sk_buff` on the way out.
const SKB_CTX_OUT_LEN: usize = 256;

/// As [`run_classifier`], with the skb's mark set to `mark` on the way in;
/// returns (verdict, output frame, mark on the way out).
pub fn run_classifier_with_mark(
    dp: &mut Datapath,
    program: &str,
    frame: &[u8],
    mark: u32,
) -> Result<(u32, Vec<u8>, u32)> {
    // The kernel takes a prefix of __sk_buff: len and pkt_type must be zero.
    let mut ctx_in = [0u8; SKB_MARK_OFFSET + 4];
    ctx_in[SKB_MARK_OFFSET..].copy_from_slice(&mark.to_ne_bytes());
    let mut ctx_out = [0u8; SKB_CTX_OUT_LEN];
    let (verdict, out) = test_run(dp, program, frame, Some((&ctx_in, &mut ctx_out)))?;
    let mark_out = u32::from_ne_bytes(
        ctx_out[SKB_MARK_OFFSET..SKB_MARK_OFFSET + 4]
            .try_into()
            .expect("4 bytes"),
    );
    Ok((verdict, out, mark_out))
}

/// Runs `program` on `frame` `repeat` times in one BPF_PROG_TEST_RUN (on
/// the calling CPU); returns the last run's verdict.
pub fn run_classifier_repeated(
    dp: &mut Datapath,
    program: &str,
    frame: &[u8],
    repeat: u32,
) -> Result<u32> {
    let result = dp
        .classifier(program)?
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .with_context(|| format!("{repeat} test runs of {program}"))?;
    Ok(result.return_value)
}

/// One BPF_PROG_TEST_RUN, with an skb context in and out when given.
fn test_run(
    dp: &mut Datapath,
    program: &str,
    frame: &[u8],
    ctx: Option<(&[u8], &mut [u8])>,
) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let (ctx_in, ctx_out) = match ctx {
        Some((ctx_in, ctx_out)) => (Some(ctx_in), Some(ctx_out)),
        None => (None, None),
    };
    let result = dp
        .classifier(program)?
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in,
            ctx_out,
            ..TestRunOptions::new()
        })
        .with_context(|| format!("test run of {program} on {} bytes", frame.len()))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}
