//! A virtio device's own thread: it waits on the device's queue
//! notifications (ioeventfds), its host-side backend and the pause gate's
//! waker, and serves each under the device's lock.

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use super::DeviceKind;
use crate::device_manager::lock;
use crate::pause::PauseGate;
use crate::vm::{thread_err, VmError};

const WAKER: u64 = u64::MAX;
const BACKEND: u64 = u64::MAX - 1;

pub fn spawn(
    index: usize,
    transport: Arc<Mutex<MmioTransport>>,
    queue_events: Vec<EventFd>,
    gate: Arc<PauseGate>,
) -> Result<(), VmError> {
    let (device_type, backend) = {
        let transport = lock(&transport);
        (transport.device_type(), transport.backend_fd())
    };
    let kind = DeviceKind::of(device_type)
        .ok_or_else(|| VmError::Seccomp(format!("no filter for device type {device_type}")))?;
    let name = format!("{}{index}", kind.label());
    let fail = |e: std::io::Error| thread_err(name.clone())(e);
    let epoll = Epoll::new().map_err(fail)?;
    let waker = gate.waker().map_err(fail)?;
    let watch = |fd: i32, token: u64| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token));
    watch(waker.as_raw_fd(), WAKER).map_err(fail)?;
    if let Some(fd) = backend {
        watch(fd, BACKEND).map_err(fail)?;
    }
    for (queue, event) in queue_events.iter().enumerate() {
        watch(event.as_raw_fd(), queue as u64).map_err(fail)?;
    }
    let filter = crate::seccomp::filter_for(crate::seccomp::ThreadKind::Device(kind))?;
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            crate::seccomp::install(&filter, crate::seccomp::ThreadKind::Device(kind));
            serve(&epoll, &waker, &queue_events, &transport, &gate)
        })
        .map(|_| ())
        .map_err(thread_err("device"))
}

fn serve(epoll: &Epoll, waker: &EventFd, queue_events: &[EventFd], transport: &Mutex<MmioTransport>, gate: &PauseGate) {
    let mut events = [EpollEvent::default(); 8];
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(_) => return,
        };
        for event in &events[..ready] {
            match event.data() {
                WAKER => {
                    let _ = waker.read();
                }
                BACKEND => lock(transport).poll(),
                queue => {
                    if let Some(notify) = queue_events.get(queue as usize) {
                        // Several notifies since the last read are served as one.
                        let _ = notify.read();
                        lock(transport).notify(queue as usize);
                    }
                }
            }
        }
        if gate.requested() {
            gate.park();
        }
    }
}
