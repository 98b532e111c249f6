//! Docker's container `Config` and `HostConfig` as hulld keeps them in a
//! container's record: the fields hulld acts on are typed, everything
//! else the client sent is kept as sent, so `docker inspect` shows it all
//! back. The create request is checked strictly (`create.rs`); reading a
//! stored record is lenient (a value of the wrong type reads as unset), so
//! one odd record never hides a container from `docker ps`.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// `Config`: what the container runs and how it is attached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    #[serde(default, deserialize_with = "lenient")]
    pub hostname: String,
    #[serde(default, deserialize_with = "lenient")]
    pub tty: bool,
    #[serde(default, deserialize_with = "lenient")]
    pub open_stdin: bool,
    /// The first attached client's end of input is the container's.
    #[serde(default, deserialize_with = "lenient")]
    pub stdin_once: bool,
    #[serde(default, deserialize_with = "lenient")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Seconds; negative waits for the container to stop, as dockerd.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    /// `PORT/PROTO` keys (Docker's `map[string]struct{}`).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    /// The client's check with the image's under it (`health::merge`);
    /// `health::HealthCheck::of` reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Value>,
    /// Everything else, as sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `HostConfig`: how hulld runs the container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    #[serde(default, deserialize_with = "lenient")]
    pub network_mode: String,
    #[serde(default, deserialize_with = "lenient")]
    pub restart_policy: RestartPolicy,
    #[serde(default, deserialize_with = "lenient")]
    pub auto_remove: bool,
    /// `/NAME:/PARENT/ALIAS` entries, as Docker stores `--link`.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub links: Option<Vec<String>>,
    /// `--group-add`.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub group_add: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient")]
    pub log_config: LogConfig,
    /// Bytes.
    #[serde(default, deserialize_with = "lenient")]
    pub memory: i64,
    #[serde(default, deserialize_with = "lenient")]
    pub nano_cpus: i64,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub runtime: String,
    /// `--cap-add`, `--cap-drop`.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub cap_add: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub cap_drop: Option<Vec<String>>,
    /// Everything else, as sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    pub name: String,
    pub maximum_retry_count: i64,
}

/// One of `HostConfig.Mounts` (`--mount`), as a create request sends it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Mount {
    #[serde(rename = "Type")]
    pub kind: String,
    pub source: String,
    pub target: String,
    pub read_only: bool,
    pub bind_options: BindOptions,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindOptions {
    pub propagation: String,
}

/// `--log-driver` and `--log-opt`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConfig {
    #[serde(rename = "Type")]
    pub driver: String,
    pub config: BTreeMap<String, String>,
}

impl HostConfig {
    /// The client's HostConfig with what Docker fills in and tools read
    /// (the SDKs look at `LogConfig.Type` before reading logs).
    pub fn with_defaults(mut self) -> HostConfig {
        if self.network_mode.is_empty() {
            self.network_mode = "none".into();
        }
        if self.restart_policy.name.is_empty() {
            self.restart_policy.name = "no".into();
        }
        if self.runtime.is_empty() {
            self.runtime = "hull".into();
        }
        if self.log_config.driver.is_empty() {
            self.log_config.driver = "json-file".into();
        }
        self
    }

    pub fn groups(&self) -> Vec<String> {
        self.group_add.clone().unwrap_or_default()
    }

    pub fn links(&self) -> Vec<String> {
        self.links.clone().unwrap_or_default()
    }

    /// The capabilities the container's processes keep (checked at create;
    /// Docker's default set should a stored record say otherwise).
    pub fn capabilities(&self) -> Vec<String> {
        let (add, drop) = (
            self.cap_add.clone().unwrap_or_default(),
            self.cap_drop.clone().unwrap_or_default(),
        );
        proto::capabilities::resolve(&add, &drop).unwrap_or_else(|_| proto::capabilities::docker_default())
    }
}

/// A stored field of an unexpected type reads as unset.
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    let value = Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_fields_are_read_and_the_rest_is_kept_as_sent() {
        let sent = json!({
            "Tty": true, "OpenStdin": true, "StdinOnce": false, "Hostname": "web",
            "Labels": {"a": "1"}, "StopSignal": "SIGINT", "StopTimeout": -1,
            "ExposedPorts": {"80/tcp": {}}, "Cmd": ["sh"], "Env": ["A=1"], "Image": "box",
        });
        let config: Config = serde_json::from_value(sent.clone()).unwrap();
        assert!(config.tty && config.open_stdin && !config.stdin_once);
        assert_eq!(config.stop_timeout, Some(-1));
        assert_eq!(config.labels["a"], "1");
        assert_eq!(config.other["Cmd"], json!(["sh"]));
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            sent,
            "inspect shows what was sent"
        );
    }

    #[test]
    fn a_stored_value_of_the_wrong_type_reads_as_unset() {
        let config: Config =
            serde_json::from_value(json!({"Tty": "yes", "Labels": null, "StopTimeout": "ten", "Cmd": "x"})).unwrap();
        assert!(!config.tty);
        assert!(config.labels.is_empty());
        assert_eq!(config.stop_timeout, None);
        let host: HostConfig =
            serde_json::from_value(json!({"RestartPolicy": 3, "GroupAdd": "wheel", "Binds": ["/a:/b"]})).unwrap();
        let host = host.with_defaults();
        assert_eq!(host.restart_policy.name, "no");
        assert!(host.groups().is_empty());
        assert_eq!(host.log_config.driver, "json-file");
        assert_eq!(host.other["Binds"], json!(["/a:/b"]));
        let shown = serde_json::to_value(&host).unwrap();
        assert_eq!(shown["RestartPolicy"], json!({"Name": "no", "MaximumRetryCount": 0}));
        assert_eq!(shown["LogConfig"], json!({"Type": "json-file", "Config": {}}));
    }
}
