//! A virtio device thread: it waits on its devices' queue notifications
//! (ioeventfds), their host-side backends and the pause gate's waker, and
//! serves each under its device's lock. Most devices have a thread each;
//! a VM's NICs share one (a container uses one or two of its four slots,
//! and a thread costs more to start than the others' idle NICs to watch).

use std::collections::HashMap;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use seccompiler::BpfProgram;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use super::DeviceKind;
use crate::device_manager::lock;
use crate::pause::PauseGate;
use crate::vm::{thread_err, VmError};

const WAKER: u64 = u64::MAX;
/// A token's low bits: the queue, or this for the device's backend.
const BACKEND: u64 = 0xff;
/// A token's high bits: the device's place in its thread's list.
const DEVICE_SHIFT: u32 = 8;

/// One device a thread serves: its transport and its queues' notifications.
pub struct Served {
    pub transport: Arc<Mutex<MmioTransport>>,
    pub queue_events: Vec<EventFd>,
}

/// Starts the thread named `name` for `devices` (all of one kind).
/// Filters are compiled once per device kind (`filters` keeps them).
pub fn spawn(
    name: String,
    devices: Vec<Served>,
    gate: Arc<PauseGate>,
    filters: &mut HashMap<DeviceKind, BpfProgram>,
) -> Result<(), VmError> {
    let fail = |e: std::io::Error| thread_err(name.clone())(e);
    let device_type = match devices.first() {
        Some(first) => lock(&first.transport).device_type(),
        None => return Ok(()),
    };
    let kind = DeviceKind::of(device_type)
        .ok_or_else(|| VmError::Seccomp(format!("no filter for device type {device_type}")))?;
    let epoll = Epoll::new().map_err(fail)?;
    let waker = gate.waker().map_err(fail)?;
    let watch = |fd: i32, token: u64| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token));
    watch(waker.as_raw_fd(), WAKER).map_err(fail)?;
    for (index, device) in devices.iter().enumerate() {
        let base = (index as u64) << DEVICE_SHIFT;
        if let Some(fd) = lock(&device.transport).backend_fd() {
            watch(fd, base | BACKEND).map_err(fail)?;
        }
        for (queue, event) in device.queue_events.iter().enumerate() {
            watch(event.as_raw_fd(), base | queue as u64).map_err(fail)?;
        }
    }
    let filter = match filters.get(&kind) {
        Some(filter) => filter.clone(),
        None => {
            let filter = crate::seccomp::filter_for(crate::seccomp::ThreadKind::Device(kind))?;
            filters.insert(kind, filter.clone());
            filter
        }
    };
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            crate::seccomp::install(&filter, crate::seccomp::ThreadKind::Device(kind));
            serve(&epoll, &waker, &devices, &gate)
        })
        .map(|_| ())
        .map_err(thread_err("device"))
}

fn serve(epoll: &Epoll, waker: &EventFd, devices: &[Served], gate: &PauseGate) {
    let mut events = [EpollEvent::default(); 8];
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(_) => return,
        };
        for event in &events[..ready] {
            let token = event.data();
            if token == WAKER {
                let _ = waker.read();
                continue;
            }
            let Some(device) = devices.get((token >> DEVICE_SHIFT) as usize) else {
                continue;
            };
            match token & BACKEND {
                BACKEND => lock(&device.transport).poll(),
                queue => {
                    if let Some(notify) = device.queue_events.get(queue as usize) {
                        // Several notifies since the last read are served as one.
                        let _ = notify.read();
                        lock(&device.transport).notify(queue as usize);
                    }
                }
            }
        }
        if gate.requested() {
            gate.park();
        }
    }
}
