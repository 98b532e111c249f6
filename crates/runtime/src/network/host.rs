//! The host's side of a network, through netlink: the bridge with its
//! gateway address, and each VM's tap on it. A tap is opened here without
//! `IFF_PERSIST` and its fd handed to hull-vmm, so the tap exists exactly as
//! long as the VM's process: a killed VM leaves no interface behind.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use netlink::Netlink;

use super::NetworkRecord;

fn open() -> Result<Netlink, String> {
    Netlink::open().map_err(|e| format!("netlink: {e}"))
}

/// Loads the kernel modules container networks use, as dockerd does at
/// its start: a host would load most on demand, but not where the
/// kernel's module helper cannot run (a chroot such as the test host's,
/// a host with autoloading off). Missing ones show up later, named.
pub fn load_modules() {
    let modules = [
        "tun",
        "veth",
        "bridge",
        "vxlan",
        "nf_tables",
        "nft_chain_nat",
        "nft_nat",
        "nft_masq",
        "nft_fib_ipv4",
        "nft_ct",
        "nft_meta_bridge",
        "nf_conntrack_bridge",
    ];
    let _ = Command::new("modprobe")
        .arg("-qa")
        .args(modules)
        .stderr(Stdio::null())
        .status();
}

/// Subnets the host routes already (a new network must not clash with them).
pub fn routed_subnets() -> Result<Vec<Ipv4Net>, String> {
    let routes = open()?
        .ipv4_routes()
        .map_err(|e| format!("reading the host's routes: {e}"))?;
    Ok(routes
        .into_iter()
        // The default route clashes with nothing.
        .filter(|(_, prefix, _)| *prefix > 0)
        .filter_map(|(destination, prefix, _)| Ipv4Net::new(destination, prefix).ok())
        .collect())
}

fn write_sysctl(path: &str, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("setting {path}: {e}"))
}

/// The network's bridge, up, with its gateway address; forwarding on.
pub fn ensure_bridge(network: &NetworkRecord) -> Result<u32, String> {
    let mut nl = open()?;
    let what = |step: &str| {
        let step = format!("{step} {}", network.bridge);
        move |e: netlink::NetlinkError| format!("{step}: {e}")
    };
    nl.create_bridge(&network.bridge).map_err(what("creating bridge"))?;
    let index = nl
        .link_index(&network.bridge)
        .map_err(what("finding bridge"))?
        .ok_or_else(|| format!("bridge {} vanished", network.bridge))?;
    if let Some(vxlan) = &network.vxlan {
        // The same MAC on every host's bridge: a moved container's ARP
        // entry for its gateway stays right.
        nl.set_mac(index, vxlan.gateway_mac())
            .map_err(what("setting the MAC of bridge"))?;
    }
    nl.add_address(index, IpAddr::V4(network.gateway), network.subnet.prefix_len())
        .map_err(what("addressing bridge"))?;
    nl.set_up(index).map_err(what("bringing up bridge"))?;
    if let Some(vxlan) = &network.vxlan {
        vxlan.attach(&mut nl, index)?;
    }
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    // Published ports answer on 127.0.0.1 too: such packets, forwarded to
    // the container, may leave through the bridge.
    write_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", network.bridge),
        "1",
    )?;
    Ok(index)
}

/// The bridge a container's tap joins. One up is taken as it is: hulld
/// made sure of it when it started or first used the network since boot
/// (`ensure_bridge`, seven requests and two sysctl writes: 12 ms of a
/// start in a nested guest, against two ioctls). A link of its name that
/// is no bridge fails the tap's joining it. A VXLAN network's is made
/// sure of every time (its port may have gone).
fn bridge_for_tap(nl: &mut Netlink, network: &NetworkRecord) -> Result<u32, String> {
    if network.vxlan.is_none() {
        let found = nl
            .index_if_up(&network.bridge)
            .map_err(|e| format!("finding bridge {}: {e}", network.bridge))?;
        if let Some(index) = found {
            return Ok(index);
        }
    }
    ensure_bridge(network)
}

/// Deletes the link `name`, a network's bridge or VXLAN port (gone already is fine).
pub fn remove_link(name: &str) -> Result<(), String> {
    let mut nl = open()?;
    match nl.link_index(name).map_err(|e| format!("finding link {name}: {e}"))? {
        Some(index) => nl.delete_link(index).map_err(|e| format!("deleting link {name}: {e}")),
        None => Ok(()),
    }
}

/// A tap for NIC `slot` of container `id`'s VM, on `network`'s bridge
/// and up (non-blocking, as hull-vmm wants it).
pub fn open_tap(network: &NetworkRecord, id: &str, slot: u8) -> Result<(String, File), String> {
    let mut nl = open()?;
    let bridge = bridge_for_tap(&mut nl, network)?;
    vmm::trace::mark("network: its bridge found");
    let name = tap_name(id, slot);
    let tap = vmm::devices::virtio::net::open_tap(&name).map_err(|e| format!("creating tap {name}: {e}"))?;
    vmm::trace::mark("network: a tap made");
    nl.join_bridge(&name, bridge, network.mtu())
        .map_err(|e| format!("attaching tap {name} to {}: {e}", network.bridge))?;
    Ok((name, tap))
}

/// `hv`, the first 12 characters of the container's ID, and the slot of
/// any NIC but the first (fits IFNAMSIZ).
pub fn tap_name(id: &str, slot: u8) -> String {
    let stem: String = id.chars().take(12).collect();
    match slot {
        0 => format!("hv{stem}"),
        _ => format!("hv{stem}{}", slot % 10),
    }
}

/// A tap's byte and packet counters as the container sees them (the host
/// receives what the container sends).
pub fn tap_counters(name: &str) -> Option<TapCounters> {
    let read = |counter: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/{counter}"))
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    Some(TapCounters {
        rx_bytes: read("tx_bytes")?,
        rx_packets: read("tx_packets")?,
        tx_bytes: read("rx_bytes")?,
        tx_packets: read("rx_packets")?,
    })
}

/// Traffic from the container's point of view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// The host's resolvers for a container: those of /etc/resolv.conf, or (a
/// loopback resolver cannot be reached from a VM) Docker's fallback.
pub fn resolvers() -> Vec<String> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let found: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|a| a.parse::<Ipv4Addr>().is_ok_and(|a| !a.is_loopback()))
        .map(str::to_string)
        .collect();
    match found.is_empty() {
        true => vec!["8.8.8.8".into(), "8.8.4.4".into()],
        false => found,
    }
}
