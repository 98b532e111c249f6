//! Fetch a kernel package with apt and unpack it into a cache directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::modules::ModuleIndex;

/// Marker written last into an unpacked tree: its presence means the tree is complete.
const COMPLETE_STAMP: &str = ".hull-unpacked";

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{tool} is not installed ({why}); install it with: apt-get install {package}")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        why: String,
    },
    #[error("apt knows no kernel package behind {metapackage}: run `apt-get update` first ({detail})")]
    Unresolved { metapackage: String, detail: String },
    #[error("`{command}` failed: {stderr}")]
    CommandFailed { command: String, stderr: String },
    #[error("the kernel package {package} is malformed: {why}")]
    Malformed { package: String, why: String },
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct KernelPackage {
    /// Debian package name, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Kernel release as `uname -r` prints it, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// Root of the unpacked package.
    pub root: PathBuf,
}

impl KernelPackage {
    /// The bzImage.
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join("boot").join(format!("vmlinuz-{}", self.release))
    }

    /// `lib/modules/RELEASE` inside the unpacked package, with `modules.dep`.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// The module index built from this package's `modules.dep`.
    pub fn module_index(&self) -> Result<ModuleIndex, PackageError> {
        ModuleIndex::load(&self.modules_dir()).map_err(|e| PackageError::Malformed {
            package: self.package.clone(),
            why: e.to_string(),
        })
    }

    /// Opens an already unpacked package under `cache_dir` without touching apt,
    /// e.g. inside a machine that has no network.
    pub fn open_cached(cache_dir: &Path, package: &str) -> Option<KernelPackage> {
        let root = cache_dir.join(package);
        let release = fs::read_to_string(root.join(COMPLETE_STAMP)).ok()?;
        let kernel = KernelPackage {
            package: package.to_string(),
            release: release.trim().to_string(),
            root,
        };
        kernel.vmlinuz().is_file().then_some(kernel)
    }
}

/// Resolves `metapackage` to the concrete kernel package apt would install,
/// downloads it (once) and unpacks it under `cache_dir`. A tree left half
/// unpacked by an earlier crash is detected (no stamp) and redone.
pub fn fetch(metapackage: &str, cache_dir: &Path) -> Result<KernelPackage, PackageError> {
    let package = resolve_metapackage(metapackage)?;
    if let Some(kernel) = KernelPackage::open_cached(cache_dir, &package) {
        return Ok(kernel);
    }
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    let download_dir = cache_dir.join(format!(".download-{package}"));
    let staging = cache_dir.join(format!(".unpack-{package}"));
    let fetched = download_and_unpack(&package, cache_dir, &download_dir, &staging);
    // Done or failed, the scratch directories go (a failed fetch used to
    // leave a downloaded .deb and a half-unpacked tree behind).
    let _ = fs::remove_dir_all(&download_dir);
    let _ = fs::remove_dir_all(&staging);
    fetched
}

fn download_and_unpack(
    package: &str,
    cache_dir: &Path,
    download_dir: &Path,
    staging: &Path,
) -> Result<KernelPackage, PackageError> {
    let package = package.to_string();
    let _ = fs::remove_dir_all(download_dir);
    fs::create_dir_all(download_dir).map_err(io_err(download_dir))?;
    run(
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(download_dir),
        "apt-get",
        "apt",
    )?;
    let deb = fs::read_dir(download_dir)
        .map_err(io_err(download_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| PackageError::Malformed {
            package: package.clone(),
            why: "apt-get download produced no .deb".into(),
        })?;

    let _ = fs::remove_dir_all(staging);
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(staging),
        "dpkg-deb",
        "dpkg",
    )?;
    let release = release_of(staging, &package)?;
    // The package ships no modules.dep (postinst makes it); build it the same way.
    run(
        Command::new("depmod").arg("-b").arg(staging).arg(&release),
        "depmod",
        "kmod",
    )?;
    fs::write(staging.join(COMPLETE_STAMP), &release).map_err(io_err(staging))?;
    let root = cache_dir.join(&package);
    let _ = fs::remove_dir_all(&root);
    fs::rename(staging, &root).map_err(io_err(&root))?;
    Ok(KernelPackage { package, release, root })
}

/// `linux-image-amd64` depends on exactly one `linux-image-<abi>-amd64`.
fn resolve_metapackage(metapackage: &str) -> Result<String, PackageError> {
    let out = run(
        Command::new("apt-cache").args(["depends", "--important", metapackage]),
        "apt-cache",
        "apt",
    )?;
    let unresolved = |detail: &str| PackageError::Unresolved {
        metapackage: metapackage.into(),
        detail: detail.into(),
    };
    let mut candidates = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-") && !p.contains('<'));
    let package = candidates
        .next()
        .ok_or_else(|| unresolved("no linux-image dependency listed"))?;
    Ok(package.to_string())
}

/// The release is the single directory under `lib/modules`.
fn release_of(root: &Path, package: &str) -> Result<String, PackageError> {
    let dir = root.join("lib/modules");
    let mut releases = fs::read_dir(&dir)
        .map_err(io_err(&dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok());
    let release = releases.next().ok_or_else(|| PackageError::Malformed {
        package: package.into(),
        why: "no lib/modules/RELEASE".into(),
    })?;
    if !root.join("boot").join(format!("vmlinuz-{release}")).is_file() {
        return Err(PackageError::Malformed {
            package: package.into(),
            why: format!("no boot/vmlinuz-{release}"),
        });
    }
    Ok(release)
}

/// Runs a command, returning stdout; maps "not found" to an install hint.
fn run(cmd: &mut Command, tool: &'static str, package: &'static str) -> Result<String, PackageError> {
    let out = cmd.output().map_err(|e| PackageError::ToolMissing {
        tool,
        package,
        why: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(PackageError::CommandFailed {
            command: format!("{cmd:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
