//! `--init`: a small init, as Docker's `docker-init` (tini), that is PID 1
//! of the container's PID namespace. It starts the command as its child (in
//! a process group of its own, the terminal's foreground one if there is a
//! terminal), forwards every signal it gets to it, reaps whatever is
//! orphaned to it, and exits as the command did (128 + N for signal N).
//! Without it the command is PID 1 itself: it ignores signals it has no
//! handler for (`docker stop` then waits its 10 s) and reaps nothing.
//!
//! The agent runs it as `/proc/self/exe` with `ARGV0 -- COMMAND...`, after
//! the container's root, user and capabilities are in place.

use std::ffi::CString;

/// The name it runs under, as Docker's init shows in `ps`.
pub const ARGV0: &str = "/sbin/docker-init";

/// How the agent runs `argv` under the init.
pub fn command_line(argv: &[String]) -> Vec<String> {
    [ARGV0.to_string(), "--".to_string()]
        .into_iter()
        .chain(argv.iter().cloned())
        .collect()
}

/// Whether this process was started as the init.
pub fn is_init(args: &[String]) -> bool {
    matches!(args, [argv0, dashes, _, ..] if argv0 == ARGV0 && dashes == "--")
}

/// Signals that are the process's own doing (a fault) or that a background
/// process gets from the terminal: never forwarded, never blocked.
const NOT_FORWARDED: &[libc::c_int] = &[
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGABRT,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// The init's `main`: `args` as `is_init` accepted them. Returns its exit
/// status.
pub fn main(args: &[String]) -> i32 {
    let command = &args[2..];
    let argv: Vec<CString> = match command.iter().map(|a| CString::new(a.as_bytes())).collect() {
        Ok(argv) => argv,
        Err(_) => return fatal("an argument holds a NUL byte", 126),
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // SAFETY: plain libc calls on locally owned values; the init has one
    // thread, so its child may do anything before its exec.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"docker-init".as_ptr());
        // Orphans come to it even beside the agent (`--pid host`), where it
        // is not PID 1.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        let mut forwarded: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut forwarded);
        for &signal in NOT_FORWARDED {
            libc::sigdelset(&mut forwarded, signal);
        }
        let mut original: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &forwarded, &mut original);
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);

        let child = libc::fork();
        if child < 0 {
            return fatal(&format!("fork: {}", std::io::Error::last_os_error()), 126);
        }
        if child == 0 {
            libc::setpgid(0, 0);
            // Fails without a terminal, which is fine.
            libc::tcsetpgrp(0, libc::getpid());
            libc::signal(libc::SIGTTIN, libc::SIG_DFL);
            libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            libc::sigprocmask(libc::SIG_SETMASK, &original, std::ptr::null_mut());
            libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
            // This process has one thread: formatting after the fork is safe.
            let e = std::io::Error::last_os_error();
            let status = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            libc::_exit(fatal(&format!("exec {} failed: {e}", command[0]), status));
        }
        serve(child, &forwarded)
    }
}

/// Forwards signals to `child` and reaps until it has ended.
///
/// # Safety
/// `forwarded` is the blocked set; `child` is this process's child.
unsafe fn serve(child: libc::pid_t, forwarded: &libc::sigset_t) -> i32 {
    let tick = libc::timespec { tv_sec: 1, tv_nsec: 0 };
    loop {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let signal = libc::sigtimedwait(forwarded, &mut info, &tick);
        if signal > 0 && signal != libc::SIGCHLD {
            libc::kill(child, signal);
        }
        loop {
            let mut status = 0;
            let reaped = libc::waitpid(-1, &mut status, libc::WNOHANG);
            if reaped <= 0 {
                break;
            }
            if reaped == child {
                return if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    libc::WEXITSTATUS(status)
                };
            }
        }
    }
}

fn fatal(message: &str, status: i32) -> i32 {
    eprintln!("docker-init: {message}");
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_recognised_as_the_init() {
        let line = command_line(&["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!(line, [ARGV0, "--", "sh", "-c", "exit 3"]);
        assert!(is_init(&line));
        assert!(!is_init(&line[..2]));
        assert!(!is_init(&["/bin/sh".into(), "--".into(), "x".into()]));
    }

    #[test]
    fn it_exits_as_its_command_and_forwards_signals() {
        let run = |argv: &[&str]| {
            let args: Vec<String> = command_line(&argv.iter().map(|a| a.to_string()).collect::<Vec<_>>());
            // In a child process: the init blocks signals and forks.
            // SAFETY: fork in a test; the child only runs the init and exits.
            match unsafe { libc::fork() } {
                0 => unsafe { libc::_exit(main(&args)) },
                pid => pid,
            }
        };
        let status_of = |pid: libc::pid_t| {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            libc::WEXITSTATUS(status)
        };
        assert_eq!(status_of(run(&["sh", "-c", "exit 7"])), 7);
        assert_eq!(status_of(run(&["/no/such/program"])), 127);
        // `sleep` has no SIGTERM handler: only a forwarded signal ends it soon.
        let started = std::time::Instant::now();
        let init = run(&["sleep", "30"]);
        // Once its child runs, its signals are blocked (set before the fork).
        while std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
            .unwrap()
            .trim()
            .is_empty()
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(init, libc::SIGTERM) };
        assert_eq!(status_of(init), 128 + libc::SIGTERM);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
