//! The guest's network: loopback, the container's NICs (MAC, MTU,
//! addresses, default route), and its /etc/hosts, /etc/resolv.conf and
//! /etc/hostname. As with Docker, those files live outside the container's
//! filesystem (in the agent's own RAM root) and are bind-mounted over it,
//! so the image's files are never rewritten.

use std::ffi::CString;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netlink::Netlink;
use proto::{GuestInterface, GuestNetwork, HostEntry, RunSpec};

/// Where the generated files are kept (the agent's root, not the container's).
pub(crate) const FILES: &str = "/run/hull/net";
/// The files the agent writes there and binds over a container's `/etc/`.
pub(crate) const GENERATED_FILES: [&str; 3] = ["hosts", "hostname", "resolv.conf"];

/// virtio_net probes its devices once the agent loads it: a NIC may show up
/// a moment after the agent asks for it.
const NIC_WAIT: Duration = Duration::from_secs(2);
const NIC_POLL: Duration = Duration::from_millis(5);

/// One NIC's settings, checked.
#[derive(Debug, Clone, PartialEq)]
struct Nic {
    slot: u8,
    mac: [u8; 6],
    addresses: Vec<(IpAddr, u8)>,
    gateway: Option<Ipv4Addr>,
    mtu: u32,
}

/// The NICs as they are set now: what a later change starts from.
static CURRENT: Mutex<Vec<Nic>> = Mutex::new(Vec::new());

/// Whether loopback came up before the template's snapshot: then every
/// clone has it up, and a container without NICs needs no netlink at all.
static LOOPBACK_UP: AtomicBool = AtomicBool::new(false);

/// The netlink socket, opened once at boot: a clone finds it open (the
/// guest kernel's state is the template's), as it finds loopback up.
static NETLINK: Mutex<Option<Netlink>> = Mutex::new(None);

/// The NICs the guest had at the template's snapshot, in slot order: every
/// clone has the template's devices, so it need not look for them again.
static NICS_AT_BOOT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The NICs a standby's `Prepare` brought up ahead (`raise_nics`), by boot
/// name, each with the IPv6 address generation mode it had: raised with
/// none (its MAC is still the template's), and given it back by the
/// container's set-up once its MAC is set, which makes its link-local
/// address from that MAC.
static RAISED: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());

/// `IN6_ADDR_GEN_MODE_NONE`: no link-local address when the link comes up.
const NO_LINK_LOCAL: &str = "1";

fn addr_gen_mode(nic: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{nic}/addr_gen_mode")
}

/// Brings every NIC up before a container is known (a standby's
/// `Prepare`): filling a NIC's receive ring on the way up is the dearest
/// step of a container's network set-up in a clone (each buffer is memory
/// the clone touches first). Nothing reaches the NICs meanwhile: a
/// standby's are on nothing.
pub fn raise_nics() -> Result<(), String> {
    let names = NICS_AT_BOOT.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut raised = Vec::new();
    let result = with_netlink(|nl| {
        for name in names {
            let failed = |e: &dyn std::fmt::Display| format!("raising {name}: {e}");
            let mode_path = addr_gen_mode(&name);
            let mode = fs::read_to_string(&mode_path).ok().map(|m| m.trim().to_string());
            if mode.is_some() {
                fs::write(&mode_path, NO_LINK_LOCAL).map_err(|e| failed(&e))?;
            }
            // Noted at once: whatever fails next, the start gives it back.
            raised.push((name.clone(), mode));
            let index = nl
                .link_index(&name)
                .map_err(|e| failed(&e))?
                .ok_or_else(|| failed(&"no such interface"))?;
            nl.set_up(index).map_err(|e| failed(&e))?;
        }
        Ok(())
    });
    RAISED.lock().unwrap_or_else(|e| e.into_inner()).extend(raised);
    result
}

/// Once the container's command runs (off its start's path: a tentative
/// IPv6 link-local address a moment later changes nothing a program sees,
/// nor does a NIC it has no address on going down then): each NIC raised
/// ahead gets its IPv6 address generation mode back (a NIC the container
/// uses then makes its link-local address from its own MAC); one it does
/// not use goes down. The NICs in use are the current ones, so a `network
/// connect` that came first is kept.
pub fn settle_raised_nics() -> Result<(), String> {
    let current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if RAISED.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
        return Ok(());
    }
    with_netlink(|nl| settle_raised(nl, &current))?;
    crate::steps::done("network: NICs raised ahead settled");
    Ok(())
}

fn settle_raised(nl: &mut Netlink, used: &[Nic]) -> Result<(), String> {
    let boot_names = NICS_AT_BOOT.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut raised = RAISED.lock().unwrap_or_else(|e| e.into_inner());
    for (name, mode) in raised.drain(..) {
        let slot = boot_names.iter().position(|n| *n == name);
        let in_use = used.iter().any(|nic| Some(usize::from(nic.slot)) == slot);
        if let Some(mode) = mode {
            fs::write(addr_gen_mode(&name), mode).map_err(|e| format!("{name}: {e}"))?;
        }
        if !in_use {
            // Down after the mode is back: going down takes every address
            // away, the link-local one just made from the template's MAC
            // (on a NIC plugged into nothing) included; a later `network
            // connect` sets the NIC's MAC before it comes up again.
            if let Some(index) = nl.link_index(&name).map_err(|e| format!("{name}: {e}"))? {
                nl.set_down(index).map_err(|e| format!("{name}: {e}"))?;
            }
        }
    }
    Ok(())
}

/// Brings loopback up, opens netlink and notes the NICs; done once at boot,
/// so every clone starts with them.
pub fn prepare() -> Result<(), String> {
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    set_loopback_up(&mut nl)?;
    LOOPBACK_UP.store(true, Ordering::Relaxed);
    *NETLINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(nl);
    let nics = virtio_nics().map_err(|e| format!("listing the NICs: {e}"))?;
    // Only a whole list: one taken while a NIC was still being probed
    // would put the others in the wrong slots in every clone.
    if nics.len() == virtio_net_devices() {
        *NICS_AT_BOOT.lock().unwrap_or_else(|e| e.into_inner()) = nics;
    }
    Ok(())
}

/// How many virtio devices are NICs (virtio device ID 1), probed or not.
fn virtio_net_devices() -> usize {
    fs::read_dir("/sys/bus/virtio/devices")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|d| fs::read_to_string(d.path().join("device")).is_ok_and(|id| id.trim() == "0x0001"))
        .count()
}

/// Runs `change` on the netlink socket (opened now if boot did not).
fn with_netlink<T>(change: impl FnOnce(&mut Netlink) -> Result<T, String>) -> Result<T, String> {
    let mut kept = NETLINK.lock().unwrap_or_else(|e| e.into_inner());
    if kept.is_none() {
        *kept = Some(Netlink::open().map_err(|e| e.to_string())?);
    }
    match kept.as_mut() {
        Some(nl) => change(nl),
        None => Err("no netlink socket".into()),
    }
}

fn set_loopback_up(nl: &mut Netlink) -> Result<(), String> {
    let lo = nl
        .link_index("lo")
        .map_err(|e| format!("lo: {e}"))?
        .ok_or("the guest has no loopback interface")?;
    nl.set_up(lo).map_err(|e| format!("lo: {e}"))
}

/// Sets up the guest's NICs for `network`: needs nothing of the container's
/// root, so the agent runs it while the disks are mounted. The NICs' settings
/// are checked whole before any is changed.
pub fn set_nics(network: &GuestNetwork) -> Result<(), String> {
    let nics = checked_nics(network)?;
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    let loopback_up = LOOPBACK_UP.load(Ordering::Relaxed);
    let raised = !RAISED.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
    if !(loopback_up && current.is_empty() && nics.is_empty() && !raised) {
        with_netlink(|nl| {
            if !loopback_up {
                set_loopback_up(nl)?;
            }
            // The VM's first set-up: nothing has run that could have
            // renamed its NICs since boot. NICs raised ahead are settled
            // once the command runs (`settle_raised_nics`).
            change_nics(nl, &current, &nics, current.is_empty())
        })?;
        *current = nics;
        crate::steps::done("network: NICs set");
    }
    Ok(())
}

/// Writes /etc/hosts, /etc/hostname and /etc/resolv.conf for `spec` over
/// the container's root at `root`.
pub fn write_etc_files(spec: &RunSpec, root: &str) -> Result<(), String> {
    let none = GuestNetwork::default();
    let network = spec.network.as_ref().unwrap_or(&none);
    let mut files = vec![
        ("hosts", hosts_file(&network.hosts)?),
        ("hostname", hostname_file(&spec.hostname)?),
    ];
    match resolv_conf(network)? {
        Some(resolv) => files.push(("resolv.conf", resolv)),
        // Bound ahead for a container with nameservers: this one has the
        // image's own file back.
        None => unbind(root, "resolv.conf").map_err(|e| format!("/etc/resolv.conf: {e}"))?,
    }
    write_files(root, &files)
}

/// Moves a running container to the networks of `network` (`docker network
/// connect` and `disconnect`): NICs whose settings changed are cleared and
/// set anew, those no longer used go down, and /etc/hosts and
/// /etc/resolv.conf are rewritten in place, as Docker rewrites them.
pub fn reconfigure(network: &GuestNetwork, root: &str) -> Result<(), String> {
    let nics = checked_nics(network)?;
    let mut files = vec![("hosts", hosts_file(&network.hosts)?)];
    if let Some(resolv) = resolv_conf(network)? {
        files.push(("resolv.conf", resolv));
    }
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    // The container may have renamed its NICs: they are looked for again.
    with_netlink(|nl| change_nics(nl, &current, &nics, false))?;
    *current = nics;
    write_files(root, &files)
}

fn checked_nics(network: &GuestNetwork) -> Result<Vec<Nic>, String> {
    let nics = network.interfaces.iter().map(nic).collect::<Result<Vec<_>, _>>()?;
    if let Some(twice) = nics
        .iter()
        .find(|a| nics.iter().filter(|b| b.slot == a.slot).count() > 1)
    {
        return Err(format!("NIC slot {} is given twice", twice.slot));
    }
    Ok(nics)
}

/// Takes the NICs from `old` to `new` settings. NICs that leave, or whose
/// addresses change, are cleared and set down first (their routes go with
/// them), so a default route moving to another NIC finds its place free.
fn change_nics(nl: &mut Netlink, old: &[Nic], new: &[Nic], boot_names: bool) -> Result<(), String> {
    let Some(last) = old.iter().chain(new).map(|nic| nic.slot).max() else {
        return Ok(());
    };
    let names = wait_for_nics(usize::from(last) + 1, boot_names)?;
    crate::steps::done("network: the NICs found");
    let name = |nic: &Nic| &names[usize::from(nic.slot)];
    let now = |nic: &Nic| new.iter().find(|n| n.slot == nic.slot);
    let before = |nic: &Nic| old.iter().find(|o| o.slot == nic.slot);
    // Only a default route gained: the NIC's addresses and connections stay.
    let route_gained = |o: &Nic, n: &Nic| {
        o.gateway.is_none()
            && n.gateway.is_some()
            && Nic {
                gateway: None,
                ..n.clone()
            } == *o
    };
    for nic in old {
        match now(nic) {
            Some(n) if n == nic || route_gained(nic, n) => {}
            _ => clear(nl, name(nic), nic).map_err(|e| format!("{}: {e}", name(nic)))?,
        }
    }
    for nic in new {
        let result = match before(nic) {
            Some(o) if o == nic => continue,
            Some(o) if route_gained(o, nic) => match nic.gateway {
                Some(gateway) => nl.link_index(name(nic)).and_then(|index| match index {
                    Some(index) => nl.add_default_route(gateway, index),
                    None => Err(netlink::NetlinkError::InvalidInput("the interface vanished".into())),
                }),
                None => continue,
            },
            _ => configure(nl, name(nic), nic),
        };
        result.map_err(|e| format!("{}: {e}", name(nic)))?;
    }
    Ok(())
}

/// Takes a NIC's addresses away and sets it down (which drops its routes).
fn clear(nl: &mut Netlink, name: &str, nic: &Nic) -> Result<(), netlink::NetlinkError> {
    let Some(index) = nl.link_index(name)? else {
        return Ok(());
    };
    for &(address, prefix_len) in &nic.addresses {
        nl.delete_address(index, address, prefix_len)?;
    }
    nl.set_down(index)
}

/// Writes the generated files and, the first time, mounts each over the
/// container's own; later writes reach the container through the mount.
fn write_files(root: &str, files: &[(&str, String)]) -> Result<(), String> {
    fs::create_dir_all(FILES).map_err(|e| format!("{FILES}: {e}"))?;
    for (name, contents) in files {
        let source = Path::new(FILES).join(name);
        let mounted = source.exists();
        fs::write(&source, contents).map_err(|e| format!("{}: {e}", source.display()))?;
        crate::steps::done("/etc: a file written");
        if !mounted {
            mount_point(Path::new(root), name)
                .and_then(|target| bind(&source, &target))
                .map_err(|e| format!("/etc/{name}: {e}"))?;
            crate::steps::done("/etc: a file bound");
        }
    }
    Ok(())
}

/// The files bound into a standby's prepared root while it stands by
/// (empty until a start writes them): making the mount points (the
/// overlay's copy-up of `/etc`) and the binds is most of that step. Every
/// start writes `hosts` and `hostname`, and `resolv.conf` unless the
/// container has no nameservers (then it is unbound again).
const BOUND_AHEAD: [&str; 3] = GENERATED_FILES;

/// What `mount_point` replaced in the prepared root for a file bound
/// ahead: put back if the file is unbound (`None`: it made the file).
static REPLACED_AHEAD: Mutex<Vec<(&str, Option<PathBuf>)>> = Mutex::new(Vec::new());

/// Binds `BOUND_AHEAD` into the prepared root at `root`. On failure
/// nothing of it stays (a file left would pass for bound): the start binds
/// them itself.
pub fn bind_ahead(root: &str) -> Result<(), String> {
    let mut replaced = Vec::new();
    for name in BOUND_AHEAD {
        let target = Path::new(root).join("etc").join(name);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_file() => {}
            Ok(meta) if meta.is_symlink() => replaced.push((name, fs::read_link(&target).ok())),
            _ => replaced.push((name, None)),
        }
    }
    *REPLACED_AHEAD.lock().unwrap_or_else(|e| e.into_inner()) = replaced;
    let files: Vec<(&str, String)> = BOUND_AHEAD.iter().map(|name| (*name, String::new())).collect();
    write_files(root, &files).inspect_err(|_| {
        let _ = unbind_ahead(root);
    })
}

/// Takes back what `bind_ahead` bound (a prepared root given back): the
/// binds and their files, so a later start binds its own.
pub fn unbind_ahead(root: &str) -> io::Result<()> {
    BOUND_AHEAD.iter().try_for_each(|name| unbind(root, name))
}

/// Unbinds generated file `name` from the container's `/etc` at `root`, if
/// bound, and puts back what its mount point replaced there.
fn unbind(root: &str, name: &str) -> io::Result<()> {
    let source = Path::new(FILES).join(name);
    if !source.exists() {
        return Ok(());
    }
    let target_path = Path::new(root).join("etc").join(name);
    let target = CString::new(target_path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated path alive for the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    fs::remove_file(&source)?;
    let mut replaced = REPLACED_AHEAD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(index) = replaced.iter().position(|(made, _)| *made == name) {
        let (_, link) = replaced.remove(index);
        fs::remove_file(&target_path)?;
        if let Some(link) = link {
            std::os::unix::fs::symlink(link, &target_path)?;
        }
    }
    Ok(())
}

/// Checks one interface from the host.
fn nic(interface: &GuestInterface) -> Result<Nic, String> {
    let addresses = interface
        .addresses
        .iter()
        .map(|cidr| parse_cidr(cidr))
        .collect::<Result<_, _>>()?;
    let gateway = match &interface.gateway {
        None => None,
        Some(gateway) => Some(
            gateway
                .parse()
                .map_err(|_| format!("invalid gateway {gateway:?} (an IPv4 address is expected)"))?,
        ),
    };
    Ok(Nic {
        slot: interface.slot,
        mac: parse_mac(&interface.mac)?,
        addresses,
        gateway,
        mtu: interface.mtu,
    })
}

fn configure(nl: &mut Netlink, name: &str, nic: &Nic) -> Result<(), netlink::NetlinkError> {
    let Some(index) = nl.link_index(name)? else {
        return Err(netlink::NetlinkError::InvalidInput("the interface vanished".into()));
    };
    // Clones share their template's MAC, so each sets its own, before the
    // link is up.
    nl.set_mac(index, nic.mac)?;
    crate::steps::done("network: a NIC's MAC set");
    // 0: the host leaves the NIC's own MTU.
    if nic.mtu != 0 {
        nl.set_mtu(index, nic.mtu)?;
    }
    nl.set_up(index)?;
    crate::steps::done("network: a NIC up");
    for &(address, prefix_len) in &nic.addresses {
        nl.add_address(index, address, prefix_len)?;
    }
    crate::steps::done("network: a NIC's addresses added");
    if let Some(gateway) = nic.gateway {
        nl.add_default_route(gateway, index)?;
    }
    Ok(())
}

/// The guest's virtio-net NICs in slot order, once there are at least
/// `count` of them (or after `NIC_WAIT`).
fn wait_for_nics(count: usize, boot_names: bool) -> Result<Vec<String>, String> {
    if boot_names {
        let at_boot = NICS_AT_BOOT.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if at_boot.len() >= count {
            return Ok(at_boot);
        }
    }
    let deadline = Instant::now() + NIC_WAIT;
    loop {
        let nics = virtio_nics().map_err(|e| format!("listing the NICs: {e}"))?;
        if nics.len() >= count {
            return Ok(nics);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the container needs {count} network interface(s) but the guest has {} virtio-net NIC(s) after {} s",
                nics.len(),
                NIC_WAIT.as_secs()
            ));
        }
        std::thread::sleep(NIC_POLL);
    }
}

/// The virtio-net NICs, ordered by their MMIO windows: the VMM lays its
/// device slots out in order, and unlike `ethN` names (handed out in probe
/// order) a window does not depend on when each NIC was probed.
fn virtio_nics() -> io::Result<Vec<String>> {
    let iomem = fs::read_to_string("/proc/iomem")?;
    let mut nics = Vec::new();
    for entry in fs::read_dir("/sys/class/net")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let class = Path::new("/sys/class/net").join(&name);
        // Virtual links (lo) have no device.
        let Ok(device) = fs::canonicalize(class.join("device")) else {
            continue;
        };
        let driver = fs::read_link(device.join("driver")).ok();
        if driver.as_deref().and_then(Path::file_name) != Some("virtio_net".as_ref()) {
            continue;
        }
        // The virtio device's parent is the virtio-mmio platform device
        // (`LNRO0005:NN`), which owns the window in /proc/iomem.
        let platform = device.parent().and_then(Path::file_name).map(|p| p.to_string_lossy());
        let window = platform
            .as_deref()
            .and_then(|platform| mmio_window(&iomem, platform))
            .ok_or_else(|| io::Error::other(format!("{name}: its MMIO window is not in /proc/iomem")))?;
        nics.push((window, name));
    }
    nics.sort();
    Ok(nics.into_iter().map(|(_, name)| name).collect())
}

/// The start of the memory range `/proc/iomem` gives to `device`.
fn mmio_window(iomem: &str, device: &str) -> Option<u64> {
    iomem.lines().find_map(|line| {
        let (range, owner) = line.trim_start().split_once(" : ")?;
        // The driver's own request may be named "DEVICE RESOURCE".
        if owner.split(' ').next() != Some(device) {
            return None;
        }
        u64::from_str_radix(range.split_once('-')?.0, 16).ok()
    })
}

/// `02:42:0a:58:00:02`.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("invalid MAC address {text:?}");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    match parts.next() {
        Some(_) => Err(bad()),
        None => Ok(mac),
    }
}

/// `10.88.0.2/16`.
fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("invalid address {text:?} (address/prefix expected)");
    let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
    let address: IpAddr = address.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let bits = if address.is_ipv4() { 32 } else { 128 };
    if prefix > bits {
        return Err(bad());
    }
    Ok((address, prefix))
}

/// A host name, search domain or resolver option: one non-empty word.
fn check_word<'a>(what: &str, word: &'a str) -> Result<&'a str, String> {
    if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid {what} {word:?}"));
    }
    Ok(word)
}

fn hosts_file(entries: &[HostEntry]) -> Result<String, String> {
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for entry in entries {
        let address: IpAddr = entry
            .address
            .parse()
            .map_err(|_| format!("invalid /etc/hosts address {:?}", entry.address))?;
        if entry.names.is_empty() {
            return Err(format!("/etc/hosts entry {address} has no names"));
        }
        let names = entry
            .names
            .iter()
            .map(|name| check_word("host name", name))
            .collect::<Result<Vec<_>, _>>()?;
        hosts.push_str(&format!("{address}\t{}\n", names.join(" ")));
    }
    Ok(hosts)
}

/// `None` without nameservers: the image's own file stays.
fn resolv_conf(network: &GuestNetwork) -> Result<Option<String>, String> {
    if network.nameservers.is_empty() {
        return Ok(None);
    }
    let mut resolv = String::new();
    for server in &network.nameservers {
        let address: IpAddr = server.parse().map_err(|_| format!("invalid nameserver {server:?}"))?;
        resolv.push_str(&format!("nameserver {address}\n"));
    }
    let line = |keyword: &str, what: &str, words: &[String]| -> Result<String, String> {
        let words = words
            .iter()
            .map(|word| check_word(what, word))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match words.is_empty() {
            true => String::new(),
            false => format!("{keyword} {}\n", words.join(" ")),
        })
    };
    resolv.push_str(&line("search", "search domain", &network.search)?);
    resolv.push_str(&line("options", "resolver option", &network.dns_options)?);
    Ok(Some(resolv))
}

fn hostname_file(hostname: &str) -> Result<String, String> {
    Ok(format!("{}\n", check_word("hostname", hostname)?))
}

/// Makes `root/etc/name` a file to mount over (and `/etc` a directory) if
/// it is not: a symlink there is replaced, never followed, so the mount
/// stays inside the container.
pub(crate) fn mount_point(root: &Path, name: &str) -> io::Result<PathBuf> {
    let etc = root.join("etc");
    match fs::symlink_metadata(&etc) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(io::Error::other("the container's /etc is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&etc)?,
        Err(e) => return Err(e),
    }
    let target = etc.join(name);
    match fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_dir() => return Err(io::Error::other("it is a directory")),
        Ok(meta) if meta.is_symlink() => {
            fs::remove_file(&target)?;
            fs::write(&target, "")?;
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::write(&target, "")?,
        Err(e) => return Err(e),
    }
    Ok(target)
}

pub(crate) fn bind(source: &Path, target: &Path) -> io::Result<()> {
    let c = |path: &Path| CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other);
    let (source, target) = (c(source)?, c(target)?);
    // SAFETY: both paths are NUL-terminated strings alive for the call; a
    // bind mount reads no fstype or data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:42:0a:58:00:02"), Ok([0x02, 0x42, 0x0a, 0x58, 0x00, 0x02]));
        assert_eq!(parse_mac("AA:bb:CC:dd:EE:ff"), Ok([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]));
        for bad in [
            "",
            "02:42:0a:58:00",
            "02:42:0a:58:00:02:03",
            "2:42:0a:58:00:02",
            "02:42:0a:58:00:0g",
            "+2:42:0a:58:00:02",
            "02-42-0a-58-00-02",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses_need_a_prefix_that_fits() {
        assert_eq!(parse_cidr("10.88.0.2/16"), Ok(("10.88.0.2".parse().unwrap(), 16)));
        assert_eq!(parse_cidr("fd00::2/64"), Ok(("fd00::2".parse().unwrap(), 64)));
        for bad in [
            "10.88.0.2",
            "10.88.0.2/33",
            "fd00::2/129",
            "10.88.0/16",
            "10.88.0.2/-1",
            "/16",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_interface_is_checked_whole() {
        let mut interface = GuestInterface {
            slot: 1,
            mac: "02:42:0a:58:00:02".into(),
            addresses: vec!["10.88.0.2/16".into()],
            gateway: Some("10.88.0.1".into()),
            mtu: 1500,
        };
        assert_eq!(
            nic(&interface),
            Ok(Nic {
                slot: 1,
                mac: [0x02, 0x42, 0x0a, 0x58, 0x00, 0x02],
                addresses: vec![("10.88.0.2".parse().unwrap(), 16)],
                gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
                mtu: 1500,
            })
        );
        interface.gateway = Some("fd00::1".into());
        assert!(nic(&interface).unwrap_err().contains("gateway"));
    }

    #[test]
    fn hosts_has_localhost_then_the_entries() {
        let entries = [
            HostEntry {
                address: "10.88.0.2".into(),
                names: vec!["web".into(), "web.local".into()],
            },
            HostEntry {
                address: "fd00::5".into(),
                names: vec!["db".into()],
            },
        ];
        assert_eq!(
            hosts_file(&entries).unwrap(),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.88.0.2\tweb web.local\nfd00::5\tdb\n"
        );
        assert_eq!(
            hosts_file(&[]).unwrap(),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
        let bad = |address: &str, name: &str| {
            hosts_file(&[HostEntry {
                address: address.into(),
                names: vec![name.into()],
            }])
            .is_err()
        };
        assert!(bad("10.0.0.1", "two words"));
        assert!(bad("10.0.0.1", "line\nbreak"));
        assert!(bad("10.0.0.1", ""));
        assert!(bad("not-an-ip", "x"));
        assert!(hosts_file(&[HostEntry {
            address: "10.0.0.1".into(),
            names: vec![]
        }])
        .is_err());
    }

    #[test]
    fn resolv_conf_lists_servers_search_and_options() {
        let mut network = GuestNetwork {
            nameservers: vec!["10.88.0.1".into(), "2001:4860:4860::8888".into()],
            search: vec!["example.com".into(), "corp".into()],
            dns_options: vec!["ndots:2".into()],
            ..GuestNetwork::default()
        };
        assert_eq!(
            resolv_conf(&network).unwrap().unwrap(),
            "nameserver 10.88.0.1\nnameserver 2001:4860:4860::8888\nsearch example.com corp\noptions ndots:2\n"
        );
        network.search.clear();
        network.dns_options.clear();
        assert_eq!(
            resolv_conf(&network).unwrap().unwrap(),
            "nameserver 10.88.0.1\nnameserver 2001:4860:4860::8888\n"
        );
        network.search = vec!["a b".into()];
        assert!(resolv_conf(&network).is_err());
        network.search.clear();
        network.nameservers = vec!["dns.google".into()];
        assert!(resolv_conf(&network).is_err());
        // Without nameservers the image's file stays.
        assert_eq!(resolv_conf(&GuestNetwork::default()), Ok(None));
    }

    #[test]
    fn hostname_is_one_word() {
        assert_eq!(hostname_file("abc123").unwrap(), "abc123\n");
        assert!(hostname_file("").is_err());
        assert!(hostname_file("a\nb").is_err());
    }

    #[test]
    fn mmio_windows_are_read_from_iomem() {
        let iomem = "00000000-00000fff : Reserved\n\
                     d0000000-d0000fff : LNRO0005:00\n  d0000000-d0000fff : LNRO0005:00\n\
                     d0003000-d0003fff : LNRO0005:03\n  d0004000-d0004fff : LNRO0005:04 LNRO0005:04\n";
        assert_eq!(mmio_window(iomem, "LNRO0005:03"), Some(0xd000_3000));
        assert_eq!(mmio_window(iomem, "LNRO0005:00"), Some(0xd000_0000));
        assert_eq!(mmio_window(iomem, "LNRO0005:04"), Some(0xd000_4000));
        assert_eq!(mmio_window(iomem, "LNRO0005:01"), None);
        assert_eq!(mmio_window(iomem, "LNRO0005"), None);
    }

    #[test]
    fn etc_targets_become_regular_files_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(&outside, "host file").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/resolv.conf")).unwrap();
        let target = mount_point(&root, "resolv.conf").unwrap();
        assert_eq!(target, root.join("etc/resolv.conf"));
        assert!(fs::symlink_metadata(&target).unwrap().is_file());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "host file");

        fs::write(root.join("etc/hosts"), "image's").unwrap();
        mount_point(&root, "hosts").unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/hosts")).unwrap(), "image's");

        fs::create_dir(root.join("etc/hostname")).unwrap();
        assert!(mount_point(&root, "hostname").is_err());

        let bare = dir.path().join("bare");
        fs::create_dir(&bare).unwrap();
        let target = mount_point(&bare, "hosts").unwrap();
        assert!(fs::symlink_metadata(target).unwrap().is_file());

        let linked_etc = dir.path().join("linked");
        fs::create_dir(&linked_etc).unwrap();
        std::os::unix::fs::symlink(&outside, linked_etc.join("etc")).unwrap();
        assert!(mount_point(&linked_etc, "hosts").is_err());
    }
}
