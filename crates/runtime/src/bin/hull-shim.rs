//! `hull-shim DIR ID [--arriving-fd N]`: supervises one hulld container
//! (see `runtime::shim`); with `--arriving-fd`, one whose running VM comes
//! from another host on that (inherited) connection.
//! `hull-shim --standby NAME MEMORY CPUS [IMAGE_DISK [COMMAND_PATH...]]`: a
//! standby VM (its root prepared from that image disk, the command found
//! first under those paths read ahead), which supervises the container
//! hulld gives it (see `runtime::standby`).

use std::process::ExitCode;

fn main() -> ExitCode {
    // A session of its own (hulld spawns it without one: `shim_command`),
    // so that nothing aimed at hulld's terminal or group reaches it.
    // SAFETY: setsid takes no arguments; it fails harmlessly for a group leader.
    unsafe { libc::setsid() };
    vmm::trace::start_as("hull-shim");
    runtime::private_files();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, name, memory, cpus, image @ ..] = args.as_slice() {
        if flag == "--standby" && image.len() <= 1 + runtime::standby::MAX_COMMAND_PATHS {
            let (Ok(memory), Ok(cpus)) = (memory.parse::<u64>(), cpus.parse::<u8>()) else {
                eprintln!("hull-shim: --standby NAME MEMORY_MIB CPUS [IMAGE_DISK [COMMAND_PATH...]] takes numbers");
                return ExitCode::from(2);
            };
            let root = image
                .split_first()
                .map(|(image, command_paths)| runtime::standby::RootPlan {
                    image: image.into(),
                    command_paths: command_paths.to_vec(),
                });
            return match runtime::standby::serve(name, memory, cpus, root.as_ref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hull-shim: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let (dir, id, arriving) = match args.as_slice() {
        [dir, id] => (dir, id, None),
        [dir, id, flag, fd] if flag == "--arriving-fd" => match fd.parse::<i32>() {
            Ok(fd) if fd > 2 => {
                use std::os::fd::FromRawFd;
                // SAFETY: hulld passes this descriptor to this process alone.
                (dir, id, Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
            }
            _ => {
                eprintln!("hull-shim: --arriving-fd takes a descriptor number above 2");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: hull-shim CONTAINER_DIR CONTAINER_ID [--arriving-fd N] (started by hulld)");
            return ExitCode::from(2);
        }
    };
    let container = runtime::container::ContainerDir {
        id: id.clone(),
        path: dir.into(),
    };
    match runtime::shim::supervise(&container, arriving) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hull-shim: {e}");
            ExitCode::FAILURE
        }
    }
}
