use which::which;

/// Rebuild the BPF object when bpf-linker changes (it is not a cargo dependency,
/// so cargo would not notice otherwise).
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
