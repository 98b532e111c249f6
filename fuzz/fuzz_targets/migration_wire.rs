#![no_main]
//! What a hulld reads from another host during a move (`to=HOST`): the
//! length-prefixed messages of the control connection, and files sent as
//! segments (raw or LZ4 blocks) into a file bounded in size. The input
//! is the stream: messages are read until one fails; a `File` message
//! starts a file, read to its end into a scratch file of at most 1 MiB.

use std::fs::File;
use std::io::Cursor;
use std::sync::OnceLock;

use daemon::migrate::wire::{self, Message};
use libfuzzer_sys::fuzz_target;

/// One scratch file for the whole run, emptied for every input.
fn scratch() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = hull_fuzz::scratch_dir().join(format!("hull-fuzz-wire-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("the fuzz file");
        let _ = std::fs::remove_file(&path);
        file
    })
}

fuzz_target!(|data: &[u8]| {
    let file = scratch();
    let _ = file.set_len(0);
    let mut input = Cursor::new(data);
    for _ in 0..64 {
        let start = input.position();
        match wire::receive(&mut input) {
            // A file begins: read it again, whole, as the destination does.
            Ok(Message::File { .. }) => {
                input.set_position(start);
                if wire::receive_file(&mut input, file, 1 << 20).is_err() {
                    return;
                }
                assert!(file.metadata().map(|m| m.len() <= 1 << 20).unwrap_or(true));
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
});
