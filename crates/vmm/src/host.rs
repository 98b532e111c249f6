//! What kind of KVM this host has, and whether a standard guest kernel can run on it.
//!
//! PVM ("pagetable-based virtual machine") provides `/dev/kvm` without hardware
//! virtualization: a guest's ring-0 code is interpreted, so only specially built
//! PVM guest kernels are usable. A stock kernel crawls and then dies, so hull
//! refuses to boot one there instead of hanging.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;

/// Environment variable that lets a user boot on PVM with a PVM guest kernel of their own.
pub const ALLOW_PVM_ENV: &str = "HULL_ALLOW_PVM";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKvm {
    /// `/dev/kvm` backed by VT-x or AMD-V.
    Hardware { vendor: &'static str },
    /// `/dev/kvm` backed by PVM: standard guest kernels cannot run.
    Pvm { evidence: String },
    /// No usable `/dev/kvm`.
    Unavailable { reason: String },
}

impl fmt::Display for HostKvm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKvm::Hardware { vendor } => write!(f, "hardware KVM ({vendor})"),
            HostKvm::Pvm { evidence } => write!(f, "PVM KVM ({evidence})"),
            HostKvm::Unavailable { reason } => write!(f, "no KVM ({reason})"),
        }
    }
}

/// Where the classification looks; tests point it at fake trees.
pub struct HostPaths<'a> {
    pub dev_kvm: &'a Path,
    pub sys_module: &'a Path,
    pub cpuinfo: &'a Path,
}

impl Default for HostPaths<'static> {
    fn default() -> Self {
        HostPaths {
            dev_kvm: Path::new("/dev/kvm"),
            sys_module: Path::new("/sys/module"),
            cpuinfo: Path::new("/proc/cpuinfo"),
        }
    }
}

/// The host's RAM in MiB (`MemTotal`), from sysinfo(2): one call, where
/// reading /proc/meminfo has the kernel format all of it (every VM start
/// pays for it).
pub fn memory_total_mib() -> Option<u64> {
    // SAFETY: sysinfo fills the zeroed struct it is given.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    Some((info.totalram as u64).saturating_mul(u64::from(info.mem_unit.max(1))) >> 20)
}

/// A /proc/meminfo field (e.g. `MemTotal`) in MiB, if the kernel reports it.
pub fn meminfo_mib(field: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let label = format!("{field}:");
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(label.as_str()))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
}

/// Classifies this host's KVM.
pub fn classify() -> HostKvm {
    classify_at(&HostPaths::default())
}

pub fn classify_at(paths: &HostPaths) -> HostKvm {
    if !paths.dev_kvm.exists() {
        return HostKvm::Unavailable {
            reason: format!(
                "{} does not exist: enable virtualization and load kvm_intel or kvm_amd",
                paths.dev_kvm.display()
            ),
        };
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open(paths.dev_kvm) {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            ": run as root or add your user to the `kvm` group"
        } else {
            ""
        };
        return HostKvm::Unavailable {
            reason: format!("cannot open {}: {e}{hint}", paths.dev_kvm.display()),
        };
    }
    if paths.sys_module.join("kvm_pvm").exists() {
        return HostKvm::Pvm {
            evidence: format!("{} is loaded", paths.sys_module.join("kvm_pvm").display()),
        };
    }
    // A vendor's module (loaded, or built in: it still has parameters)
    // says so without /proc/cpuinfo, which the kernel writes out for every
    // CPU on each read (milliseconds of every restore under emulation).
    for (module, vendor) in [("kvm_intel", "Intel VT-x"), ("kvm_amd", "AMD-V")] {
        if paths.sys_module.join(module).exists() {
            return HostKvm::Hardware { vendor };
        }
    }
    let cpuinfo = std::fs::read_to_string(paths.cpuinfo).unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .collect();
    if flags.contains(&"vmx") {
        HostKvm::Hardware { vendor: "Intel VT-x" }
    } else if flags.contains(&"svm") {
        HostKvm::Hardware { vendor: "AMD-V" }
    } else {
        HostKvm::Pvm {
            evidence: "/dev/kvm works but the CPU has neither the vmx nor the svm flag".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostKvmError {
    #[error(
        "this host's /dev/kvm is PVM ({evidence}).\n\
         PVM runs a guest's kernel-mode code by interpretation, so a standard guest kernel such as \
         Debian's cloud kernel cannot boot on it (it crawls, then dies).\n\
         Options: run hull on a host with hardware virtualization (bare metal, or a cloud instance \
         with nested VT-x/AMD-V); or, with a PVM guest kernel of your own, set {ALLOW_PVM_ENV}=1; \
         hull's own tests run inside an emulated KVM host here (see `vmhost`)."
    )]
    Pvm { evidence: String },
    #[error("KVM is not usable on this host: {reason}")]
    Unavailable { reason: String },
}

/// Fails at once, with the options spelled out, where a standard guest cannot boot.
pub fn require_guest_capable() -> Result<HostKvm, HostKvmError> {
    let allow_pvm = std::env::var(ALLOW_PVM_ENV).is_ok_and(|v| v == "1");
    check_guest_capable(classify(), allow_pvm)
}

pub fn check_guest_capable(host: HostKvm, allow_pvm: bool) -> Result<HostKvm, HostKvmError> {
    match host {
        HostKvm::Hardware { .. } => Ok(host),
        HostKvm::Pvm { .. } if allow_pvm => Ok(host),
        HostKvm::Pvm { evidence } => Err(HostKvmError::Pvm { evidence }),
        HostKvm::Unavailable { reason } => Err(HostKvmError::Unavailable { reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct FakeHost {
        dir: std::path::PathBuf,
    }

    impl FakeHost {
        fn new(name: &str, kvm: bool, pvm_module: bool, flags: &str) -> FakeHost {
            FakeHost::with_modules(name, kvm, if pvm_module { &["kvm_pvm"] } else { &[] }, flags)
        }

        fn with_modules(name: &str, kvm: bool, modules: &[&str], flags: &str) -> FakeHost {
            let dir = std::env::temp_dir().join(format!("hull-hostkvm-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("module/kvm")).unwrap();
            for module in modules {
                fs::create_dir_all(dir.join("module").join(module)).unwrap();
            }
            if kvm {
                fs::write(dir.join("kvm"), "").unwrap();
            }
            fs::write(
                dir.join("cpuinfo"),
                format!("processor\t: 0\nflags\t\t: fpu sse2 {flags}\n"),
            )
            .unwrap();
            FakeHost { dir }
        }

        fn classify(&self) -> HostKvm {
            classify_at(&HostPaths {
                dev_kvm: &self.dir.join("kvm"),
                sys_module: &self.dir.join("module"),
                cpuinfo: &self.dir.join("cpuinfo"),
            })
        }
    }

    impl Drop for FakeHost {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn hardware_vendors_are_recognised() {
        assert_eq!(
            FakeHost::new("svm", true, false, "svm").classify(),
            HostKvm::Hardware { vendor: "AMD-V" }
        );
        assert_eq!(
            FakeHost::new("vmx", true, false, "vmx").classify(),
            HostKvm::Hardware { vendor: "Intel VT-x" }
        );
    }

    #[test]
    fn the_hosts_memory_is_meminfos_total() {
        assert_eq!(memory_total_mib(), meminfo_mib("MemTotal"));
    }

    #[test]
    fn a_vendor_module_is_enough_and_pvm_still_wins() {
        assert_eq!(
            FakeHost::with_modules("amdmod", true, &["kvm_amd"], "").classify(),
            HostKvm::Hardware { vendor: "AMD-V" }
        );
        assert_eq!(
            FakeHost::with_modules("intelmod", true, &["kvm_intel"], "").classify(),
            HostKvm::Hardware { vendor: "Intel VT-x" }
        );
        assert!(matches!(
            FakeHost::with_modules("pvmamd", true, &["kvm_pvm", "kvm_amd"], "svm").classify(),
            HostKvm::Pvm { .. }
        ));
    }

    #[test]
    fn pvm_module_or_missing_flags_mean_pvm() {
        assert!(matches!(
            FakeHost::new("pvm", true, true, "svm").classify(),
            HostKvm::Pvm { .. }
        ));
        assert!(matches!(
            FakeHost::new("noflag", true, false, "").classify(),
            HostKvm::Pvm { .. }
        ));
    }

    #[test]
    fn missing_dev_kvm_is_unavailable() {
        assert!(matches!(
            FakeHost::new("nokvm", false, false, "svm").classify(),
            HostKvm::Unavailable { .. }
        ));
    }

    #[test]
    fn pvm_is_refused_with_the_options_unless_allowed() {
        let pvm = HostKvm::Pvm {
            evidence: "kvm_pvm loaded".into(),
        };
        let message = check_guest_capable(pvm.clone(), false).unwrap_err().to_string();
        assert!(message.contains("standard guest kernel"), "{message}");
        assert!(message.contains(ALLOW_PVM_ENV), "{message}");
        assert!(message.contains("hardware virtualization"), "{message}");
        assert_eq!(check_guest_capable(pvm.clone(), true).unwrap(), pvm);
    }
}
