//! A `hulld` of a test's own: a temporary data directory (sharing the
//! machine's guest set-up) and socket, driven with the real `docker` CLI.
//! Dropping it stops hulld and every container it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Hulld {
    child: Option<Child>,
    /// hulld's arguments beyond its socket and data directory.
    extra_args: Vec<String>,
    /// Environment variables hulld (and so its containers' VMMs) gets.
    extra_env: Vec<(String, String)>,
    pub work: PathBuf,
    pub data: PathBuf,
    pub socket: PathBuf,
    /// The name of this hulld's nftables table and bridges (`HULL_NET_NAME`),
    /// its own so that it never touches the host's hull.
    pub net_name: String,
    /// The network namespace hulld runs in (another "host"), if not ours.
    pub netns: Option<String>,
    /// Another build's `target/release` (`start_build`), whose hulld runs
    /// with no argument of ours; this workspace's if `None`.
    build: Option<PathBuf>,
}

/// A network name no other test hulld of this machine has.
fn unique_net_name() -> String {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t{:07x}", (std::process::id() * 16 + n) & 0xfff_ffff)
}

impl Hulld {
    /// Starts hulld in a fresh directory named after `name`.
    pub fn start(name: &str) -> Result<Hulld> {
        Hulld::start_with(name, &[])
    }

    /// The same, with more of hulld's arguments (`--tls-listen`, …).
    pub fn start_with(name: &str, extra_args: &[&str]) -> Result<Hulld> {
        Hulld::start_with_env(name, extra_args, &[])
    }

    /// The same, with environment variables of its own.
    pub fn start_with_env(name: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Result<Hulld> {
        Hulld::start_as(name, extra_args, env, None)
    }

    /// A hulld in network namespace `netns` (made by the test): another
    /// host, with its own addresses, bridges and firewall. The docker CLI
    /// still reaches it on its unix socket.
    pub fn start_in_netns(name: &str, netns: &str, extra_args: &[&str]) -> Result<Hulld> {
        Hulld::start_as(name, extra_args, &[], Some(netns))
    }

    /// A hulld of another build, for a benchmark's baseline: `release`
    /// is that build's `target/release` (its hulld, hull-shim and hull-vmm),
    /// beside which `test-guest` holds its guest (`hull setup` of that
    /// build, with HULL_DATA_DIR there). It gets no argument but its
    /// socket and data directory: an older hulld may know none of ours.
    pub fn start_build(name: &str, release: &Path) -> Result<Hulld> {
        let guest = release
            .parent()
            .map(|target| target.join("test-guest").join("guest.json"))
            .filter(|guest| guest.is_file())
            .with_context(|| format!("no test-guest/guest.json beside {}", release.display()))?;
        Hulld::start_from(name, &[], &[], None, Some((release, &guest)))
    }

    fn start_as(name: &str, extra_args: &[&str], env: &[(&str, &str)], netns: Option<&str>) -> Result<Hulld> {
        Hulld::start_from(name, extra_args, env, netns, None)
    }

    fn start_from(
        name: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        netns: Option<&str>,
        build: Option<(&Path, &Path)>,
    ) -> Result<Hulld> {
        runtime::network::host::load_modules();
        let work = std::env::temp_dir().join(format!("hulld-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let data = work.join("data");
        std::fs::create_dir_all(&data)?;
        // The tests' guest (kernel, initramfs), when there is one: tests
        // that start no VM need none.
        match build {
            // Its own guest, and templates it makes itself.
            Some((_, guest)) => {
                std::fs::copy(guest, data.join("guest.json"))?;
            }
            None => {
                let guest = crate::test_guest_dir().join("guest.json");
                let _ = std::fs::copy(guest, data.join("guest.json"));
                crate::template_cache::seed(&data);
            }
        }
        let mut hulld = Hulld {
            child: None,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            socket: work.join("docker.sock"),
            work,
            data,
            net_name: unique_net_name(),
            netns: netns.map(str::to_string),
            build: build.map(|(release, _)| release.to_path_buf()),
        };
        hulld.spawn()?;
        Ok(hulld)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("hulld.log"))?;
        let hulld = match &self.build {
            Some(release) => release.join("hulld"),
            None => crate::boot::workspace_binary("hulld")?,
        };
        let mut command = match &self.netns {
            // `ip netns exec` execs hulld: the child's PID is hulld's.
            Some(netns) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", netns]).arg(hulld);
                ip
            }
            None => Command::new(hulld),
        };
        let child = command
            .arg("--socket")
            .arg(&self.socket)
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.extra_args)
            // Standby VMs only where a test asks for them (`vm_standby`):
            // an idle VM beside every test's would share the test host's
            // one vCPU with the VMs under test.
            .args(
                match self.build.is_some() || self.extra_args.iter().any(|a| a.starts_with("--standby-vms")) {
                    true => &[][..],
                    false => &["--standby-vms", "0"][..],
                },
            )
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env("HULL_RUN_DIR", self.work.join("run"))
            .env("HULL_NET_NAME", &self.net_name)
            // Several clones booting at once inside the emulated test host,
            // beside another one, took over the default 120 s to reach their
            // agents on a slow day: a hang is still caught, later.
            .env("HULL_BOOT_TIMEOUT", "600")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting hulld")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if Instant::now() > deadline {
                bail!("hulld did not start serving: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// hulld's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("hulld.log")).unwrap_or_default()
    }

    /// Stops hulld (SIGTERM) and starts it again; containers keep running.
    pub fn restart(&mut self) -> Result<()> {
        self.stop_daemon();
        self.spawn()
    }

    /// Kills hulld outright (SIGKILL), as a crash would; its containers'
    /// supervisors live on. `start_again` brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts hulld again after `kill`.
    pub fn start_again(&mut self) -> Result<()> {
        self.spawn()
    }

    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `docker ARGS` against this hulld.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_command(args).output().expect("running the docker CLI")
    }

    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.work.join("docker-config"))
            .env_remove("DOCKER_CONTEXT");
        command
    }

    /// `shell` (docker commands, through `sh -c`) on a terminal of its own,
    /// as a user types at one (`script` makes the pty); `input` is typed,
    /// then the end of input. Output is the terminal's (echo included).
    pub fn in_terminal(&self, shell: &str, input: &[u8]) -> Output {
        let mut child = self.terminal(shell);
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, input).expect("typing into the terminal");
        }
        child.wait_with_output().expect("waiting for script")
    }

    /// `shell` on a terminal of its own, typed at step by step: each step's
    /// keys once the screen shows its text (so that keys a terminal in
    /// cooked mode would take, such as ctrl-q, reach a client that has made
    /// it raw). The exit status and the screen; a step or an end that does
    /// not come within two minutes fails the test, showing the screen.
    pub fn typed_in_terminal(&self, shell: &str, steps: &[(&str, &[u8])]) -> (Option<i32>, String) {
        use std::io::{Read, Write};
        use std::sync::{Arc, Mutex};
        let mut child = self.terminal(shell);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let (screen, mut stdout) = (screen.clone(), child.stdout.take().expect("script's output"));
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stdout.read(&mut buf) {
                    screen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        };
        let shown = || String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
        let mut stdin = child.stdin.take().expect("script's input");
        for (wait_for, keys) in steps {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !shown().contains(wait_for) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("the terminal did not show {wait_for:?} within 2 minutes:\n{}", shown());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            stdin.write_all(keys).expect("typing into the terminal");
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for script") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the terminal's command did not end within 2 minutes:\n{}", shown());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(stdin);
        let _ = reader.join();
        (status.code(), shown())
    }

    fn terminal(&self, shell: &str) -> Child {
        Command::new("script")
            .args(["-qec", shell, "/dev/null"])
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.work.join("docker-config"))
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running script (util-linux)")
    }

    /// One raw HTTP/1.1 request to hulld's socket (it should say
    /// `Connection: close`): the answer's head and body.
    pub fn raw(&self, request: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut conn = std::os::unix::net::UnixStream::connect(&self.socket).expect("connecting to hulld");
        conn.write_all(request.as_bytes()).expect("sending the request");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("reading the answer");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        (head.to_string(), body.to_string())
    }

    /// `docker inspect --format FORMAT CONTAINER`, trimmed.
    pub fn inspect(&self, format: &str, container: &str) -> String {
        ok(&self.docker(&["inspect", "--format", format, container]))
            .trim()
            .to_string()
    }

    /// The standby VMs standing ready (`hulld --standby-vms`): their
    /// directories, `DATA/standby/NAME`.
    pub fn standing_standbys(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.data.join("standby"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join(runtime::standby::STANDING_MARKER).exists())
            .collect()
    }

    /// The supervisors (hull-shim) of containers that still run.
    pub fn running_supervisors(&self) -> Vec<u32> {
        supervisors(&self.data)
    }

    /// The processes of `programs` (a pgrep pattern such as
    /// `hull-(vmm|shim)`) that name this hulld's data directory, as
    /// hulld, supervisors and VMMs do: "PID: command line" each.
    pub fn processes_of(&self, programs: &str) -> Vec<(u32, String)> {
        crate::own_dirs::processes_naming(programs, &self.data)
    }

    /// Asserts that no container of this hulld left a supervisor or VMM.
    pub fn assert_no_leftovers(&self) {
        eventually("every supervisor to end", || self.running_supervisors().is_empty());
        let left = self.processes_of("hull-(vmm|shim)");
        assert!(left.is_empty(), "processes of this data directory are left: {left:#?}");
    }

    /// A hulld started with `args` and a registry of its own holding
    /// `test/box:v1`, busybox with image config `config` (not pulled):
    /// (hulld, registry, image).
    pub fn with_registry(
        name: &str,
        args: &[&str],
        config: serde_json::Value,
    ) -> Result<(Hulld, crate::oci::Registry, String)> {
        let hulld = Hulld::start_with(name, args)?;
        let registry = crate::oci::Registry::start(&format!("hulld-{name}"), None)?;
        let image = crate::oci::push_image(&registry, &hulld.work, crate::oci::busybox_image(config), "test/box:v1")?;
        Ok((hulld, registry, image))
    }

    /// A hulld with `test/box:v1` (busybox, `sh`) pulled from a registry of
    /// its own and run once, so the template exists (made, or linked from
    /// an earlier test's: `template_cache`): (hulld, registry, image).
    pub fn with_busybox(name: &str) -> Result<(Hulld, crate::oci::Registry, String)> {
        Hulld::with_busybox_args(name, &[])
    }

    /// `with_busybox`, hulld started with `args` too.
    pub fn with_busybox_args(name: &str, args: &[&str]) -> Result<(Hulld, crate::oci::Registry, String)> {
        let config = serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]});
        let (hulld, registry, image) = Hulld::with_registry(name, args, config)?;
        ok(&hulld.docker(&["pull", "-q", &image]));
        // The first container makes the template every later one is cloned from.
        assert_eq!(ok(&hulld.docker(&["run", "--rm", &image, "echo", "first"])), "first\n");
        crate::template_cache::keep(&hulld.data);
        Ok((hulld, registry, image))
    }
}

fn supervisors(data: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(data.join("containers")) else {
        return Vec::new();
    };
    // The runtime's own reading: running only while the recorded supervisor lives.
    entries
        .flatten()
        .map(|e| runtime::container::ContainerDir {
            id: e.file_name().to_string_lossy().into_owned(),
            path: e.path(),
        })
        .filter_map(|dir| dir.state().ok().flatten())
        .filter(|state| state.status == runtime::container::RunStatus::Running)
        .map(|state| state.pid)
        .collect()
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    last(&text.lines().collect::<Vec<_>>(), lines).join("\n")
}

/// The last `count` of `lines`.
fn last<'a>(lines: &'a [&'a str], count: usize) -> &'a [&'a str] {
    &lines[lines.len().saturating_sub(count)..]
}

/// What a failing test shows of a guest's console: a kernel oops from its
/// first line (the kind of fault is named there, the register dump comes
/// after), and the console's last 25 lines.
fn console_excerpt(text: &str) -> String {
    const OOPS: [&str; 8] = [
        "BUG: ",
        "Oops",
        "general protection fault",
        "double fault",
        "invalid opcode",
        "Kernel panic",
        "WARNING: ",
        "traps: ",
    ];
    let lines: Vec<&str> = text.lines().collect();
    let tail = last(&lines, 25);
    let mut excerpt = String::new();
    if let Some(first) = lines.iter().position(|l| OOPS.iter().any(|o| l.contains(o))) {
        let from = first.saturating_sub(3);
        let to = (first + 60).min(lines.len() - tail.len());
        if from < to {
            excerpt = format!(
                "(from line {}, a kernel oops)\n{}\n[…]\n",
                from + 1,
                lines[from..to].join("\n")
            );
        }
    }
    excerpt + &format!("(last {} lines)\n", tail.len()) + &tail.join("\n")
}

impl Hulld {
    /// On a failing test: what hulld and each container's guest said last,
    /// since the docker CLI shows only the status of some failures (an exec
    /// it could not upgrade is "received 409", without hulld's reason).
    fn print_diagnostics(&self) {
        eprintln!(
            "== hulld's log, last 60 lines\n{}",
            tail(&self.work.join("hulld.log"), 60)
        );
        let containers = self.data.join("containers");
        for entry in std::fs::read_dir(containers).into_iter().flatten().flatten() {
            let console = entry.path().join("console.log");
            if console.exists() {
                let text = std::fs::read_to_string(&console).unwrap_or_default();
                eprintln!(
                    "== container {} console\n{}",
                    entry.file_name().to_string_lossy(),
                    console_excerpt(&text)
                );
            }
        }
    }
}

impl Drop for Hulld {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_diagnostics();
        }
        self.stop_daemon();
        for pid in supervisors(&self.data) {
            // SAFETY: kill(2) of a supervisor this test's hulld started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(200));
        // This hulld's own tables (NAT and ports; policies) and default
        // bridge (taps went with the VMs).
        for family in ["ip", "bridge"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, &self.net_name])
                .stderr(Stdio::null())
                .status();
        }
        for entry in std::fs::read_dir("/sys/class/net").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // The default bridge (NAME0) and user networks' (NAME-xxxxxx).
            if name == format!("{}0", self.net_name) || name.starts_with(&format!("{}-", self.net_name)) {
                let _ = Command::new("ip")
                    .args(["link", "delete", &name])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        crate::template_cache::keep(&self.data);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Polls `check` for up to two minutes (the test host is an emulated machine).
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Process `pid`'s cgroup directory under /sys/fs/cgroup (cgroup v2).
pub fn cgroup_dir(pid: u32) -> Option<PathBuf> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroup.trim().strip_prefix("0::")?;
    Some(Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')))
}

/// Bytes as text, for assertions on a command's output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The standard output of a docker command that must have succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "docker failed ({:?}): {}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[cfg(test)]
mod tests {
    use super::console_excerpt;

    #[test]
    fn a_console_excerpt_shows_an_oops_from_its_first_line() {
        let mut console: Vec<String> = (0..200).map(|i| format!("[{i}] booting")).collect();
        console[100] = "[100] BUG: unable to handle page fault for address: 0000000000001234".into();
        let excerpt = console_excerpt(&console.join("\n"));
        assert!(excerpt.contains("[97] booting\n[98] booting\n[99] booting\n[100] BUG: unable"));
        assert!(excerpt.contains("[159] booting\n[…]"));
        assert!(excerpt.contains("(last 25 lines)\n[175] booting") && excerpt.ends_with("[199] booting"));
        assert!(!excerpt.contains("[96] booting"));
        // Without an oops, or with one among the last lines: the tail alone.
        let quiet = console_excerpt(&console[150..].join("\n"));
        assert!(quiet.starts_with("(last 25 lines)\n[175] booting"), "{quiet}");
        assert_eq!(console_excerpt(""), "(last 0 lines)\n");
    }
}
