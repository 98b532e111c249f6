//! How an image's config becomes a container's process, with Docker's
//! rules: the command line replaces `Cmd`, `--entrypoint` replaces
//! `Entrypoint` (and drops the image's `Cmd`), `-e` overrides the image's
//! `Env`, `-w` and `-u` override `WorkingDir` and `User`. User *names* are
//! resolved inside the guest, against the container's own /etc/passwd.

use oci_spec::image::ImageConfiguration;

use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// Docker's default PATH for containers.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the user asked for on the command line, each overriding the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overrides {
    pub entrypoint: Option<Vec<String>>,
    /// Empty: the image's `Cmd`.
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Docker's `--group-add`: more groups, names or numbers.
    #[serde(default)]
    pub group_add: Vec<String>,
}

/// The container's process, ready for the agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Process {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// `user[:group]`, names or numbers; empty means root.
    pub user: String,
    /// Supplementary groups beyond the user's own (`--group-add`).
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("No command specified")]
    NoCommand,
    #[error("the image config {digest} is not valid: {detail}")]
    Invalid { digest: Digest, detail: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Reads and parses an image's config blob.
pub fn load(store: &Store, id: &Digest) -> Result<ImageConfiguration, ConfigError> {
    let bytes = store.read_document(id)?;
    serde_json::from_slice(&bytes).map_err(|e| ConfigError::Invalid {
        digest: id.clone(),
        detail: e.to_string(),
    })
}

/// Sets `entry` (`KEY=VALUE`, or a bare `KEY`) in `env`, replacing any
/// earlier value of the same key.
pub fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split('=').next().unwrap_or_default();
    env.retain(|e| e.split('=').next() != Some(key));
    env.push(entry.to_string());
}

/// The process of a container of image `id`: `resolved`, what its create
/// resolved already, else the image's config under `overrides`.
pub fn process_of(
    store: &Store,
    id: &Digest,
    resolved: Option<&Process>,
    overrides: &Overrides,
) -> Result<Process, ConfigError> {
    match resolved {
        Some(process) => Ok(process.clone()),
        None => process(Some(&load(store, id)?), overrides),
    }
}

/// Applies `overrides` to the image's config (None: a bare rootfs without
/// one).
pub fn process(image: Option<&ImageConfiguration>, overrides: &Overrides) -> Result<Process, ConfigError> {
    let config = image.and_then(|i| i.config().as_ref());
    let entrypoint = match &overrides.entrypoint {
        Some(e) => e.clone(),
        None => config.and_then(|c| c.entrypoint().clone()).unwrap_or_default(),
    };
    // Docker drops the image's Cmd when the entrypoint is overridden.
    let cmd = if !overrides.cmd.is_empty() {
        overrides.cmd.clone()
    } else if overrides.entrypoint.is_some() {
        Vec::new()
    } else {
        config.and_then(|c| c.cmd().clone()).unwrap_or_default()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() || argv[0].is_empty() {
        return Err(ConfigError::NoCommand);
    }
    let mut env = Vec::new();
    for entry in config.and_then(|c| c.env().clone()).unwrap_or_default() {
        set_env(&mut env, &entry);
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    for entry in &overrides.env {
        set_env(&mut env, entry);
    }
    let image_workdir = config.and_then(|c| c.working_dir().clone()).filter(|w| !w.is_empty());
    let workdir = overrides
        .workdir
        .clone()
        .or(image_workdir)
        .unwrap_or_else(|| "/".into());
    let user = overrides
        .user
        .clone()
        .or_else(|| config.and_then(|c| c.user().clone()))
        .unwrap_or_default();
    Ok(Process {
        argv,
        env,
        workdir,
        user,
        groups: overrides.group_add.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(json: &str) -> ImageConfiguration {
        serde_json::from_str(&format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"config":{json}}}"#
        ))
        .unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn docker_rules_for_entrypoint_cmd_env_workdir_user() {
        let img = image(
            r#"{"Entrypoint":["/init"],"Cmd":["serve","--port","80"],"Env":["PATH=/opt/bin","A=1"],
                "WorkingDir":"/srv","User":"app"}"#,
        );
        let p = process(Some(&img), &Overrides::default()).unwrap();
        assert_eq!(p.argv, strings(&["/init", "serve", "--port", "80"]));
        assert_eq!(p.env, strings(&["PATH=/opt/bin", "A=1"]));
        assert_eq!((p.workdir.as_str(), p.user.as_str()), ("/srv", "app"));

        let p = process(
            Some(&img),
            &Overrides {
                cmd: strings(&["debug"]),
                env: strings(&["A=2", "B=3"]),
                workdir: Some("/tmp".into()),
                user: Some("0:0".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.argv, strings(&["/init", "debug"]));
        assert_eq!(p.env, strings(&["PATH=/opt/bin", "A=2", "B=3"]));
        assert_eq!((p.workdir.as_str(), p.user.as_str()), ("/tmp", "0:0"));

        let p = process(
            Some(&img),
            &Overrides {
                entrypoint: Some(strings(&["sh"])),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            p.argv,
            strings(&["sh"]),
            "an overridden entrypoint drops the image's Cmd"
        );

        let bare = image(r#"{"Cmd":["sh"]}"#);
        let p = process(Some(&bare), &Overrides::default()).unwrap();
        assert_eq!(
            (p.env[0].as_str(), p.workdir.as_str(), p.user.as_str()),
            (
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "/",
                ""
            )
        );
        let empty = image("{}");
        assert!(matches!(
            process(Some(&empty), &Overrides::default()),
            Err(ConfigError::NoCommand)
        ));
        assert!(matches!(
            process(None, &Overrides::default()),
            Err(ConfigError::NoCommand)
        ));
    }
}
