//! A cnitool-like harness: runs a CNI plugin binary as a runtime does
//! (environment, configuration on stdin, result or error on stdout) and
//! decodes what it printed.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

use crate::{Netns, daemon_host::DaemonHost};

/// The CNI versions netd's plugin speaks.
pub const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// One plugin binary and the base of the configuration it gets.
pub struct CniTool {
    plugin: PathBuf,
}

/// What one run printed.
#[derive(Debug)]
pub struct CniRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniRun {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("plugin stdout is not JSON ({err}): {self:?}"))
    }
}

/// A container's attachment: what the runtime passes in the environment.
#[derive(Clone, Debug)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
}

impl CniTool {
    pub fn new(plugin: impl Into<PathBuf>) -> Self {
        Self {
            plugin: plugin.into(),
        }
    }

    /// Runs the plugin with exactly `env` (plus PATH) and `stdin`.
    pub fn exec_raw(&self, env: &[(&str, &str)], stdin: &[u8]) -> CniRun {
        let mut child = Command::new(&self.plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        CniRun {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `command` for `att` (None: GC, STATUS, VERSION) with `conf`.
    pub fn exec(&self, command: &str, att: Option<&Attachment<'_>>, conf: &Value) -> CniRun {
        let netns;
        let mut env = vec![("CNI_COMMAND", command), ("CNI_PATH", "/opt/cni/bin")];
        if let Some(att) = att {
            netns = att.netns.to_string_lossy().into_owned();
            env.push(("CNI_CONTAINERID", att.container_id));
            env.push(("CNI_NETNS", &netns));
            env.push(("CNI_IFNAME", att.ifname));
        }
        self.exec_raw(&env, conf.to_string().as_bytes())
    }

    /// A command that must succeed; its JSON output (Null when silent).
    pub fn ok(&self, command: &str, att: Option<&Attachment<'_>>, conf: &Value) -> Value {
        let run = self.exec(command, att, conf);
        assert!(run.success, "CNI {command} failed: {run:?}");
        if run.stdout.trim().is_empty() {
            Value::Null
        } else {
            run.json()
        }
    }

    /// A run that must fail with CNI error `code` and a message containing
    /// `message`, as CNI error JSON on stdout.
    pub fn expect_error(run: &CniRun, code: u64, message: &str) {
        assert!(
            !run.success,
            "expected CNI error {code}, got success: {run:?}"
        );
        let err = run.json();
        assert_eq!(err["code"], code, "wrong CNI error code: {run:?}");
        let msg = err["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(message),
            "CNI error message {msg:?} lacks {message:?}"
        );
        assert!(
            err["cniVersion"].is_string(),
            "error without cniVersion: {run:?}"
        );
    }
}

/// The configuration a runtime passes netd's plugin for `network`: the
/// plugin entry plus `cniVersion`, `name` and `runtimeConfig` (`extra` is
/// merged over it).
pub fn net_conf(version: &str, network: &str, socket: &Path, extra: Value) -> Value {
    let mut conf = json!({
        "cniVersion": version,
        "name": network,
        "type": "netd-cni",
        "socket": socket,
        "capabilities": {"portMappings": true},
    });
    if let (Some(base), Value::Object(extra)) = (conf.as_object_mut(), extra) {
        base.extend(extra);
    }
    conf
}

/// A namespace as a runtime makes one (loopback up, no interfaces).
pub fn runtime_netns(h: &DaemonHost, short: &str) -> Netns {
    let name = h.name(short);
    let out = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip netns add {name}: {out:?}");
    let ns = Netns::named(&name);
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    ns
}

/// How many containers (and runtime attachments) the daemon has.
pub fn container_count(h: &DaemonHost) -> usize {
    h.json(&["container", "ls", "--format", "json"])
        .as_array()
        .unwrap()
        .len()
}
