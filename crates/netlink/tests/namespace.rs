//! Real requests to the kernel, each test in a fresh network namespace of
//! its own thread, so the host's links are never touched. They need root.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use netlink::{Netlink, NetlinkError};

/// Runs `test` on a thread of its own in a new network namespace.
fn in_new_namespace(test: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it moves only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "unshare(CLONE_NEWNET) failed: {} (these tests need root)",
                std::io::Error::last_os_error()
            );
        }
        test();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// A tap device, which lives as long as the returned descriptor.
fn tap(name: &str) -> OwnedFd {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun");
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq we pass.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    file.into()
}

#[test]
fn links_addresses_and_routes() {
    in_new_namespace(|| {
        let mut nl = Netlink::open().unwrap();
        let lo = nl.link_index("lo").unwrap().expect("lo");
        nl.set_up(lo).unwrap();
        assert!(nl.link("lo").unwrap().unwrap().up);
        assert!(nl
            .addresses(lo)
            .unwrap()
            .contains(&(IpAddr::V4(Ipv4Addr::LOCALHOST), 8)));

        nl.create_bridge("hulltest0").unwrap();
        nl.create_bridge("hulltest0").unwrap();
        let bridge = nl.link_index("hulltest0").unwrap().expect("the bridge");
        let mac = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x01];
        nl.set_mac(bridge, mac).unwrap();
        nl.set_mtu(bridge, 1400).unwrap();
        nl.set_up(bridge).unwrap();
        let address = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1));
        nl.add_address(bridge, address, 24).unwrap();
        nl.add_address(bridge, address, 24).unwrap();
        let v6: IpAddr = "fd00:99::1".parse().unwrap();
        nl.add_address(bridge, v6, 64).unwrap();
        let addresses = nl.addresses(bridge).unwrap();
        assert!(addresses.contains(&(address, 24)), "{addresses:?}");
        assert!(addresses.contains(&(v6, 64)), "{addresses:?}");
        nl.delete_address(bridge, v6, 64).unwrap();
        nl.delete_address(bridge, v6, 64).unwrap();
        assert!(!nl.addresses(bridge).unwrap().contains(&(v6, 64)), "deleted");

        let _tap = tap("hulltap0");
        let port = nl.link_index("hulltap0").unwrap().expect("the tap");
        nl.set_master(port, bridge).unwrap();

        let links = nl.links().unwrap();
        let found = links.iter().find(|l| l.index == bridge).expect("the bridge listed");
        assert_eq!(found.name, "hulltest0");
        assert_eq!(found.mac, Some(mac));
        assert_eq!(found.kind.as_deref(), Some("bridge"));
        assert!(found.up);
        let found = links.iter().find(|l| l.index == port).expect("the tap listed");
        assert_eq!(found.master, Some(bridge));
        assert_eq!(found.kind.as_deref(), Some("tun"));

        let gateway = Ipv4Addr::new(10, 99, 0, 254);
        nl.add_default_route(gateway, bridge).unwrap();
        nl.add_default_route(gateway, bridge).unwrap();
        let other = nl.add_default_route(Ipv4Addr::new(10, 99, 0, 253), bridge).unwrap_err();
        assert_eq!(other.raw_os_error(), Some(libc::EEXIST), "{other}");
        let routes = nl.ipv4_routes().unwrap();
        assert!(routes.contains(&(Ipv4Addr::UNSPECIFIED, 0, Some(bridge))), "{routes:?}");
        assert!(
            routes.contains(&(Ipv4Addr::new(10, 99, 0, 0), 24, Some(bridge))),
            "{routes:?}"
        );

        nl.set_down(bridge).unwrap();
        assert!(!nl.link("hulltest0").unwrap().unwrap().up);
        nl.delete_link(bridge).unwrap();
        assert_eq!(nl.link_index("hulltest0").unwrap(), None);
        assert!(nl.ipv4_routes().unwrap().iter().all(|route| route.2 != Some(bridge)));
    });
}

#[test]
fn refusals_carry_the_errno() {
    in_new_namespace(|| {
        let mut nl = Netlink::open().unwrap();
        let e = nl.delete_link(4242).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
        assert!(matches!(e, NetlinkError::Kernel { .. }));
        // A link of that name that is no bridge.
        let e = nl.create_bridge("lo").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
        assert_eq!(nl.link_index("nosuchlink").unwrap(), None);
        assert!(matches!(
            nl.link("much-too-long-name"),
            Err(NetlinkError::InvalidInput(_))
        ));
    });
}
