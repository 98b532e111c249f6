//! A running VM's place on its network: its tap on the bridge, the
//! firewall's rules for its network, and its published ports (reserved on
//! the host and forwarded), all undone when it is dropped with the VM.

use std::fs::File;
use std::net::Ipv4Addr;

use super::{firewall, host, ports, ContainerNetwork, PortMapping};

pub struct Attached {
    tap: Option<File>,
    _reservations: Vec<ports::Reservation>,
    published: Option<(Vec<PortMapping>, Ipv4Addr)>,
    /// The container and its network, while it has a policy's rules.
    policed: Option<(String, ContainerNetwork)>,
}

impl Attached {
    /// Plugs container `id` into its network (nothing for `--network none`).
    pub fn new(id: &str, network: &ContainerNetwork) -> Result<Attached, String> {
        let mut attached = Attached {
            tap: None,
            _reservations: Vec::new(),
            published: None,
            policed: None,
        };
        let Some(endpoint) = &network.endpoint else {
            return Ok(attached);
        };
        let record = super::load(&endpoint.network_id).map_err(|e| e.to_string())?;
        let (_, tap) = host::open_tap(&record, id)?;
        attached.tap = Some(tap);
        firewall::ensure_current(&super::list().map_err(|e| e.to_string())?)?;
        if network.policy != super::Policy::Open {
            super::policy::apply_to(id, network)?;
            attached.policed = Some((id.to_string(), network.clone()));
        }
        attached._reservations = ports::reserve(&network.ports)?;
        if !network.ports.is_empty() {
            firewall::publish(&network.ports, endpoint.address)?;
            attached.published = Some((network.ports.clone(), endpoint.address));
        }
        Ok(attached)
    }

    /// The tap for the VMM to take (it stays open here too until the drop).
    pub fn tap(&self) -> Option<&File> {
        self.tap.as_ref()
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
