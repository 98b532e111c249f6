#![no_main]
//! The frame decoder host and agent both run on what the other side sends,
//! and the VMM control-line decoder. Whatever decodes must encode and decode
//! back to the same message.

use libfuzzer_sys::fuzz_target;
use proto::vmm_control::{read_message, write_message, VmmReply, VmmRequest};
use proto::{read_frame, write_frame, Frame};

fn round_trip(frame: &Frame) {
    let mut wire = Vec::new();
    // A control message can re-encode larger than it came; over the limit is
    // refused, which is fine.
    if write_frame(&mut wire, frame).is_ok() {
        let back = read_frame(&mut &wire[..]).expect("re-reading an encoded frame");
        assert_eq!(back.as_ref(), Some(frame));
    }
}

fn control_lines<T>(data: &[u8])
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    let mut r = data;
    while let Ok(Some(message)) = read_message::<T>(&mut r) {
        let mut wire = Vec::new();
        write_message(&mut wire, &message).expect("encoding a decoded message");
        let back = read_message::<T>(&mut &wire[..]).expect("re-reading an encoded message");
        assert_eq!(back.as_ref(), Some(&message));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some(frame)) = read_frame(&mut r) {
        round_trip(&frame);
    }
    control_lines::<VmmRequest>(data);
    control_lines::<VmmReply>(data);
});
