//! How a pull looks: a bar per layer on a terminal, Docker's plain lines
//! otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use image::pull::{Progress, PullEvent};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// A progress sink for `hull pull` and `hull run`'s implicit pull.
pub fn for_pull(quiet: bool) -> Progress {
    if quiet {
        return Arc::new(|_| {});
    }
    if std::io::stderr().is_terminal() {
        let multi = MultiProgress::new();
        let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
        let style = ProgressStyle::with_template("{prefix}: {msg:<18} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        Arc::new(move |event| {
            let Ok(mut bars) = bars.lock() else { return };
            let mut bar = |id: &str, total: u64| {
                bars.entry(id.to_string())
                    .or_insert_with(|| {
                        let bar = multi.add(ProgressBar::new(total));
                        bar.set_style(style.clone());
                        bar.set_prefix(id.to_string());
                        bar
                    })
                    .clone()
            };
            match event {
                PullEvent::Resolved { .. } => {}
                PullEvent::AlreadyExists { id } => bar(&id, 0).finish_with_message("Already exists"),
                PullEvent::Waiting { id, total } => bar(&id, total).set_message("Pulling fs layer"),
                PullEvent::Downloading { id, current, total } => {
                    let b = bar(&id, total);
                    b.set_message("Downloading");
                    b.set_position(current);
                }
                PullEvent::Complete { id } => bar(&id, 0).finish_with_message("Pull complete"),
                PullEvent::Done { digest, .. } => {
                    let _ = multi.println(format!("Digest: {digest}"));
                }
            }
        })
    } else {
        Arc::new(|event| match event {
            PullEvent::AlreadyExists { id } => eprintln!("{id}: Already exists"),
            PullEvent::Waiting { id, .. } => eprintln!("{id}: Pulling fs layer"),
            PullEvent::Complete { id } => eprintln!("{id}: Pull complete"),
            PullEvent::Done { digest, .. } => eprintln!("Digest: {digest}"),
            PullEvent::Resolved { .. } | PullEvent::Downloading { .. } => {}
        })
    }
}
