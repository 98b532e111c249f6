//! Linux capabilities by name, and which ones a container's processes
//! keep: Docker's default set, changed by `--cap-add` and `--cap-drop` with
//! dockerd's rules. The host resolves the set; the agent drops every other
//! capability from the process's bounding set before it runs, so root in a
//! container cannot load modules, remount, reconfigure the guest's network
//! or take over the agent's connection unless the user granted it.

/// Every capability Linux defines, in bit order (`CAP_CHOWN` is 0).
pub const ALL: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What a Docker container keeps unless told otherwise (moby's
/// `oci/caps/defaults.go`).
pub const DOCKER_DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's default set, as a process spec carries it.
pub fn docker_default() -> Vec<String> {
    DOCKER_DEFAULT.iter().map(|c| c.to_string()).collect()
}

/// The bit number of capability `name` (`CAP_`-prefixed, upper case).
pub fn number(name: &str) -> Option<u32> {
    ALL.iter().position(|c| *c == name).map(|n| n as u32)
}

/// `net_admin`, `NET_ADMIN` and `CAP_NET_ADMIN` alike, as dockerd takes
/// them; `ALL` stays `ALL`.
fn normalize(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    match upper.as_str() {
        "ALL" => upper,
        _ if upper.starts_with("CAP_") => upper,
        _ => format!("CAP_{upper}"),
    }
}

/// The capabilities a container keeps: Docker's default set with `drop`
/// taken away and `add` added, as dockerd does it (`ALL` in `add` starts
/// from every capability, `ALL` in `drop` from none; a capability both
/// added and dropped is kept). Unknown names are refused with dockerd's
/// words.
pub fn resolve(add: &[String], drop: &[String]) -> Result<Vec<String>, String> {
    let check = |list: &[String]| -> Result<Vec<String>, String> {
        list.iter()
            .map(|name| {
                let name = normalize(name);
                match name == "ALL" || number(&name).is_some() {
                    true => Ok(name),
                    false => Err(format!("unknown capability: \"{name}\"")),
                }
            })
            .collect()
    };
    let (add, drop) = (check(add)?, check(drop)?);
    let has_all = |list: &[String]| list.iter().any(|c| c == "ALL");
    let kept: Vec<&str> = if has_all(&add) {
        ALL.iter().copied().filter(|c| !drop.iter().any(|d| d == c)).collect()
    } else {
        let base: &[&str] = if has_all(&drop) { &[] } else { DOCKER_DEFAULT };
        ALL.iter()
            .copied()
            .filter(|c| {
                let added = add.iter().any(|a| a == c);
                added || (base.contains(c) && !drop.iter().any(|d| d == c))
            })
            .collect()
    };
    Ok(kept.into_iter().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn dockerd_rules_for_adding_and_dropping() {
        let default = resolve(&[], &[]).unwrap();
        assert_eq!(default.len(), DOCKER_DEFAULT.len());
        assert!(!default.contains(&"CAP_SYS_ADMIN".to_string()));
        let added = resolve(&list(&["net_admin", "CAP_SYS_PTRACE"]), &list(&["MKNOD"])).unwrap();
        assert!(added.contains(&"CAP_NET_ADMIN".into()) && added.contains(&"CAP_SYS_PTRACE".into()));
        assert!(!added.contains(&"CAP_MKNOD".into()));
        assert_eq!(resolve(&[], &list(&["all"])).unwrap(), Vec::<String>::new());
        assert_eq!(resolve(&list(&["CHOWN"]), &list(&["ALL"])).unwrap(), ["CAP_CHOWN"]);
        let all = resolve(&list(&["ALL"]), &list(&["SYS_MODULE"])).unwrap();
        assert_eq!(all.len(), ALL.len() - 1);
        assert_eq!(
            resolve(&list(&["KILL"]), &list(&["KILL"])).unwrap().len(),
            DOCKER_DEFAULT.len()
        );
        assert_eq!(
            resolve(&list(&["FLY"]), &[]).unwrap_err(),
            "unknown capability: \"CAP_FLY\""
        );
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
    }
}
