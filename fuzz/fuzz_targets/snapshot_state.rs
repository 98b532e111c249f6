#![no_main]
//! The snapshot state-file decoder: the input as a whole file, or as a
//! payload behind a valid header (so it gets past the checksum to the
//! postcard decoder). Now and then through a real file too, where
//! `read_state` must judge it exactly as `decode_state` does. The same
//! bytes also as a migration's unsealed state (`decode_unsealed`).

use std::mem::discriminant;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use vmm::snapshot::{decode_state, decode_unsealed, read_state, state_path, FORMAT_VERSION};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut file = b"HULLSNAP".to_vec();
        file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.extend_from_slice(&(rest.len() as u64).to_le_bytes());
        file.extend_from_slice(&Sha256::digest(rest));
        file.extend_from_slice(rest);
        file
    };
    let _ = decode_unsealed(rest, "fuzz");
    let decoded = decode_state(&bytes, "fuzz");
    if mode & 0x0e == 0 {
        let dir = hull_fuzz::scratch_dir().join(format!("hull-fuzz-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("snapshot dir");
        std::fs::write(state_path(&dir), &bytes).expect("writing the state file");
        let read = read_state(&dir);
        match (&decoded, &read) {
            (Ok(_), Ok(_)) => {}
            (Err(a), Err(b)) => assert_eq!(discriminant(a), discriminant(b), "{a} / {b}"),
            _ => panic!("decode_state and read_state disagree: {decoded:?} / {read:?}"),
        }
    }
});
