#![no_main]
//! Unpacking a hostile image layer into a fresh root: it may fail, never
//! panic, and never put anything beside the root.

use std::io::Read;
use std::path::Path;

use image::unpack::{apply_layer, decompressed};
use libfuzzer_sys::fuzz_target;

/// Compression bombs only measure the disk: skip layers that inflate past this.
const MAX_INFLATED: u64 = 16 << 20;

fn inflates_too_much(data: &[u8]) -> bool {
    let Ok(stream) = decompressed(data) else {
        return false;
    };
    std::io::copy(&mut stream.take(MAX_INFLATED + 1), &mut std::io::sink()).is_ok_and(|n| n > MAX_INFLATED)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing the scratch dir")
        .map(|e| e.expect("a dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    if inflates_too_much(data) {
        return;
    }
    let base = hull_fuzz::scratch_dir().join(format!("hull-fuzz-unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(&root).expect("the root");
    std::fs::create_dir_all(&outside).expect("a sibling");
    let _ = apply_layer(&root, data);
    assert_eq!(names(&base), ["outside", "root"], "the layer wrote beside the root");
    assert!(names(&outside).is_empty(), "the layer wrote outside the root");
    std::fs::remove_dir_all(&base).expect("removing the scratch dir");
});
