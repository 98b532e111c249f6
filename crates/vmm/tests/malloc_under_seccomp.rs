//! glibc's malloc opens files the first time it makes or shrinks an arena
//! other than the main one: a call no device or vCPU thread may make.
//! `prepare_process` keeps every thread on the main arena. Here many
//! threads, each under the strictest filter hull-vmm gives (the vCPU's),
//! allocate and free at once; a forbidden call kills this process
//! (SIGSYS, no handler). Its own `main` (no test harness), so that, as in
//! hull-vmm, nothing has allocated from another thread before.

use std::sync::{Arc, Barrier};

fn main() {
    vmm::seccomp::prepare_process();
    let filter = vmm::seccomp::filter_for(vmm::seccomp::ThreadKind::Vcpu).expect("the vCPU filter");
    let threads = 32;
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (filter, start) = (filter.clone(), start.clone());
            std::thread::spawn(move || {
                vmm::seccomp::install(&filter, vmm::seccomp::ThreadKind::Vcpu);
                start.wait();
                let mut kept = Vec::new();
                for round in 0..20_000usize {
                    kept.push(vec![i as u8; 64 + (round * 977) % 200_000]);
                    if kept.len() > 64 {
                        kept.clear();
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("an allocating thread");
    }
    println!("{threads} filtered threads allocated and freed without a forbidden call");
}
