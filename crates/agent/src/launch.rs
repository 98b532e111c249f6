//! Starts a command without copying the agent: `clone(CLONE_VM |
//! CLONE_VFORK)`, as `posix_spawn` does, then the caller's set-up (chroot,
//! credentials...) and `execve` in the child. A `fork` of the
//! multi-threaded agent copied its page tables and left every page
//! copy-on-write: 10-14 ms of a traced start in a nested guest.
//!
//! The child shares the agent's memory until it execs, with the agent's
//! other threads running: everything it uses is made before the clone, and
//! it makes only raw system calls (no allocation, no lock, no glibc
//! `setuid`, which would signal the agent's threads to change theirs too).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The child's stack: set-up and `execve` need little.
const CHILD_STACK: usize = 128 * 1024;

/// Where the command looks when its environment has no PATH (Docker's).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One of the command's standard streams.
pub enum Io {
    /// `/dev/null`.
    Null,
    /// A pipe whose other end the agent keeps.
    Pipe,
    /// This descriptor (a terminal's side).
    Fd(OwnedFd),
}

/// What the child runs between the clone and the exec: raw system calls
/// only, on memory made before the clone.
pub type SetUp<'a> = &'a (dyn Fn() -> io::Result<()> + Sync);

/// A started command: its PID, and the agent's ends of its pipes.
pub struct Launched {
    pub pid: u32,
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

/// Why a launch failed, and whether the set-up or the exec failed.
#[derive(Debug)]
pub struct LaunchError {
    pub error: io::Error,
    /// The program was never reached: the set-up failed.
    pub in_set_up: bool,
}

/// Everything the child reads, made before the clone.
struct Plan<'a> {
    /// Where the program may be, in the order an `execvp` tries them.
    candidates: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// The descriptors that become the child's 0, 1 and 2.
    stdio: [RawFd; 3],
    set_up: SetUp<'a>,
    /// The child's errno, and whether it came from the set-up; 0 while none.
    errno: AtomicI32,
    in_set_up: AtomicBool,
    /// Set just before the first `execve`: a child that ended without it
    /// died in its set-up (by a signal: every other way out sets `errno`).
    exec_reached: AtomicBool,
}

/// Starts `program` with `argv` (its name for itself first) and `env` (whole
/// `KEY=VALUE` entries) on the streams `stdio`. A program without a slash
/// is looked for along the PATH of `env`, after the set-up (in the
/// container's root). The caller reaps the child (and a child whose exec
/// failed has exited already).
pub fn launch(
    program: &str,
    argv: &[String],
    env: &[String],
    stdio: [Io; 3],
    set_up: SetUp,
) -> Result<Launched, LaunchError> {
    let early = |error: io::Error| LaunchError { error, in_set_up: true };
    let nul = |_| early(io::Error::new(io::ErrorKind::InvalidInput, "an argument contains NUL"));
    let candidates = candidates(program, env).map_err(nul)?;
    let c_strings = |strings: &[String]| {
        strings
            .iter()
            .map(|s| CString::new(s.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(nul)
    };
    let (argv_owned, env_owned) = (c_strings(argv)?, c_strings(env)?);
    let null_terminated = |strings: &[CString]| {
        strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };

    // The child's ends live until the clone returns; the agent's are kept.
    let [stdin, stdout, stderr] = stdio;
    let (child_in, agent_in) = child_end(stdin, true).map_err(early)?;
    let (child_out, agent_out) = child_end(stdout, false).map_err(early)?;
    let (child_err, agent_err) = child_end(stderr, false).map_err(early)?;
    let plan = Plan {
        candidates,
        argv: null_terminated(&argv_owned),
        envp: null_terminated(&env_owned),
        stdio: [child_in.as_raw_fd(), child_out.as_raw_fd(), child_err.as_raw_fd()],
        set_up,
        errno: AtomicI32::new(0),
        in_set_up: AtomicBool::new(false),
        exec_reached: AtomicBool::new(false),
    };
    let stack = ChildStack::new().map_err(early)?;

    // No signal handler may run on the child's stack before it execs.
    // SAFETY: sigset_t values of our own; the mask is restored below.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut was: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut was);
    }
    // SAFETY: the child runs `child_main` on its own stack with `plan`,
    // which outlives it: CLONE_VFORK returns only once it has exec'd or
    // exited.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &plan as *const Plan as *mut libc::c_void,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &was, std::ptr::null_mut()) };
    drop(stack);
    if pid < 0 {
        return Err(early(clone_error));
    }
    let errno = plan.errno.load(Ordering::SeqCst);
    if errno != 0 || !plan.exec_reached.load(Ordering::SeqCst) {
        // It has exited: reap it here, before anyone else takes its status.
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(match errno {
            0 => LaunchError {
                error: io::Error::other(match libc::WIFSIGNALED(status) {
                    true => format!("killed by signal {} before it ran", libc::WTERMSIG(status)),
                    false => format!("ended before it ran (status {status:#x})"),
                }),
                in_set_up: true,
            },
            errno => LaunchError {
                error: io::Error::from_raw_os_error(errno),
                in_set_up: plan.in_set_up.load(Ordering::SeqCst),
            },
        });
    }
    Ok(Launched {
        pid: pid as u32,
        stdin: agent_in,
        stdout: agent_out,
        stderr: agent_err,
    })
}

/// The child's stack, mapped apart with an inaccessible page below it: a
/// child that ran past it would fault there, not write over the agent's
/// heap.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        let guard = page_size();
        let len = CHILD_STACK + guard;
        // SAFETY: a new private anonymous mapping, unmapped on drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Where the child's stack starts: it grows down from the end, 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        ((self.base as usize + self.len) & !15) as *mut libc::c_void
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, no longer used (the child has
        // exec'd or exited when `launch` drops it).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as usize,
        _ => 4096,
    }
}

/// The places `program` is tried, as `execvp` does: itself if it has a
/// slash, else each directory of `env`'s PATH (an empty one is the
/// working directory).
fn candidates(program: &str, env: &[String]) -> Result<Vec<CString>, std::ffi::NulError> {
    if program.contains('/') {
        return Ok(vec![CString::new(program)?]);
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| match dir {
            "" => CString::new(program),
            dir => CString::new(format!("{}/{program}", dir.trim_end_matches('/'))),
        })
        .collect()
}

/// The child's descriptor for one stream, and the agent's end if a pipe.
/// Every descriptor made here is close-on-exec; the child's are dup'd.
fn child_end(io: Io, input: bool) -> io::Result<(OwnedFd, Option<File>)> {
    match io {
        Io::Fd(fd) => Ok((fd, None)),
        Io::Null => Ok((
            File::options().read(input).write(!input).open("/dev/null")?.into(),
            None,
        )),
        Io::Pipe => {
            let mut fds = [0; 2];
            // SAFETY: pipe2 fills two descriptors, owned below.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both are new and ours alone.
            let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            Ok(match input {
                true => (read, Some(File::from(write))),
                false => (write, Some(File::from(read))),
            })
        }
    }
}

/// The child: its streams, the caller's set-up, signals as a new program
/// expects them, then each candidate in turn. Reports an errno in `plan`
/// and exits if none runs.
extern "C" fn child_main(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `launch` passes its Plan, alive until this child execs or exits.
    let plan = unsafe { &*(plan as *const Plan) };
    let fail = |errno: i32, in_set_up: bool| -> libc::c_int {
        plan.in_set_up.store(in_set_up, Ordering::SeqCst);
        plan.errno.store(errno.max(1), Ordering::SeqCst);
        // SAFETY: ends this child without running the agent's exit handlers.
        unsafe { libc::_exit(127) }
    };
    for (target, &fd) in plan.stdio.iter().enumerate() {
        let target = target as RawFd;
        // SAFETY: descriptors that stay open until the clone returns.
        let ok = unsafe {
            match fd == target {
                // dup2 onto itself keeps close-on-exec: clear it.
                true => libc::fcntl(fd, libc::F_SETFD, 0) == 0,
                false => libc::dup2(fd, target) == target,
            }
        };
        if !ok {
            return fail(errno(), true);
        }
    }
    if let Err(e) = (plan.set_up)() {
        return fail(e.raw_os_error().unwrap_or(libc::EIO), true);
    }
    // SAFETY: plain system calls on values of our own: the agent ignores
    // SIGPIPE (a new program expects the default) and the mask was full.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    // As execvp: a directory where it is not, or cannot be searched, is
    // passed over; a program found but not executable is reported as such.
    let mut denied = false;
    plan.exec_reached.store(true, Ordering::SeqCst);
    for candidate in &plan.candidates {
        // SAFETY: NUL-terminated strings and null-terminated arrays of them.
        unsafe { libc::execve(candidate.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
        match errno() {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            other => return fail(other, false),
        }
    }
    fail(if denied { libc::EACCES } else { libc::ENOENT }, false)
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_bare_name_is_looked_for_along_the_path_in_order() {
        let env = vec!["A=1".to_string(), "PATH=/usr/bin:/bin/::/sbin".to_string()];
        let found = candidates("ls", &env).unwrap();
        let expected: Vec<CString> = ["/usr/bin/ls", "/bin/ls", "ls", "/sbin/ls"]
            .iter()
            .map(|p| CString::new(*p).unwrap())
            .collect();
        assert_eq!(found, expected);
        assert_eq!(candidates("./ls", &env).unwrap(), vec![CString::new("./ls").unwrap()]);
        assert_eq!(candidates("ls", &[]).unwrap().len(), DEFAULT_PATH.split(':').count());
    }

    #[test]
    fn a_command_runs_with_its_arguments_environment_and_streams() {
        let set_up = || Ok(());
        let launched = launch(
            "sh",
            &[
                "sh".into(),
                "-c".into(),
                "echo \"$0 $GREETING\"; echo oops >&2; exit 3".into(),
            ],
            &["GREETING=hello".into(), "PATH=/nowhere:/bin:/usr/bin".into()],
            [Io::Null, Io::Pipe, Io::Pipe],
            &set_up,
        )
        .unwrap();
        let mut out = String::new();
        launched.stdout.unwrap().read_to_string(&mut out).unwrap();
        let mut err = String::new();
        launched.stderr.unwrap().read_to_string(&mut err).unwrap();
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(launched.pid as i32, &mut status, 0) };
        assert_eq!((out.as_str(), err.as_str()), ("sh hello\n", "oops\n"));
        assert_eq!(libc::WEXITSTATUS(status), 3);
    }

    #[test]
    fn the_childs_stack_has_an_inaccessible_page_below_it() {
        let stack = ChildStack::new().unwrap();
        let base = stack.base as usize;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let guard = maps
            .lines()
            .find(|line| line.starts_with(&format!("{base:x}-")))
            .unwrap_or_else(|| panic!("no mapping at {base:x}"));
        assert_eq!(guard.split_whitespace().nth(1), Some("---p"), "{guard}");
        let top = stack.top() as usize;
        assert!(top.is_multiple_of(16) && top <= base + stack.len && top > base + page_size());
    }

    #[test]
    fn a_missing_program_and_a_failed_set_up_are_told_apart() {
        let fine = || Ok(());
        let missing = launch(
            "no-such-program-here",
            &["x".into()],
            &["PATH=/bin".into()],
            [Io::Null, Io::Null, Io::Null],
            &fine,
        )
        .err()
        .unwrap();
        assert_eq!(missing.error.kind(), io::ErrorKind::NotFound);
        assert!(!missing.in_set_up);
        let refuse = || Err(io::Error::from_raw_os_error(libc::EPERM));
        let refused = launch(
            "/bin/true",
            &["true".into()],
            &[],
            [Io::Null, Io::Null, Io::Null],
            &refuse,
        )
        .err()
        .unwrap();
        assert_eq!(refused.error.raw_os_error(), Some(libc::EPERM));
        assert!(refused.in_set_up);
    }

    #[test]
    fn a_child_killed_in_its_set_up_is_no_start() {
        // Raw syscalls: the child shares the test thread's TLS, so glibc's
        // raise() would name that thread.
        // SAFETY: kill of the calling process (the child) by its own PID.
        let die = || unsafe {
            libc::syscall(libc::SYS_kill, libc::syscall(libc::SYS_getpid), libc::SIGKILL);
            Ok(())
        };
        let killed = launch("/bin/true", &["true".into()], &[], [Io::Null, Io::Null, Io::Null], &die)
            .err()
            .unwrap();
        assert!(killed.in_set_up);
        assert_eq!(killed.error.to_string(), "killed by signal 9 before it ran");
    }
}
