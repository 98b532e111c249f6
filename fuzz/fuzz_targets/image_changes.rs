#![no_main]
//! Dockerfile change instructions from an API client (`docker commit -c`,
//! `docker import -c`; NUL separates the changes of one input): refused or
//! applied to a run config, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let changes: Vec<String> = text.split('\0').map(String::from).collect();
    let mut config = serde_json::Map::new();
    config.insert("Env".into(), serde_json::json!(["PATH=/bin"]));
    config.insert("WorkingDir".into(), serde_json::json!("/srv"));
    if image::changes::apply(&mut config, &changes).is_ok() {
        // What was applied is a config a later create reads back.
        serde_json::to_vec(&config).expect("a JSON config");
    }
});
