//! Emulated devices: the 8250 console, the legacy reset/sleep ports, and
//! (later) the virtio-mmio devices.

pub mod legacy;
pub mod serial;
pub mod virtio;
