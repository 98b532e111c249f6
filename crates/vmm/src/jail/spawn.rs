//! Starting hull-vmm, jailed or not: one `clone3` and an exec.
//!
//! A jailed VMM is born in its cgroup and in new PID and IPC namespaces
//! (`CLONE_INTO_CGROUP | CLONE_NEWPID | CLONE_NEWIPC`), which
//! `std::process::Command` cannot ask for; an earlier design forked a
//! waiter inside hull-vmm and moved the VMM between groups, which cost a
//! restore about a tenth of its time. The child only calls
//! async-signal-safe functions on data prepared before the clone (as
//! after `fork` in a threaded process), then execs.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use super::cgroup::{self, Limits};

/// The fd number a jailed VMM finds its lifeline's read end at.
pub const LIFELINE_FD: RawFd = 9;

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_NEWIPC: u64 = 0x0800_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Where one of the VMM's standard streams goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Null,
    Inherit,
    /// A pipe whose read end is `VmmProcess::stdout`/`stderr`.
    Piped,
}

/// A hull-vmm to start: its arguments, the descriptors it is given, its
/// streams, and the jail (if any) it runs in.
pub struct VmmCommand {
    program: PathBuf,
    args: Vec<OsString>,
    fds: Vec<(RawFd, RawFd)>,
    stdout: Output,
    stderr: Output,
    process_group: bool,
    jail: Option<(PathBuf, Limits)>,
}

/// A started hull-vmm. Dropping it ends the VMM (killed if still running),
/// reaps it and removes its cgroup.
pub struct VmmProcess {
    pid: u32,
    pidfd: OwnedFd,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    status: Option<ExitStatus>,
    /// The write end of a jailed VMM's lifeline (`LIFELINE_FD`).
    _lifeline: Option<OwnedFd>,
    cgroup: Option<PathBuf>,
}

fn c_string(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| std::io::Error::other(format!("{} holds a NUL", s.to_string_lossy())))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both ends are new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) })
}

/// Everything the child touches, made before the clone.
struct ChildPlan {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// (source, target) descriptors; sources are first copied above every
    /// target (into `spare`), so no target overwrites a later source.
    fds: Vec<(RawFd, RawFd)>,
    spare: Vec<RawFd>,
    process_group: bool,
    /// Unjailed: our PID, which must still be the child's parent once its
    /// parent-death signal is set.
    parent: Option<libc::pid_t>,
    error_pipe: RawFd,
}

impl ChildPlan {
    /// The child's side: async-signal-safe calls only, no allocation.
    unsafe fn run(&mut self) -> ! {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let floor = self.fds.iter().map(|&(_, target)| target).max().unwrap_or(2) + 1;
        for (i, &(source, _)) in self.fds.iter().enumerate() {
            self.spare[i] = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, floor);
            if self.spare[i] < 0 {
                self.fail();
            }
        }
        for (i, &(_, target)) in self.fds.iter().enumerate() {
            if libc::dup2(self.spare[i], target) < 0 {
                self.fail();
            }
        }
        if self.process_group && libc::setpgid(0, 0) != 0 {
            self.fail();
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if self.parent.is_some_and(|parent| libc::getppid() != parent) {
            *libc::__errno_location() = libc::ESRCH;
            self.fail();
        }
        libc::execve(self.program.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        self.fail();
    }

    unsafe fn fail(&self) -> ! {
        let errno = (*libc::__errno_location()).to_ne_bytes();
        libc::write(self.error_pipe, errno.as_ptr().cast(), errno.len());
        libc::_exit(127);
    }
}

impl VmmCommand {
    pub fn new(program: impl AsRef<Path>) -> VmmCommand {
        VmmCommand {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            fds: Vec::new(),
            stdout: Output::Inherit,
            stderr: Output::Inherit,
            process_group: false,
            jail: None,
        }
    }

    /// The program and arguments of `command` (not its streams or environment).
    pub fn from_command(command: &std::process::Command) -> VmmCommand {
        let mut this = VmmCommand::new(command.get_program());
        this.args(command.get_args());
        this
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut VmmCommand {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut VmmCommand {
        for arg in args {
            self.arg(arg);
        }
        self
    }

    /// Gives the VMM our descriptor `source` as its descriptor `target`.
    /// `source` must stay open until `spawn` returns.
    pub fn pass_fd(&mut self, source: RawFd, target: RawFd) -> &mut VmmCommand {
        self.fds.push((source, target));
        self
    }

    pub fn stdout(&mut self, output: Output) -> &mut VmmCommand {
        self.stdout = output;
        self
    }

    pub fn stderr(&mut self, output: Output) -> &mut VmmCommand {
        self.stderr = output;
        self
    }

    /// Starts the VMM in a process group of its own.
    pub fn process_group(&mut self) -> &mut VmmCommand {
        self.process_group = true;
        self
    }

    /// Jails the VMM in `root` (its socket directory) within `limits`.
    pub fn jail(&mut self, root: impl AsRef<Path>, limits: Limits) -> &mut VmmCommand {
        self.jail = Some((root.as_ref().to_path_buf(), limits));
        self
    }

    /// Starts it (stdin is /dev/null); an error says why, the caller what.
    pub fn spawn(&self) -> std::io::Result<VmmProcess> {
        let cgroup = match &self.jail {
            Some((_, limits)) => cgroup::make(limits).map_err(std::io::Error::other)?,
            None => None,
        };
        let spawned = self.spawn_in(cgroup.as_deref());
        if spawned.is_err() {
            if let Some(cgroup) = &cgroup {
                cgroup::remove(cgroup);
            }
        }
        let mut process = spawned?;
        process.cgroup = cgroup;
        Ok(process)
    }

    fn spawn_in(&self, cgroup: Option<&Path>) -> std::io::Result<VmmProcess> {
        let mut args = self.args.clone();
        let lifeline = match &self.jail {
            Some((root, _)) => {
                args.extend(["--jail".into(), root.as_os_str().to_os_string()]);
                args.extend(["--lifeline-fd".into(), LIFELINE_FD.to_string().into()]);
                Some(pipe()?)
            }
            None => None,
        };
        let program = c_string(self.program.as_os_str())?;
        let argv_owned = std::iter::once(Ok(program.clone()))
            .chain(args.iter().map(|a| c_string(a)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let spawned = std::env::var_os(crate::trace::TRACE_ENV).map(|_| {
            let now = crate::trace::monotonic_ns().to_string();
            (OsString::from(crate::trace::SPAWNED_ENV), OsString::from(now))
        });
        let env_owned = std::env::vars_os()
            .filter(|(k, _)| k != crate::trace::SPAWNED_ENV)
            .chain(spawned)
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                c_string(&kv)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let null_terminated = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain([std::ptr::null()])
                .collect::<Vec<_>>()
        };

        let dev_null = File::options().read(true).write(true).open("/dev/null")?;
        let mut fds = vec![(dev_null.as_raw_fd(), 0)];
        let mut stream = |output: Output, target: RawFd| -> std::io::Result<Option<(OwnedFd, OwnedFd)>> {
            match output {
                Output::Inherit => Ok(None),
                Output::Null => {
                    fds.push((dev_null.as_raw_fd(), target));
                    Ok(None)
                }
                Output::Piped => {
                    let (read, write) = pipe()?;
                    fds.push((write.as_raw_fd(), target));
                    Ok(Some((read, write)))
                }
            }
        };
        let stdout = stream(self.stdout, 1)?;
        let stderr = stream(self.stderr, 2)?;
        if let Some((read, _)) = &lifeline {
            fds.push((read.as_raw_fd(), LIFELINE_FD));
        }
        fds.extend(&self.fds);
        let (error_read, error_write) = pipe()?;
        let mut plan = ChildPlan {
            program,
            argv: null_terminated(&argv_owned),
            envp: null_terminated(&env_owned),
            spare: vec![-1; fds.len()],
            fds,
            process_group: self.process_group,
            // SAFETY: getpid has no preconditions.
            parent: self.jail.is_none().then(|| unsafe { libc::getpid() }),
            error_pipe: error_write.as_raw_fd(),
        };

        let cgroup_dir = cgroup.map(File::open).transpose()?;
        let mut pidfd: RawFd = -1;
        let mut clone_args = CloneArgs {
            flags: CLONE_PIDFD,
            pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if self.jail.is_some() {
            clone_args.flags |= CLONE_NEWPID | CLONE_NEWIPC;
        }
        if let Some(dir) = &cgroup_dir {
            clone_args.flags |= CLONE_INTO_CGROUP;
            clone_args.cgroup = dir.as_raw_fd() as u64;
        }
        // SAFETY: a fork-like clone (no CLONE_VM, no new stack): the child
        // runs on a copy of our memory and only calls `ChildPlan::run`.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                std::ptr::addr_of_mut!(clone_args),
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            // SAFETY: in the child, which execs or exits.
            unsafe { plan.run() }
        }
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match (e.raw_os_error(), self.jail.is_some()) {
                (Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL), true) => std::io::Error::other(format!(
                    "clone3 into a cgroup and new namespaces: {e} (the jail needs Linux 5.7 or later; HULL_JAIL=0 runs VMMs unjailed)"
                )),
                _ => std::io::Error::other(format!("clone3: {e}")),
            });
        }
        // SAFETY: clone3 made this descriptor for us.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        drop(error_write);
        drop(plan);
        let mut process = VmmProcess {
            pid: pid as u32,
            pidfd,
            stdout: stdout.map(|(read, _)| File::from(read)),
            stderr: stderr.map(|(read, _)| File::from(read)),
            status: None,
            _lifeline: lifeline.map(|(_, write)| write),
            cgroup: None,
        };
        let mut errno = [0u8; 4];
        let mut reported = 0;
        let mut error_read = File::from(error_read);
        while reported < errno.len() {
            match error_read.read(&mut errno[reported..]) {
                Ok(0) => break,
                Ok(n) => reported += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if reported == 0 {
            return Ok(process);
        }
        let _ = process.wait();
        Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
    }
}

impl VmmProcess {
    /// Its PID on the host.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// A jailed VMM's cgroup.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    fn reap(&mut self, flags: libc::c_int) -> std::io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw = 0;
        loop {
            // SAFETY: waits for our own child, which the pidfd keeps from being reused.
            match unsafe { libc::waitpid(self.pid as i32, &mut raw, flags) } {
                0 => return Ok(None),
                pid if pid > 0 => {
                    self.status = Some(ExitStatus::from_raw(raw));
                    return Ok(self.status);
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.reap(0).map(|status| status.unwrap_or(ExitStatus::from_raw(0)))
    }

    /// SIGKILL, unless it has already been reaped.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal on our own pidfd, no siginfo.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match ret {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if !matches!(self.try_wait(), Ok(Some(_))) {
            let _ = self.kill();
            let _ = self.wait();
        }
        crate::trace::mark("VMM process reaped");
        if let Some(cgroup) = &self.cgroup {
            cgroup::remove(cgroup);
            crate::trace::mark("its cgroup removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unjailed_child_gets_its_descriptors_streams_and_status() {
        let (read, write) = pipe().unwrap();
        let mut command = VmmCommand::new("/bin/sh");
        command
            .args(["-c", "echo out; echo err >&2; echo passed >&5; exit 7"])
            .pass_fd(write.as_raw_fd(), 5)
            .stdout(Output::Piped)
            .stderr(Output::Piped);
        let mut child = command.spawn().unwrap();
        drop(write);
        let text = |f: &mut Option<File>| {
            let mut s = String::new();
            f.take().unwrap().read_to_string(&mut s).unwrap();
            s
        };
        assert_eq!(text(&mut child.stdout), "out\n");
        assert_eq!(text(&mut child.stderr), "err\n");
        assert_eq!(text(&mut Some(File::from(read))), "passed\n");
        assert_eq!(child.wait().unwrap().code(), Some(7));
        assert!(child.cgroup().is_none());
    }

    #[test]
    fn a_missing_program_is_a_clear_error_and_kill_ends_a_running_one() {
        let e = VmmCommand::new("/nonexistent/hull-vmm").spawn().err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        let mut child = VmmCommand::new("/bin/sleep").arg("60").spawn().unwrap();
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_jailed_child_is_born_pid_1_in_its_own_cgroup_which_goes_with_it() {
        // Needs root and cgroup v2, as hull's jail does.
        let limits = Limits::new(64, 1, Some(500)).unwrap();
        let root = std::env::temp_dir();
        let mut command = VmmCommand::new("/bin/sh");
        command
            .args([
                "-c",
                "echo $$; cat /proc/self/cgroup; cat /proc/self/fdinfo/9 >/dev/null && echo lifeline",
            ])
            .jail(&root, limits)
            .stdout(Output::Piped);
        let mut child = command.spawn().unwrap();
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        // The jail's arguments were added for hull-vmm; sh ignores them.
        assert!(child.wait().unwrap().success());
        let cgroup = child.cgroup().map(Path::to_path_buf);
        drop(child);
        match cgroup {
            Some(cgroup) => {
                let name = cgroup.file_name().unwrap().to_string_lossy().into_owned();
                assert_eq!(out, format!("1\n0::/hull/{name}\nlifeline\n"));
                assert!(!cgroup.exists());
            }
            // A cgroup v1 host (this one's outer machine): no group, the rest alike.
            None => {
                assert!(!Path::new("/sys/fs/cgroup/cgroup.controllers").exists());
                assert!(out.starts_with("1\n") && out.ends_with("lifeline\n"), "{out}");
            }
        }
    }
}
