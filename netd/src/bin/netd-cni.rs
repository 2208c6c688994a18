//! netd's CNI plugin: the binary a conflist's `"type": "netd-cni"` names.
//! It forwards each request to the netd daemon (see `netd::cni`).

fn main() -> std::process::ExitCode {
    netd::cni::main()
}
