//! `hull pull/images/image inspect/tag/rmi/load/image prune`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use image::{ImageRecord, ImageRef, Store};

pub fn open_store() -> Result<Store> {
    Store::open(&runtime::data_dir()).context("opening the image store")
}

/// Pulls `name` and says so as Docker does.
pub fn pull(name: &str, quiet: bool) -> Result<ImageRecord> {
    let reference = ImageRef::parse(name)?;
    let store = Arc::new(open_store()?);
    let tag = reference.tag().unwrap_or("latest").to_string();
    if !quiet {
        eprintln!("{}: Pulling from {}", tag, reference.familiar_repository());
    }
    let before = store.resolve(name).ok().map(|r| r.id);
    let record = image::pull::pull_blocking(store, &reference, crate::progress::for_pull(quiet))?;
    if !quiet {
        if before.as_ref() == Some(&record.id) {
            eprintln!("Status: Image is up to date for {reference}");
        } else {
            eprintln!("Status: Downloaded newer image for {reference}");
        }
    }
    Ok(record)
}

/// The image `name` from the store, pulled first if it is not there (as
/// `docker run` does).
pub fn resolve_or_pull(name: &str) -> Result<ImageRecord> {
    let store = open_store()?;
    match store.resolve(name) {
        Ok(record) => Ok(record),
        Err(image::StoreError::NoSuchImage(_)) => {
            let reference = ImageRef::parse(name)?;
            eprintln!("Unable to find image '{reference}' locally");
            pull(name, false)
        }
        Err(e) => Err(e.into()),
    }
}

/// "3 days ago", as Docker prints creation times.
fn ago(created: Option<&str>) -> String {
    let Some(time) = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) else {
        return "N/A".into();
    };
    let seconds = (chrono::Utc::now() - time.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    let (n, unit) = match seconds {
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s if s < 14 * 86_400 => (s / 86_400, "day"),
        s if s < 60 * 86_400 => (s / (7 * 86_400), "week"),
        s if s < 730 * 86_400 => (s / (30 * 86_400), "month"),
        s => (s / (365 * 86_400), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}{}", units[unit]).replace(".000", "")
    }
}

/// `hull images`: one line per tag (and one for each untagged image).
pub fn list(quiet: bool) -> Result<()> {
    let store = open_store()?;
    let tags = store.tags()?;
    let mut rows = Vec::new();
    for record in store.images()? {
        let own: Vec<&String> = tags
            .iter()
            .filter(|(_, id)| **id == record.id)
            .map(|(t, _)| t)
            .collect();
        let names: Vec<(String, String)> = if own.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            own.iter()
                .map(|t| match t.rsplit_once(':') {
                    Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
                    _ => (t.to_string(), "<none>".into()),
                })
                .collect()
        };
        for (repo, tag) in names {
            rows.push((repo, tag, record.clone()));
        }
    }
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    if quiet {
        let mut seen = std::collections::BTreeSet::new();
        for (_, _, record) in rows {
            if seen.insert(record.id.clone()) {
                println!("{}", record.id.short());
            }
        }
        return Ok(());
    }
    println!(
        "{:<40} {:<16} {:<14} {:<16} SIZE",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED"
    );
    for (repo, tag, record) in rows {
        println!(
            "{:<40} {:<16} {:<14} {:<16} {}",
            repo,
            tag,
            record.id.short(),
            ago(record.created.as_deref()),
            human_size(record.size())
        );
    }
    Ok(())
}

pub fn inspect(names: &[String]) -> Result<bool> {
    let store = open_store()?;
    let mut out = Vec::new();
    let mut all_found = true;
    for name in names {
        match store.resolve(name) {
            Ok(record) => out.push(image::inspect::docker_json(&store, &record)?),
            Err(e) => {
                eprintln!("Error: {e}");
                all_found = false;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(all_found)
}

pub fn tag(source: &str, target: &str) -> Result<()> {
    open_store()?.tag(source, target)?;
    Ok(())
}

pub fn remove(names: &[String], force: bool) -> Result<bool> {
    let store = open_store()?;
    let users = runtime::usage::images_in_use();
    let mut ok = true;
    for name in names {
        match store.remove(name, force, &|id| users.get(id).cloned().unwrap_or_default()) {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                ok = false;
            }
        }
    }
    Ok(ok)
}

pub fn load(input: &Path, quiet: bool) -> Result<()> {
    let store = open_store()?;
    let loaded = image::load::load(&store, input).with_context(|| format!("loading {}", input.display()))?;
    if !quiet {
        for image in loaded {
            if image.tags.is_empty() {
                println!("Loaded image ID: {}", image.record.id);
            }
            for tag in image.tags {
                println!("Loaded image: {tag}");
            }
        }
    }
    Ok(())
}

/// `hull image prune`: removes dangling (untagged, unused) images, then
/// every blob, partial download and disk no image references.
pub fn prune() -> Result<()> {
    let store = open_store()?;
    let users = runtime::usage::images_in_use();
    let (report, freed) = store.prune(false, &|id| users.contains_key(id))?;
    for line in report {
        println!("{line}");
    }
    println!("Total reclaimed space: {}", human_size(freed));
    Ok(())
}
