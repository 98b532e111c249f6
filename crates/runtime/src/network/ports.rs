//! Published ports: a host port (on every host address or one) forwarded to
//! a port of a container. While a container runs, its supervisor holds a
//! socket bound to each of its host ports, so no other process (or
//! container) can take the port, and a taken port is refused up front as
//! Docker refuses it; the forwarding itself is the firewall's.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `-p [HOSTIP:]HOSTPORT:CTRPORT[/PROTO]`, one port of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    /// `None`: every host address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

/// A socket holding a host port.
pub enum Reservation {
    Tcp(std::net::TcpListener),
    Udp(UdpSocket),
}

fn bind(protocol: Protocol, address: SocketAddrV4) -> std::io::Result<Reservation> {
    Ok(match protocol {
        // Bound (and listening, which is how std binds TCP) but never
        // accepted from: the firewall forwards the port's connections
        // before they reach it.
        Protocol::Tcp => Reservation::Tcp(TcpListener::bind(address)?),
        Protocol::Udp => Reservation::Udp(UdpSocket::bind(address)?),
    })
}

/// Binds every mapping's host port; the first one taken is an error in
/// Docker's words, and nothing stays bound then.
pub fn reserve(mappings: &[PortMapping]) -> Result<Vec<Reservation>, String> {
    let mut held = Vec::with_capacity(mappings.len());
    for m in mappings {
        let ip = m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        match bind(m.protocol, SocketAddrV4::new(ip, m.host_port)) {
            Ok(socket) => held.push(socket),
            Err(e) => {
                return Err(format!(
                    "driver failed programming external connectivity: Bind for {ip}:{} failed: port is already allocated ({e})",
                    m.host_port
                ))
            }
        }
    }
    Ok(held)
}

/// A host port the kernel considers free now (`-P`, `-p CTRPORT`).
pub fn free_port(protocol: Protocol, host_ip: Option<Ipv4Addr>) -> std::io::Result<u16> {
    let ip = host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let port = match bind(protocol, SocketAddrV4::new(ip, 0))? {
        Reservation::Tcp(s) => s.local_addr()?.port(),
        Reservation::Udp(s) => s.local_addr()?.port(),
    };
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_cannot_be_reserved_twice() {
        let port = free_port(Protocol::Tcp, Some(Ipv4Addr::LOCALHOST)).unwrap();
        let mapping = PortMapping {
            protocol: Protocol::Tcp,
            host_ip: Some(Ipv4Addr::LOCALHOST),
            host_port: port,
            container_port: 80,
        };
        let held = reserve(&[mapping]).unwrap();
        let err = reserve(&[mapping]).err().unwrap();
        assert!(err.contains("port is already allocated"), "{err}");
        drop(held);
        assert!(reserve(&[mapping]).is_ok());
    }
}
