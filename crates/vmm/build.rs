//! Compiles hull-vmm's seccomp filters (`src/seccomp/rules.rs`) to BPF
//! once, here, as Firecracker does, instead of in every VMM as it starts.

#[path = "src/seccomp/rules.rs"]
#[allow(dead_code)]
mod rules;

fn main() {
    println!("cargo:rerun-if-changed=src/seccomp/rules.rs");
    // The rules name system calls and constants from the `libc` crate as
    // built for this build host: they are right only for a 64-bit x86_64
    // Linux target (not x32) built on x86_64 Linux.
    let cfg = |key: &str| std::env::var(key).unwrap_or_default();
    let target = [
        cfg("CARGO_CFG_TARGET_ARCH"),
        cfg("CARGO_CFG_TARGET_OS"),
        cfg("CARGO_CFG_TARGET_POINTER_WIDTH"),
    ];
    if target != ["x86_64", "linux", "64"] || std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        panic!("hull-vmm's seccomp filters are for 64-bit x86_64 Linux built on x86_64 Linux (target {target:?})");
    }
    let programs: Vec<_> = rules::Filter::ALL
        .iter()
        .map(|&filter| rules::compile(filter, seccompiler::SeccompAction::Trap).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("seccomp_filters.bin"), rules::encode(&programs)).expect("writing the filters");
}
