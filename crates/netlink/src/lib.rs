//! A small synchronous rtnetlink client: links, addresses and routes of the
//! current network namespace, enough for hull to set up a container's
//! network on the host (bridge, taps) and in the guest (its NICs).
//!
//! Messages are built and parsed with `netlink-packet-route`; the socket is
//! `netlink-sys`'s, used blocking (the guest agent has no async runtime).
//! Every request asks for an acknowledgement and waits for it (or for the
//! end of a dump), skipping replies to other sequence numbers. A refusal by
//! the kernel is `NetlinkError::Kernel` carrying its errno, so callers can
//! match `EEXIST` or `ENODEV`. Replies are parsed defensively: a malformed
//! one is an error, never a panic.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening, sending on or receiving from the socket failed.
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    /// The kernel refused the request; `source` carries its errno.
    #[error("{request}: {source}")]
    Kernel {
        request: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("malformed netlink reply: {0}")]
    Malformed(String),
    /// An argument refused before asking the kernel.
    #[error("{0}")]
    InvalidInput(String),
}

impl NetlinkError {
    /// The errno behind the error (`libc::EEXIST`, `libc::ENODEV`, ...), if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            NetlinkError::Socket(e) | NetlinkError::Kernel { source: e, .. } => e.raw_os_error(),
            NetlinkError::Malformed(_) | NetlinkError::InvalidInput(_) => None,
        }
    }
}

/// A network interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    /// The bridge (or bond) this link is a port of.
    pub master: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The driver kind of a virtual link (`bridge`, `tun`, `veth`, ...).
    pub kind: Option<String>,
}

/// One `NETLINK_ROUTE` socket and its sequence counter.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

/// A dump whose result the kernel flags as inconsistent (links changed
/// meanwhile) is asked again, this many times at most.
const DUMP_ATTEMPTS: usize = 3;

impl Netlink {
    /// A socket on the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        // Connected to the kernel, the socket takes datagrams from it only.
        socket.connect(&SocketAddr::new(0, 0)).map_err(NetlinkError::Socket)?;
        Ok(Netlink { socket, sequence: 0 })
    }

    /// The link named `name`, if there is one.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        check_name(name)?;
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.into()));
        match self.request("looking up a link", RouteNetlinkMessage::GetLink(message), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(link_of)),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The index of the link named `name` if it is up; `None` if it is
    /// down or missing. Asked with the kernel's interface ioctls on this
    /// socket: a link request's reply carries the whole link (statistics,
    /// a bridge's dozens of settings), which costs far more to parse.
    pub fn index_if_up(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        check_name(name)?;
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (to, from) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *to = from as libc::c_char;
        }
        let ask = |request: &mut libc::ifreq, what: libc::c_ulong| {
            // SAFETY: an ioctl on our socket with a valid, NUL-terminated ifreq.
            match unsafe { libc::ioctl(self.socket.as_raw_fd(), what, request as *mut libc::ifreq) } {
                0 => Ok(true),
                _ => match io::Error::last_os_error() {
                    e if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
                    e => Err(NetlinkError::Kernel {
                        request: "looking up a link's flags and index",
                        source: e,
                    }),
                },
            }
        };
        if !ask(&mut request, libc::SIOCGIFFLAGS)? {
            return Ok(None);
        }
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        let flags = i32::from(unsafe { request.ifr_ifru.ifru_flags });
        if flags & libc::IFF_UP == 0 || !ask(&mut request, libc::SIOCGIFINDEX)? {
            return Ok(None);
        }
        // SAFETY: SIOCGIFINDEX filled the index member.
        let index = unsafe { request.ifr_ifru.ifru_ifindex };
        Ok(u32::try_from(index).ok())
    }

    /// The index of the link named `name`, if there is one.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link(name)?.map(|link| link.index))
    }

    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self.dump("listing links", RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(replies.into_iter().filter_map(link_of).collect())
    }

    /// Creates a bridge; one already there is fine, but another kind of
    /// link of that name is `EEXIST`.
    pub fn create_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        check_name(name)?;
        self.create_link("creating a bridge", name, new_bridge(name), "bridge")
    }

    /// Creates a VXLAN link of VNI `id` on UDP `port` (sent from `local`, if
    /// given), learning where remote MACs are; a VXLAN link already there
    /// is taken as it is (its name says its VNI), anything else of that
    /// name is `EEXIST`.
    pub fn create_vxlan(
        &mut self,
        name: &str,
        id: u32,
        port: u16,
        local: Option<Ipv4Addr>,
    ) -> Result<(), NetlinkError> {
        check_name(name)?;
        self.create_link("creating a VXLAN link", name, new_vxlan(name, id, port, local), "vxlan")
    }

    /// Sends `message`, a new link named `name`; one of that `kind`
    /// already there is fine.
    fn create_link(
        &mut self,
        request: &'static str,
        name: &str,
        message: RouteNetlinkMessage,
        kind: &str,
    ) -> Result<(), NetlinkError> {
        match self.request(request, message, NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match self.link(name)? {
                Some(link) if link.kind.as_deref() == Some(kind) => Ok(()),
                _ => Err(e),
            },
            other => other.map(drop),
        }
    }

    /// Sends the VXLAN link's broadcast and unknown frames to `peer` too
    /// (`bridge fdb append 00:00:00:00:00:00 dev LINK dst PEER`); a peer
    /// already there is fine.
    pub fn add_vxlan_peer(&mut self, index: u32, peer: Ipv4Addr) -> Result<(), NetlinkError> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(peer)));
        let request = RouteNetlinkMessage::NewNeighbour(message);
        match self.request("adding a VXLAN peer", request, NLM_F_CREATE | NLM_F_APPEND) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let request = RouteNetlinkMessage::DelLink(link_message(index));
        self.request("deleting a link", request, 0).map(drop)
    }

    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_link("setting a link up", up_down(index, true))
    }

    pub fn set_down(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_link("setting a link down", up_down(index, false))
    }

    /// Makes the link a port of the bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let mut message = link_message(index);
        message.attributes.push(LinkAttribute::Controller(master));
        self.set_link("setting a link's master", message)
    }

    /// Makes the link named `name` a port of the bridge `master`, with
    /// the bridge's `mtu`, and up: one request (the kernel applies the MTU
    /// before the master and the flags last, as the three apart would).
    pub fn join_bridge(&mut self, name: &str, master: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set_link("joining a link to a bridge", port_of(name, master, mtu)?)
    }

    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let mut message = link_message(index);
        message.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link("setting a link's MAC address", message)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut message = link_message(index);
        message.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link("setting a link's MTU", message)
    }

    /// Adds `address/prefix_len` to the link; the same address already
    /// there is fine.
    pub fn add_address(&mut self, index: u32, address: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
        let message = new_address(index, address, prefix_len)?;
        match self.request("adding an address", message, NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Removes `address/prefix_len` from the link; an address not there is fine.
    pub fn delete_address(&mut self, index: u32, address: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
        let message = RouteNetlinkMessage::DelAddress(address_message(index, address, prefix_len)?);
        match self.request("deleting an address", message, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The link's addresses (IPv4 and IPv6) with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let replies = self.dump("listing addresses", request)?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewAddress(message) if message.header.index == index => {
                    // IFA_LOCAL is the address itself (IFA_ADDRESS is the
                    // peer's on point-to-point links); IPv6 has only IFA_ADDRESS.
                    let local = message.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let address = message.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    });
                    local.or(address).map(|ip| (ip, message.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }

    /// Adds the IPv4 default route via `gateway` out of link `index`; the
    /// same route already there is fine, another default route is `EEXIST`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr, index: u32) -> Result<(), NetlinkError> {
        match self.request(
            "adding the default route",
            new_default_route(gateway, index),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let same = self.main_ipv4_routes()?.iter().any(|route| {
                    route.header.destination_prefix_length == 0
                        && route
                            .attributes
                            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(gateway)))
                        && route.attributes.contains(&RouteAttribute::Oif(index))
                });
                if same {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            other => other.map(drop),
        }
    }

    /// IPv4 routes of the main table as (destination, prefix length, output
    /// link index): what a new subnet must not clash with.
    pub fn ipv4_routes(&mut self) -> Result<Vec<(Ipv4Addr, u8, Option<u32>)>, NetlinkError> {
        Ok(self
            .main_ipv4_routes()?
            .iter()
            .map(|route| {
                let mut destination = Ipv4Addr::UNSPECIFIED;
                let mut output = None;
                for attribute in &route.attributes {
                    match attribute {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = *ip,
                        RouteAttribute::Oif(index) => output = Some(*index),
                        _ => {}
                    }
                }
                (destination, route.header.destination_prefix_length, output)
            })
            .collect())
    }

    fn main_ipv4_routes(&mut self) -> Result<Vec<RouteMessage>, NetlinkError> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        let replies = self.dump("listing routes", RouteNetlinkMessage::GetRoute(message))?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRoute(route) if route.header.address_family == AddressFamily::Inet => {
                    // Tables past 255 are named by RTA_TABLE only.
                    let table = route
                        .attributes
                        .iter()
                        .find_map(|a| match a {
                            RouteAttribute::Table(table) => Some(*table),
                            _ => None,
                        })
                        .unwrap_or(route.header.table.into());
                    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(route)
                }
                _ => None,
            })
            .collect())
    }

    fn set_link(&mut self, request: &'static str, message: LinkMessage) -> Result<(), NetlinkError> {
        self.request(request, RouteNetlinkMessage::SetLink(message), 0)
            .map(drop)
    }

    fn dump(
        &mut self,
        request: &'static str,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        for _ in 0..DUMP_ATTEMPTS {
            let replies = self.exchange(request, message.clone(), NLM_F_DUMP)?;
            if !replies.interrupted {
                return Ok(replies.messages);
            }
        }
        Err(NetlinkError::Kernel {
            request,
            source: io::Error::from_raw_os_error(libc::EINTR),
        })
    }

    fn request(
        &mut self,
        request: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        Ok(self.exchange(request, message, flags)?.messages)
    }

    /// Sends one request and collects the replies up to its acknowledgement
    /// (or the end of its dump).
    fn exchange(
        &mut self,
        request: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Replies, NetlinkError> {
        self.sequence = self.sequence.wrapping_add(1);
        let packet = encode(message, NLM_F_REQUEST | NLM_F_ACK | flags, self.sequence);
        self.socket.send(&packet, 0).map_err(NetlinkError::Socket)?;
        let mut replies = Replies::new(request, self.sequence);
        while !replies.done {
            replies.take(&self.receive()?)?;
        }
        Ok(replies)
    }

    /// One whole datagram, however long (a dump's can exceed a page).
    fn receive(&self) -> Result<Vec<u8>, NetlinkError> {
        loop {
            let mut probe = Vec::new();
            let size = match self.socket.recv(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC) {
                Ok(size) => size,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetlinkError::Socket(e)),
            };
            let mut datagram = Vec::with_capacity(size);
            match self.socket.recv(&mut datagram, 0) {
                Ok(_) if datagram.len() < size => return Err(NetlinkError::Malformed("datagram truncated".into())),
                Ok(_) => return Ok(datagram),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetlinkError::Socket(e)),
            }
        }
    }
}

/// The replies to one request, gathered datagram by datagram.
struct Replies {
    request: &'static str,
    sequence: u32,
    messages: Vec<RouteNetlinkMessage>,
    /// The acknowledgement (or the dump's end) has come.
    done: bool,
    /// The kernel flagged the dump as inconsistent.
    interrupted: bool,
}

impl Replies {
    fn new(request: &'static str, sequence: u32) -> Replies {
        Replies {
            request,
            sequence,
            messages: Vec::new(),
            done: false,
            interrupted: false,
        }
    }

    /// Takes the messages of one datagram that answer this request.
    fn take(&mut self, datagram: &[u8]) -> Result<(), NetlinkError> {
        let malformed = |e: netlink_packet_core::DecodeError| NetlinkError::Malformed(e.to_string());
        let mut rest = datagram;
        while !rest.is_empty() && !self.done {
            let buffer = NetlinkBuffer::new_checked(rest).map_err(malformed)?;
            let (length, sequence, flags) = (buffer.length() as usize, buffer.sequence_number(), buffer.flags());
            let bytes = rest.get(..length).unwrap_or(rest);
            rest = rest.get(length.next_multiple_of(4)..).unwrap_or_default();
            // Left over from an earlier request that ended in an error.
            if sequence != self.sequence {
                continue;
            }
            self.interrupted |= flags & NLM_F_DUMP_INTR != 0;
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                .map_err(malformed)?
                .payload
            {
                NetlinkPayload::InnerMessage(message) => self.messages.push(message),
                NetlinkPayload::Error(error) => match error.code {
                    None => self.done = true,
                    Some(code) => return Err(self.refused(code.get())),
                },
                NetlinkPayload::Done(done) if done.code < 0 => return Err(self.refused(done.code)),
                NetlinkPayload::Done(_) => self.done = true,
                NetlinkPayload::Overrun(_) => return Err(NetlinkError::Malformed("overrun".into())),
                _ => {}
            }
        }
        Ok(())
    }

    /// The kernel's negative errno as an error.
    fn refused(&self, code: i32) -> NetlinkError {
        NetlinkError::Kernel {
            request: self.request,
            source: io::Error::from_raw_os_error(code.saturating_neg()),
        }
    }
}

fn encode(message: RouteNetlinkMessage, flags: u16, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, message.into());
    packet.finalize();
    let mut buffer = vec![0; packet.buffer_len()];
    packet.serialize(&mut buffer);
    buffer
}

/// Names the kernel would cut short or misread are refused here.
fn check_name(name: &str) -> Result<(), NetlinkError> {
    // IFNAMSIZ (16) with the terminating NUL.
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(NetlinkError::InvalidInput(format!("invalid link name {name:?}")));
    }
    Ok(())
}

fn link_message(index: u32) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message
}

/// The link named `name` (index 0: the kernel finds it by its name) made
/// a port of `master`, with `mtu`, and up.
fn port_of(name: &str, master: u32, mtu: u32) -> Result<LinkMessage, NetlinkError> {
    check_name(name)?;
    let mut message = up_down(0, true);
    message.attributes.push(LinkAttribute::IfName(name.into()));
    message.attributes.push(LinkAttribute::Mtu(mtu));
    message.attributes.push(LinkAttribute::Controller(master));
    Ok(message)
}

fn up_down(index: u32, up: bool) -> LinkMessage {
    let mut message = link_message(index);
    message.header.change_mask = LinkFlags::Up;
    if up {
        message.header.flags = LinkFlags::Up;
    }
    message
}

fn new_bridge(name: &str) -> RouteNetlinkMessage {
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.into()));
    message
        .attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
    RouteNetlinkMessage::NewLink(message)
}

fn new_vxlan(name: &str, id: u32, port: u16, local: Option<Ipv4Addr>) -> RouteNetlinkMessage {
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.into()));
    let mut data = vec![InfoVxlan::Id(id), InfoVxlan::Port(port), InfoVxlan::Learning(true)];
    if let Some(local) = local {
        data.push(InfoVxlan::Local(local));
    }
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(data)),
    ]));
    RouteNetlinkMessage::NewLink(message)
}

fn new_address(index: u32, address: IpAddr, prefix_len: u8) -> Result<RouteNetlinkMessage, NetlinkError> {
    address_message(index, address, prefix_len).map(RouteNetlinkMessage::NewAddress)
}

fn address_message(index: u32, address: IpAddr, prefix_len: u8) -> Result<AddressMessage, NetlinkError> {
    let bits = if address.is_ipv4() { 32 } else { 128 };
    if prefix_len > bits {
        return Err(NetlinkError::InvalidInput(format!(
            "invalid prefix length {address}/{prefix_len}"
        )));
    }
    let mut message = AddressMessage::default();
    message.header.family = match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.index = index;
    message.header.prefix_len = prefix_len;
    // As `ip address add` does: loopback addresses are host-scoped.
    if address.is_loopback() {
        message.header.scope = AddressScope::Host;
    }
    message.attributes.push(AddressAttribute::Local(address));
    message.attributes.push(AddressAttribute::Address(address));
    if let IpAddr::V4(ip) = address {
        // The subnet's broadcast address, as `ip address add ... brd +`.
        if prefix_len < 31 {
            let host_bits = u32::MAX.checked_shr(prefix_len.into()).unwrap_or(0);
            message
                .attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(u32::from(ip) | host_bits)));
        }
    }
    Ok(message)
}

fn new_default_route(gateway: Ipv4Addr, index: u32) -> RouteNetlinkMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    // What `ip route add` uses for a route an administrator adds.
    message.header.protocol = RouteProtocol::Boot;
    message.header.scope = RouteScope::Universe;
    message.header.kind = RouteType::Unicast;
    message
        .attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    message.attributes.push(RouteAttribute::Oif(index));
    RouteNetlinkMessage::NewRoute(message)
}

fn link_of(reply: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(message) = reply else {
        return None;
    };
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        master: None,
        up: message.header.flags.contains(LinkFlags::Up),
        kind: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(mac) => link.mac = mac.try_into().ok(),
            LinkAttribute::Controller(master) => link.master = Some(master),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.into_iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    Some(link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{ErrorMessage, NLMSG_ERROR};

    const RTM_NEWLINK: u16 = 16;

    fn decode(bytes: &[u8]) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::deserialize(bytes).unwrap()
    }

    #[test]
    fn an_up_link_is_found_by_its_flags_and_index() {
        let nl = Netlink::open().unwrap();
        // Loopback is up and first in every network namespace.
        assert_eq!(nl.index_if_up("lo").unwrap(), Some(1));
        assert_eq!(nl.index_if_up("hull-none").unwrap(), None);
        assert!(nl.index_if_up("").is_err());
    }

    #[test]
    fn a_port_is_named_sized_mastered_and_raised_in_one_message() {
        let message = port_of("hvabc", 7, 1450).unwrap();
        assert_eq!(message.header.index, 0);
        assert_eq!(message.header.flags, LinkFlags::Up);
        assert_eq!(message.header.change_mask, LinkFlags::Up);
        assert_eq!(
            message.attributes,
            vec![
                LinkAttribute::IfName("hvabc".into()),
                LinkAttribute::Mtu(1450),
                LinkAttribute::Controller(7),
            ]
        );
        assert!(port_of("a-name-longer-than-ifnamsiz", 7, 1500).is_err());
    }

    #[test]
    fn a_request_carries_its_type_flags_and_sequence() {
        let bytes = encode(
            new_bridge("hull0"),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            7,
        );
        let buffer = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buffer.length() as usize, bytes.len());
        assert_eq!(buffer.message_type(), RTM_NEWLINK);
        assert_eq!(buffer.flags(), 0x605);
        assert_eq!(buffer.sequence_number(), 7);
        assert_eq!(
            decode(&bytes).payload,
            NetlinkPayload::InnerMessage(new_bridge("hull0"))
        );
        // IFLA_IFNAME, NUL-terminated, and the kind inside IFLA_LINKINFO.
        assert!(bytes.windows(6).any(|w| w == b"hull0\0"));
        assert!(bytes.windows(7).any(|w| w == b"bridge\0"));
    }

    #[test]
    fn an_address_gets_its_broadcast_and_scope() {
        let attributes = |message| match message {
            Ok(RouteNetlinkMessage::NewAddress(m)) => (m.header, m.attributes),
            other => panic!("{other:?}"),
        };
        let (header, attrs) = attributes(new_address(3, "10.88.0.2".parse().unwrap(), 16));
        assert_eq!(
            (header.index, header.prefix_len, header.family),
            (3, 16, AddressFamily::Inet)
        );
        assert!(attrs.contains(&AddressAttribute::Broadcast(Ipv4Addr::new(10, 88, 255, 255))));
        let (_, attrs) = attributes(new_address(3, "10.88.0.2".parse().unwrap(), 0));
        assert!(attrs.contains(&AddressAttribute::Broadcast(Ipv4Addr::BROADCAST)));
        let (_, attrs) = attributes(new_address(3, "10.88.0.2".parse().unwrap(), 31));
        assert!(!attrs.iter().any(|a| matches!(a, AddressAttribute::Broadcast(_))));
        let (header, _) = attributes(new_address(1, "127.0.0.1".parse().unwrap(), 8));
        assert_eq!(header.scope, AddressScope::Host);
        let (header, attrs) = attributes(new_address(2, "fd00::2".parse().unwrap(), 64));
        assert_eq!(
            (header.family, header.scope),
            (AddressFamily::Inet6, AddressScope::Universe)
        );
        assert!(!attrs.iter().any(|a| matches!(a, AddressAttribute::Broadcast(_))));
        assert!(new_address(2, "10.0.0.1".parse().unwrap(), 33).is_err());
        assert!(new_address(2, "fd00::1".parse().unwrap(), 129).is_err());
    }

    #[test]
    fn the_default_route_names_gateway_and_link() {
        let bytes = encode(new_default_route(Ipv4Addr::new(10, 88, 0, 1), 2), NLM_F_REQUEST, 1);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) = decode(&bytes).payload else {
            panic!("not a route");
        };
        assert_eq!(route.header.destination_prefix_length, 0);
        assert_eq!(route.header.table, RouteHeader::RT_TABLE_MAIN);
        assert!(route.attributes.contains(&RouteAttribute::Oif(2)));
        assert!(route
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 88, 0, 1
            )))));
    }

    #[test]
    fn link_names_are_checked() {
        assert!(check_name("eth0").is_ok());
        assert!(check_name("fifteen-chars-x").is_ok());
        for bad in ["", "sixteen-chars-xx", "a\0b"] {
            assert!(matches!(check_name(bad), Err(NetlinkError::InvalidInput(_))), "{bad:?}");
        }
    }

    #[test]
    fn set_up_and_down_touch_only_the_up_flag() {
        let up = up_down(4, true);
        assert_eq!(
            (up.header.index, up.header.flags, up.header.change_mask),
            (4, LinkFlags::Up, LinkFlags::Up)
        );
        let down = up_down(4, false);
        assert_eq!(
            (down.header.flags, down.header.change_mask),
            (LinkFlags::empty(), LinkFlags::Up)
        );
    }

    fn error_reply(sequence: u32, code: i32) -> Vec<u8> {
        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(code);
        let mut header = NetlinkHeader::default();
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::<RouteNetlinkMessage>::new(header, NetlinkPayload::Error(error));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        assert_eq!(
            NetlinkBuffer::new_checked(&buffer[..]).unwrap().message_type(),
            NLMSG_ERROR
        );
        buffer
    }

    #[test]
    fn replies_end_at_the_acknowledgement_of_their_own_request() {
        let mut replies = Replies::new("test", 5);
        // A reply to another request, then a link, then the ack, in one datagram.
        let mut datagram = error_reply(4, -libc::ENODEV);
        let mut link = LinkMessage::default();
        link.header.index = 9;
        link.attributes.push(LinkAttribute::IfName("eth0".into()));
        datagram.extend(encode(RouteNetlinkMessage::NewLink(link), 0, 5));
        datagram.extend(error_reply(5, 0));
        replies.take(&datagram).unwrap();
        assert!(replies.done);
        let links: Vec<Link> = replies.messages.into_iter().filter_map(link_of).collect();
        assert_eq!(
            (links[0].index, links[0].name.as_str(), links[0].up),
            (9, "eth0", false)
        );
    }

    #[test]
    fn a_refusal_carries_the_errno() {
        let mut replies = Replies::new("creating a bridge", 1);
        let e = replies.take(&error_reply(1, -libc::EEXIST)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert!(e.to_string().starts_with("creating a bridge: "), "{e}");
        let mut replies = Replies::new("odd", 1);
        let e = replies.take(&error_reply(1, i32::MIN)).unwrap_err();
        assert!(e.raw_os_error().is_some());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = error_reply(1, 0);
        let mut inputs: Vec<Vec<u8>> = vec![vec![1, 2, 3], vec![0xff; 40]];
        // Every truncation, and a length field that lies.
        inputs.extend((1..good.len()).map(|n| good[..n].to_vec()));
        let mut lying = good.clone();
        lying[0] = 200;
        inputs.push(lying);
        for input in inputs {
            let mut replies = Replies::new("test", 1);
            let _ = replies.take(&input);
            assert!(!replies.done, "{input:?}");
        }
        // A message of our sequence whose body does not parse.
        let mut bad = encode(RouteNetlinkMessage::NewLink(LinkMessage::default()), 0, 1);
        bad.truncate(20);
        bad[0] = 20;
        let mut replies = Replies::new("test", 1);
        assert!(matches!(replies.take(&bad), Err(NetlinkError::Malformed(_))));
    }
}
