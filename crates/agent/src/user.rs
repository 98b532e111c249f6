//! Docker's `-u user[:group]`, resolved the way runc does against the
//! container's own /etc/passwd and /etc/group: names or numbers, the
//! user's primary group unless one is given, its supplementary groups,
//! and its home directory.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Lines of a colon-separated database file, at most 1 MiB of it.
fn records(path: &Path) -> Vec<Vec<String>> {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(1 << 20).read_to_string(&mut text);
    }
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

fn passwd(root: &Path) -> Vec<PasswdEntry> {
    records(&root.join("etc/passwd"))
        .into_iter()
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.clone(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).cloned().unwrap_or_default(),
            })
        })
        .collect()
}

fn groups(root: &Path) -> Vec<GroupEntry> {
    records(&root.join("etc/group"))
        .into_iter()
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.clone(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `spec` (`""`, `user`, `uid`, `user:group`, `uid:gid`, …) inside
/// `root`, with the groups of `--group-add` (names or numbers) added.
pub fn resolve(root: &Path, spec: &str, extra_groups: &[String]) -> Result<Identity, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let users = passwd(root);
    let numeric_uid = user.parse::<u32>().ok();
    let entry = match numeric_uid {
        Some(uid) => users.iter().find(|e| e.uid == uid),
        None => users.iter().find(|e| e.name == user),
    };
    let (uid, mut gid, home, name) = match (entry, numeric_uid) {
        (Some(e), _) => (e.uid, e.gid, e.home.clone(), Some(e.name.clone())),
        (None, Some(uid)) => (uid, 0, "/".to_string(), None),
        (None, None) => {
            return Err(format!(
                "unable to find user {user}: no matching entries in passwd file"
            ))
        }
    };
    let all_groups = groups(root);
    if let Some(group) = group.filter(|g| !g.is_empty()) {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => all_groups
                .iter()
                .find(|g| g.name == group)
                .map(|g| g.gid)
                .ok_or_else(|| format!("unable to find group {group}: no matching entries in group file"))?,
        };
    }
    let mut supplementary: Vec<u32> = match &name {
        Some(name) => all_groups
            .iter()
            .filter(|g| g.members.contains(name))
            .map(|g| g.gid)
            .collect(),
        None => Vec::new(),
    };
    if !supplementary.contains(&gid) {
        supplementary.insert(0, gid);
    }
    for group in extra_groups {
        let extra = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => all_groups
                .iter()
                .find(|g| &g.name == group)
                .map(|g| g.gid)
                .ok_or_else(|| format!("unable to find group {group}: no matching entries in group file"))?,
        };
        if !supplementary.contains(&extra) {
            supplementary.push(extra);
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_groups_and_homes() {
        let root = std::env::temp_dir().join(format!("hull-agent-user-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken line\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\n").unwrap();
        let id = resolve(&root, "", &[]).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (0, 0, "/root"));
        let id = resolve(&root, "app", &[]).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.groups.clone(), id.home.as_str()),
            (1000, 1000, vec![1000, 50], "/home/app")
        );
        let id = resolve(&root, "app:staff", &[]).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 50));
        let id = resolve(&root, "4242:7", &[]).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (4242, 7, "/"));
        assert!(resolve(&root, "nobody", &[])
            .unwrap_err()
            .contains("unable to find user nobody"));
        assert!(resolve(&root, "app:nogroup", &[])
            .unwrap_err()
            .contains("unable to find group nogroup"));
        // --group-add: names from the container's /etc/group, or numbers.
        let extra = ["staff".to_string(), "777".to_string(), "app".to_string()];
        assert_eq!(resolve(&root, "", &extra).unwrap().groups, vec![0, 50, 777, 1000]);
        assert!(resolve(&root, "", &["wheel".to_string()])
            .unwrap_err()
            .contains("unable to find group wheel"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
