//! VM test: the suite is safe on a host where hull already runs. A hulld
//! standing in for the user's runs a container (on a network of its own,
//! with a volume); the suite's own hulld, beside it, then does what the
//! tests do (runs, removes, prunes everything it may, stops). The user's
//! container is still running afterwards, in the same VM, with its
//! network, volume and log.

use testkit::hulld::{ok, Hulld};

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn the_suites_hulld_leaves_another_hullds_containers_alone() {
    let (user, _user_registry, user_image) = Hulld::with_busybox("user").unwrap();
    ok(&user.docker(&["network", "create", "usernet"]));
    ok(&user.docker(&["volume", "create", "userdata"]));
    ok(&user.docker(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "usernet",
        "-v",
        "userdata:/data",
        &user_image,
        "sh",
        "-c",
        "echo kept > /data/f; echo up; exec sleep 600",
    ]));
    let vmm_before = user.processes_of("hull-vmm");
    assert_eq!(vmm_before.len(), 1, "the user's one VM: {vmm_before:?}");
    let address = user.inspect("{{.NetworkSettings.Networks.usernet.IPAddress}}", "web");

    // The suite's hulld does its work beside it, then prunes and stops.
    {
        let (suite, _registry, image) = Hulld::with_busybox("suite").unwrap();
        assert_eq!(ok(&suite.docker(&["run", "--rm", &image, "echo", "hi"])), "hi\n");
        ok(&suite.docker(&["network", "create", "testnet"]));
        ok(&suite.docker(&[
            "run",
            "-d",
            "--name",
            "busy",
            "--network",
            "testnet",
            &image,
            "sleep",
            "600",
        ]));
        assert_eq!(
            ok(&suite.docker(&["ps", "-aq"])).lines().count(),
            1,
            "the suite's hulld lists only its own container"
        );
        ok(&suite.docker(&["rm", "-f", "busy"]));
        ok(&suite.docker(&["network", "rm", "testnet"]));
        ok(&suite.docker(&["system", "prune", "-af", "--volumes"]));
        ok(&suite.docker(&["volume", "prune", "-af"]));
        suite.assert_no_leftovers();
    }

    // The user's container is untouched.
    assert_eq!(user.inspect("{{.State.Running}}", "web"), "true");
    assert_eq!(user.processes_of("hull-vmm"), vmm_before, "the same VM runs on");
    assert_eq!(ok(&user.docker(&["exec", "web", "cat", "/data/f"])), "kept\n");
    assert_eq!(
        user.inspect("{{.NetworkSettings.Networks.usernet.IPAddress}}", "web"),
        address
    );
    let ifaces = ok(&user.docker(&["exec", "web", "busybox", "ip", "-4", "-o", "addr"]));
    assert!(ifaces.contains(&address), "{ifaces}");
    assert!(ok(&user.docker(&["logs", "web"])).contains("up"));
    assert!(ok(&user.docker(&["network", "ls"])).contains("usernet"));
    ok(&user.docker(&["rm", "-f", "web"]));
}
