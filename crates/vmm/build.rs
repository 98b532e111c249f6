//! Compiles hull-vmm's seccomp filters (`src/seccomp/rules.rs`) to BPF
//! once, here, as Firecracker does, instead of in every VMM as it starts.

#[path = "src/seccomp/rules.rs"]
#[allow(dead_code)]
mod rules;

fn main() {
    println!("cargo:rerun-if-changed=src/seccomp/rules.rs");
    // The rules name x86_64's system calls and KVM's ioctls from this
    // build host's libc: they are right only for an x86_64 target built
    // on x86_64.
    let target = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if target != "x86_64" || std::env::consts::ARCH != "x86_64" {
        panic!("hull-vmm's seccomp filters are for x86_64 built on x86_64 (target {target})");
    }
    let programs: Vec<_> = rules::Filter::ALL
        .iter()
        .map(|&filter| rules::compile(filter, seccompiler::SeccompAction::Trap).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("seccomp_filters.bin"), rules::encode(&programs)).expect("writing the filters");
}
