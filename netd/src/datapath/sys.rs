//! What aya does not wrap: two BPF commands (`BPF_LINK_DETACH` of a pinned
//! link, `BPF_MAP_LOOKUP_BATCH`), socket cookies, the cgroup v2 mount and
//! the programs' clock.
//! Shared by the product, the tests and the bench.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Detaches the link pinned at `pin` from its hook now (`BPF_LINK_DETACH`,
/// Linux 5.9, as old as XDP links); nothing to do if there is no pin.
/// Unpinned alone, a link leaves its hook only after an RCU grace period.
pub fn detach_pinned_link(pin: &Path) -> Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let Ok(path) = CString::new(pin.as_os_str().as_encoded_bytes()) else {
        bail!("{} contains NUL", pin.display());
    };
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
    let mut attr = [0u64; 4];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: attr outlives the call and is as large as the kernel reads.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 32usize) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::NotFound {
            return Ok(());
        }
        return Err(err).with_context(|| format!("opening {}", pin.display()));
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // union bpf_attr for BPF_LINK_DETACH: link_fd.
    let mut attr = [0u64; 4];
    attr[0] = link.as_raw_fd() as u64;
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), 32usize) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("BPF_LINK_DETACH of {}", pin.display()));
    }
    Ok(())
}

/// Every (key, value) of the hash map `map_fd`, `per_call` at a time
/// (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6): one system call per batch, where a
/// walk with `get_next_key` and `lookup` takes two per entry (with 30,000
/// connections tracked, ~100 ms against a few).
pub fn lookup_batch<K: bytemuck::Pod, V: bytemuck::Pod>(
    map_fd: std::os::fd::BorrowedFd<'_>,
    per_call: u32,
) -> std::io::Result<Vec<(K, V)>> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let per_call = per_call.max(1) as usize;
    let mut keys = vec![K::zeroed(); per_call];
    let mut values = vec![V::zeroed(); per_call];
    // The hash map's batch token is its next bucket (a u32).
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut out = Vec::new();
    let mut first = true;
    loop {
        // union bpf_attr's `batch`: in_batch, out_batch, keys, values,
        // count | map_fd, elem_flags, flags.
        let mut attr = [0u64; 7];
        attr[0] = if first { 0 } else { &raw mut token_in as u64 };
        attr[1] = &raw mut token_out as u64;
        attr[2] = keys.as_mut_ptr() as u64;
        attr[3] = values.as_mut_ptr() as u64;
        attr[4] = per_call as u64 | (u64::from(map_fd.as_raw_fd() as u32) << 32);
        // SAFETY: attr and the buffers it points to outlive the call; the
        // kernel writes at most `count` keys and values of the map's sizes,
        // which K and V are.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        let count = (attr[4] & 0xffff_ffff) as usize;
        // The last batch ends with ENOENT; what it holds is in `count`.
        let last = match rc < 0 {
            false => false,
            true => match std::io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ENOENT) => true,
                e => return Err(e),
            },
        };
        out.extend(
            keys[..count]
                .iter()
                .copied()
                .zip(values[..count].iter().copied()),
        );
        if last {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup on unified
/// systems, /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2_root() -> Result<String> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| dir.to_owned())
        })
        .ok_or_else(|| {
            anyhow!(
                "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)"
            )
        })
}

/// The calling thread's network namespace cookie (SO_NETNS_COOKIE, 5.14+).
pub fn current_netns_cookie() -> Result<u64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("socket for SO_NETNS_COOKIE")?;
    getsockopt_u64(&socket, libc::SO_NETNS_COOKIE).context("getsockopt(SO_NETNS_COOKIE)")
}

/// A socket's cookie (SO_COOKIE), as the BPF programs see it.
pub fn socket_cookie(socket: &impl AsRawFd) -> Result<u64> {
    getsockopt_u64(socket, libc::SO_COOKIE).context("getsockopt(SO_COOKIE)")
}

fn getsockopt_u64(socket: &impl AsRawFd, option: libc::c_int) -> std::io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket and buffer of the advertised length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock conntrack expiry is kept in.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC always exists on Linux.
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
