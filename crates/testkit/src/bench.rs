//! Benchmark statistics and their JSON reports.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// Median and p95 (nearest rank) of a set of samples, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub samples: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// The median of `sorted` (ascending, not empty): its middle value, or
/// the mean of its two middle ones.
pub fn median_of_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n % 2 {
        1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median = median_of_sorted(&ms);
        let p95 = ms[((n as f64 * 0.95).ceil() as usize).clamp(1, n) - 1];
        Some(Summary {
            samples: n,
            median_ms: median,
            p95_ms: p95,
            min_ms: ms[0],
            max_ms: ms[n - 1],
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "samples": self.samples,
            "median_ms": round(self.median_ms),
            "p95_ms": round(self.p95_ms),
            "min_ms": round(self.min_ms),
            "max_ms": round(self.max_ms),
        })
    }
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// `target/bench` of this workspace (or of `CARGO_TARGET_DIR`).
pub fn bench_dir() -> PathBuf {
    crate::target_dir().join("bench")
}

/// Writes `report` as `target/bench/NAME.json` (temp file + rename).
pub fn write_report(name: &str, report: &Value) -> std::io::Result<PathBuf> {
    let dir = bench_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    let tmp = dir.join(format!(".{name}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(report)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Where a benchmark ran, for its report.
pub fn environment() -> Value {
    let host = vmm::host::classify();
    let inside_vmhost = std::fs::read_to_string("/proc/sys/kernel/hostname").is_ok_and(|h| h.trim() == "vmhost");
    json!({
        "kvm": host.to_string(),
        "inside_vmhost": inside_vmhost,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        // hull's binaries are the bench's siblings, built the same way.
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn median_and_p95() {
        let s = Summary::of(&ms(&[5, 1, 3, 2, 4])).unwrap();
        assert_eq!((s.median_ms, s.p95_ms, s.min_ms, s.max_ms), (3.0, 5.0, 1.0, 5.0));
        let s = Summary::of(&ms(&(1..=100).collect::<Vec<_>>())).unwrap();
        assert_eq!((s.median_ms, s.p95_ms), (50.5, 95.0));
        assert_eq!(Summary::of(&[]), None);
    }
}
