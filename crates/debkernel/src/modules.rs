//! Module resolution from a kernel's `modules.dep`, so an initramfs carries
//! exactly the modules asked for plus their dependencies, in load order.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("kernel module {0} is neither in modules.dep nor built in")]
pub struct ModuleNotFound(pub String);

/// Parsed `modules.dep` (+ `modules.builtin`) of one kernel release.
#[derive(Debug)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// module name (with `_`) -> (relative path, dependency paths as listed)
    modules: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

/// Module names treat `-` and `_` alike (`kvm-amd` is `kvm_amd`).
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/fs/9p/9p.ko` (or `.ko.xz`) -> `9p`
fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    canonical(file.split(".ko").next().unwrap_or(file))
}

impl ModuleIndex {
    pub fn load(dir: &Path) -> std::io::Result<ModuleIndex> {
        let dep = fs::read_to_string(dir.join("modules.dep"))?;
        Ok(Self::parse(
            dir,
            &dep,
            &fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default(),
        ))
    }

    pub fn parse(dir: &Path, modules_dep: &str, modules_builtin: &str) -> ModuleIndex {
        let modules = modules_dep
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(path, deps)| {
                let deps = deps.split_whitespace().map(str::to_string).collect();
                (name_of(path), (path.trim().to_string(), deps))
            })
            .collect();
        let builtin = modules_builtin.lines().map(name_of).collect();
        ModuleIndex {
            dir: dir.to_path_buf(),
            modules,
            builtin,
        }
    }

    /// Absolute paths of the modules needed for `names`, dependencies first,
    /// each once. Built-in modules need no file and are skipped.
    pub fn resolve(&self, names: &[&str]) -> Result<Vec<PathBuf>, ModuleNotFound> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let name = canonical(name);
            if self.builtin.contains(&name) && !self.modules.contains_key(&name) {
                continue;
            }
            self.visit(&name, &mut seen, &mut order)?;
        }
        Ok(order.into_iter().map(|rel| self.dir.join(rel)).collect())
    }

    fn visit(&self, name: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) -> Result<(), ModuleNotFound> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (path, deps) = self.modules.get(name).ok_or_else(|| ModuleNotFound(name.to_string()))?;
        // modules.dep lists the full closure, last-loaded-first; walk it reversed.
        for dep in deps.iter().rev() {
            self.visit(&name_of(dep), seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko\n\
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n\
kernel/virt/lib/irqbypass.ko:\n\
kernel/drivers/crypto/ccp/ccp.ko:\n\
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko\n\
kernel/net/9p/9pnet.ko:\n\
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko\n\
kernel/fs/netfs/netfs.ko:\n\
garbage line without colon\n";

    fn rel(paths: Vec<PathBuf>) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.strip_prefix("/m").unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let index = ModuleIndex::parse(Path::new("/m"), DEP, "kernel/fs/ext4/ext4.ko\n");
        let order = rel(index.resolve(&["kvm_amd", "kvm", "9p", "ext4"]).unwrap());
        assert_eq!(
            order,
            [
                "kernel/virt/lib/irqbypass.ko",
                "kernel/arch/x86/kvm/kvm.ko",
                "kernel/drivers/crypto/ccp/ccp.ko",
                "kernel/arch/x86/kvm/kvm-amd.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/fscache/fscache.ko",
                "kernel/net/9p/9pnet.ko",
                "kernel/fs/9p/9p.ko",
            ]
        );
    }

    #[test]
    fn unknown_module_is_an_error() {
        let index = ModuleIndex::parse(Path::new("/m"), DEP, "");
        assert_eq!(index.resolve(&["nosuch"]).unwrap_err().0, "nosuch");
    }

    #[test]
    fn dependency_cycles_terminate() {
        let index = ModuleIndex::parse(Path::new("/m"), "a.ko: b.ko\nb.ko: a.ko\n", "");
        assert_eq!(rel(index.resolve(&["a"]).unwrap()), ["b.ko", "a.ko"]);
    }
}
