//! A container's logging configuration (`--log-driver`, `--log-opt`),
//! checked with dockerd's rules and messages. hull keeps every log in
//! Docker's json-file format (`container_log`); `local` differs only in its
//! rotation defaults, and `none` keeps no log to read (a small buffer still
//! feeds attached clients).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogDriver {
    #[default]
    JsonFile,
    Local,
    None,
}

/// How a container's log is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    pub driver: LogDriver,
    /// Rotate the log once it holds this many bytes (`None`: never).
    pub max_size: Option<u64>,
    /// Files kept, the one being written included.
    pub max_file: u32,
    /// Asked for; rotated files are kept uncompressed.
    pub compress: bool,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            driver: LogDriver::JsonFile,
            max_size: None,
            max_file: 1,
            compress: false,
        }
    }
}

/// What a `none` container keeps for attached clients.
const NONE_BUFFER: u64 = 1 << 20;

/// Docker's drivers that hull does not implement.
const OTHER_DOCKER_DRIVERS: &[&str] = &[
    "syslog",
    "journald",
    "gelf",
    "fluentd",
    "awslogs",
    "splunk",
    "etwlogs",
    "gcplogs",
    "logentries",
];

impl LogConfig {
    /// `driver` (empty: json-file) with `options`, or dockerd's error.
    pub fn parse(driver: &str, options: &BTreeMap<String, String>) -> Result<LogConfig, String> {
        let driver = match driver {
            "" | "json-file" => LogDriver::JsonFile,
            "local" => LogDriver::Local,
            "none" => LogDriver::None,
            other if OTHER_DOCKER_DRIVERS.contains(&other) => {
                return Err(format!(
                    "the {other} log driver is not supported by hull: use json-file, local or none"
                ))
            }
            other => return Err(format!("logger: no log driver named '{other}' is registered")),
        };
        let known: &[&str] = match driver {
            LogDriver::JsonFile => &[
                "max-file",
                "max-size",
                "compress",
                "labels",
                "labels-regex",
                "env",
                "env-regex",
                "tag",
            ],
            LogDriver::Local => &["max-file", "max-size", "compress"],
            LogDriver::None => &[],
        };
        if let Some(key) = options.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!("unknown log opt '{key}' for {} log driver", driver.name()));
        }
        let (default_size, default_files, default_compress) = match driver {
            LogDriver::Local => (Some(20 << 20), 5, true),
            LogDriver::JsonFile => (None, 1, false),
            LogDriver::None => (Some(NONE_BUFFER), 1, false),
        };
        let max_size = match options.get("max-size") {
            Some(size) => match human_size(size)? {
                0 => return Err("max-size must be a positive number".into()),
                n => Some(n),
            },
            None => default_size,
        };
        let max_file = match options.get("max-file") {
            Some(n) => match n.trim().parse::<i64>() {
                Ok(n) if n < 1 => return Err("max-file cannot be less than 1".into()),
                Ok(n) => u32::try_from(n).map_err(|_| format!("max-file {n} is too large"))?,
                Err(_) => return Err(format!("strconv.Atoi: parsing \"{n}\": invalid syntax")),
            },
            None => default_files,
        };
        let compress = match options.get("compress") {
            Some(value) => parse_bool(value)?,
            None => default_compress,
        };
        if compress && options.contains_key("compress") && (max_file < 2 || max_size.is_none()) {
            return Err("compress cannot be true when max-file is less than 2 or max-size is not set".into());
        }
        Ok(LogConfig {
            driver,
            max_size,
            max_file,
            compress,
        })
    }

    /// Whether `docker logs` can read it.
    pub fn readable(&self) -> bool {
        self.driver != LogDriver::None
    }
}

impl LogDriver {
    pub fn name(self) -> &'static str {
        match self {
            LogDriver::JsonFile => "json-file",
            LogDriver::Local => "local",
            LogDriver::None => "none",
        }
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing \"{value}\": invalid syntax")),
    }
}

/// A size as Docker's `units.FromHumanSize` reads it: decimal units
/// (`10m` is 10,000,000 bytes), an optional `i` and `b`.
fn human_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size: '{text}'");
    let s = text.trim();
    let digits = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "p" => 1e15,
        _ => return Err(invalid()),
    };
    let bytes = number * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(driver: &str, options: &[(&str, &str)]) -> Result<LogConfig, String> {
        let options = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        LogConfig::parse(driver, &options)
    }

    #[test]
    fn json_file_and_local_take_docker_sizes_and_defaults() {
        assert_eq!(parse("", &[]).unwrap(), LogConfig::default());
        let rotated = parse("json-file", &[("max-size", "10m"), ("max-file", "3"), ("tag", "x")]).unwrap();
        assert_eq!((rotated.max_size, rotated.max_file), (Some(10_000_000), 3));
        let local = parse("local", &[]).unwrap();
        assert_eq!(
            (local.max_size, local.max_file, local.compress),
            (Some(20 << 20), 5, true)
        );
        for (text, bytes) in [
            ("1k", 1000),
            ("1.5KB", 1500),
            ("2 MiB", 2_000_000),
            ("100", 100),
            ("1g", 1_000_000_000),
        ] {
            assert_eq!(human_size(text), Ok(bytes), "{text}");
        }
        let none = parse("none", &[]).unwrap();
        assert!(!none.readable());
        assert_eq!(none.max_size, Some(NONE_BUFFER));
    }

    #[test]
    fn bad_drivers_and_options_get_dockerd_errors() {
        let err = |driver: &str, options: &[(&str, &str)]| parse(driver, options).unwrap_err();
        assert_eq!(err("foo", &[]), "logger: no log driver named 'foo' is registered");
        assert!(err("syslog", &[]).contains("not supported by hull"));
        assert_eq!(
            err("json-file", &[("max-bytes", "1")]),
            "unknown log opt 'max-bytes' for json-file log driver"
        );
        assert_eq!(
            err("none", &[("max-size", "1m")]),
            "unknown log opt 'max-size' for none log driver"
        );
        assert_eq!(
            err("json-file", &[("max-size", "0")]),
            "max-size must be a positive number"
        );
        assert_eq!(err("json-file", &[("max-size", "ten")]), "invalid size: 'ten'");
        assert_eq!(err("json-file", &[("max-size", "1x")]), "invalid size: '1x'");
        assert_eq!(err("json-file", &[("max-file", "0")]), "max-file cannot be less than 1");
        assert!(err("json-file", &[("max-file", "two")]).contains("invalid syntax"));
        assert!(err("json-file", &[("compress", "yes")]).contains("ParseBool"));
        assert!(err("json-file", &[("compress", "true")]).starts_with("compress cannot be true"));
        assert!(parse(
            "json-file",
            &[("compress", "true"), ("max-size", "1m"), ("max-file", "2")]
        )
        .is_ok());
        assert!(human_size("1e400").is_err());
    }
}
