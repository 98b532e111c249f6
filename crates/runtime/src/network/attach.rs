//! A running VM's place on its networks: a tap on each network's bridge,
//! the firewall's rules for its networks, and its published ports
//! (reserved on the host and forwarded), all undone when it is dropped
//! with the VM; and joining or leaving a network while the VM runs.

use std::fs::File;
use std::net::Ipv4Addr;

use super::{firewall, host, ports, ContainerNetwork, PortMapping};

pub struct Attached {
    /// One per network, with the NIC slot it goes to.
    taps: Vec<(u8, File)>,
    /// The networks, in the endpoints' order.
    records: Vec<super::NetworkRecord>,
    _reservations: Vec<ports::Reservation>,
    published: Option<(Vec<PortMapping>, Ipv4Addr)>,
    /// The container and its network, while it has a policy's rules.
    policed: Option<(String, ContainerNetwork)>,
}

impl Attached {
    /// Plugs container `id` into its networks (nothing for `--network none`).
    pub fn new(id: &str, network: &ContainerNetwork) -> Result<Attached, String> {
        let mut attached = Attached {
            taps: Vec::new(),
            records: Vec::new(),
            _reservations: Vec::new(),
            published: None,
            policed: None,
        };
        let Some(primary) = network.primary() else {
            return Ok(attached);
        };
        vmm::trace::mark("network: attaching");
        let networks = super::list().map_err(|e| e.to_string())?;
        vmm::trace::mark("network: the networks read");
        for endpoint in &network.endpoints {
            let record = record_of(endpoint, &networks)?;
            attached
                .taps
                .push((endpoint.slot, host::open_tap(&record, id, endpoint.slot)?.1));
            attached.records.push(record);
        }
        vmm::trace::mark("network: taps made");
        firewall::ensure_current(&networks)?;
        vmm::trace::mark("network: firewall current");
        if network.policy != super::Policy::Open {
            super::policy::apply_to(id, network)?;
            attached.policed = Some((id.to_string(), network.clone()));
        }
        attached._reservations = ports::reserve(&network.ports)?;
        if !network.ports.is_empty() {
            firewall::publish(&network.ports, primary.address)?;
            attached.published = Some((network.ports.clone(), primary.address));
        }
        Ok(attached)
    }

    /// The taps for the VMM to take, by NIC slot (they stay open here
    /// too, for a VMM started again, until `close_taps`).
    pub fn taps(&self) -> impl Iterator<Item = (u8, &File)> {
        self.taps.iter().map(|(slot, tap)| (*slot, tap))
    }

    /// What the guest is told of `network` (the one attached) as `hostname`.
    pub fn guest_network(&self, network: &ContainerNetwork, hostname: &str) -> Option<proto::GuestNetwork> {
        super::guest_network_on(network, hostname, &self.records)
    }

    /// Lets go of the taps once the VM runs on them: each lives exactly as
    /// long as the VMM holds it.
    pub fn close_taps(&mut self) {
        self.taps.clear();
    }
}

/// `endpoint`'s network, from `networks` (all there are).
fn record_of(endpoint: &super::Endpoint, networks: &[super::NetworkRecord]) -> Result<super::NetworkRecord, String> {
    match networks.iter().find(|record| record.id == endpoint.network_id) {
        Some(record) => Ok(record.clone()),
        // Gone or damaged: reading it says which.
        None => super::load(&endpoint.network_id).map_err(|e| e.to_string()),
    }
}

/// Readies a running container (`id`, networked as `network`, which
/// already lists `endpoint`) for one more network: its network's rules and
/// its policy on the new NIC. Returns the tap, for the VMM to plug in.
pub fn join(id: &str, endpoint: &super::Endpoint, network: &ContainerNetwork) -> Result<File, String> {
    let networks = super::list().map_err(|e| e.to_string())?;
    let tap = host::open_tap(&record_of(endpoint, &networks)?, id, endpoint.slot)?.1;
    firewall::ensure_current(&networks)?;
    if network.policy != super::Policy::Open {
        super::policy::apply_to(id, network)?;
    }
    Ok(tap)
}

/// What a running container leaving a network leaves behind on the host:
/// its policy on that NIC (the tap went with the VMM's descriptor).
pub fn leave(id: &str, endpoint: &super::Endpoint, network: &ContainerNetwork) -> Result<(), String> {
    match network.policy {
        super::Policy::Open => Ok(()),
        _ => super::policy::lift(id, endpoint, network),
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some((id, network)) = self.policed.take() {
            let open = ContainerNetwork {
                policy: super::Policy::Open,
                ..network
            };
            if let Err(e) = super::policy::apply_to(&id, &open) {
                eprintln!("hull: removing the container's policy: {e}");
            }
        }
        if let Some((ports, address)) = self.published.take() {
            if let Err(e) = firewall::unpublish(&ports, address) {
                eprintln!("hull: removing published ports: {e}");
            }
        }
    }
}
