//! A virtio-mmio device's part of a snapshot: how its driver left the
//! transport and the queues, restored against untrusted input.

use std::sync::Arc;

use crate::guest_memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::mmio::MmioTransport;
use super::{Interrupt, VirtioDevice};

/// One virtio-mmio slot: what device sat there and how its driver left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub device_type: u32,
    pub features: u64,
    /// The device's config space when the snapshot was taken (a disk's
    /// capacity): a clone whose backend differs raises a config change.
    pub config: Vec<u8>,
    pub queues: Vec<QueueRegs>,
    pub queue_select: u32,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub driver_features: u64,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
}

/// virtio-queue's `QueueState`, which has no serde.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegs {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl MmioTransport {
    /// How the driver left this device (for a snapshot; queues paused).
    pub fn state(&self) -> DeviceState {
        DeviceState {
            device_type: self.device.device_type(),
            features: self.device.features(),
            config: self.device.config(),
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let s = q.state();
                    QueueRegs {
                        max_size: s.max_size,
                        next_avail: s.next_avail,
                        next_used: s.next_used,
                        event_idx_enabled: s.event_idx_enabled,
                        size: s.size,
                        ready: s.ready,
                        desc_table: s.desc_table,
                        avail_ring: s.avail_ring,
                        used_ring: s.used_ring,
                    }
                })
                .collect(),
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
        }
    }

    /// A transport for `device` as a snapshot's driver left it
    /// (`apply_state`).
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        state: &DeviceState,
    ) -> Result<(Self, bool), String> {
        let mut transport = MmioTransport::new(device, memory, interrupt);
        let config_changed = transport.apply_state(state)?;
        Ok((transport, config_changed))
    }

    /// Takes a snapshot's (or a migrated VM's) driver state, in place: a
    /// migration's destination makes its devices before the state arrives.
    /// The device must be of the same kind with the same features; its
    /// configuration (a disk's size) may differ, and then the generation
    /// moves on so the driver re-reads it (true is returned: the caller
    /// raises the config-change interrupt). The state is untrusted: queues
    /// are validated against guest memory. On an error nothing is changed.
    pub fn apply_state(&mut self, state: &DeviceState) -> Result<bool, String> {
        let device = &self.device;
        if device.device_type() != state.device_type || device.features() != state.features {
            return Err(format!(
                "the snapshot has a virtio device of type {} with features {:#x} here; this VM gives type {} with features {:#x}",
                state.device_type,
                state.features,
                device.device_type(),
                device.features()
            ));
        }
        if state.queues.len() != device.queue_max_sizes().len() {
            return Err(format!("the snapshot's device has {} queues", state.queues.len()));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (regs, &max) in state.queues.iter().zip(device.queue_max_sizes()) {
            if regs.max_size != max {
                return Err(format!("queue size {} in the snapshot, {max} here", regs.max_size));
            }
            let queue = Queue::try_from(virtio_queue::QueueState {
                max_size: regs.max_size,
                next_avail: regs.next_avail,
                next_used: regs.next_used,
                event_idx_enabled: regs.event_idx_enabled,
                size: regs.size,
                ready: regs.ready,
                desc_table: regs.desc_table,
                avail_ring: regs.avail_ring,
                used_ring: regs.used_ring,
            })
            .map_err(|e| format!("a queue in the snapshot is invalid: {e:?}"))?;
            if queue.ready() && !queue.is_valid(&self.memory) {
                return Err("a queue in the snapshot lies outside guest memory".into());
            }
            queues.push(queue);
        }
        let config_changed = device.config() != state.config;
        self.interrupt
            .status
            .store(state.interrupt_status, std::sync::atomic::Ordering::SeqCst);
        self.queues = queues;
        self.queue_select = state.queue_select;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.status = state.status;
        self.config_generation = state.config_generation.wrapping_add(u32::from(config_changed));
        Ok(config_changed)
    }
}
