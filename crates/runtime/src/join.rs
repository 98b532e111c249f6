//! A container on another container's network (`--network
//! container:NAME`) runs in that container's VM: one VM has one network
//! stack, and the guest's is the only place that network exists.
//!
//! Its supervisor starts no VM. It plugs the container's image disk into
//! an empty disk slot of the running VM (none when both run one image),
//! asks that VM's agent to run the container beside its own (`Join`, on
//! the exec port) and follows it as it would its own VM's command. When it
//! ends, the disk is unplugged; when the VM it joined ends, so does it.

use std::fs::File;

use proto::{write_frame, Control, Frame, JoinSpec};

use crate::container::{ContainerDir, ContainerSpec};
use crate::run::{follow, Attachment, Followed, Source};

/// The VM's disk slots a joined container's image may go into: the spare
/// ones after its image (vda) and writable (vdb) disks.
const SPARE_SLOTS: std::ops::Range<u8> = 2..2 + crate::volume::MAX_PER_CONTAINER as u8;

/// Docker's status for a container killed by SIGKILL: what a joined
/// container ends with when the VM it ran in ends under it.
const KILLED: i32 = 137;

/// Runs container `dir` (`spec`) in the VM of the running container
/// `target` until its command ends: its exit status.
pub fn join_in(
    dir: &ContainerDir,
    spec: &ContainerSpec,
    target: &str,
    attachment: &mut dyn Attachment,
) -> Result<i32, String> {
    let vm = ContainerDir::new(target);
    if !vm.is_running() {
        return Err(format!("cannot join network of a non running container: {target}"));
    }
    let vm_spec = vm.spec().map_err(|e| e.to_string())?;
    let request = crate::shim::request_for(spec)?;
    let Source::Image(record) = &request.source else {
        return Err("a container on another's network runs an image".into());
    };
    let store = image::Store::open(&crate::data_dir()).map_err(|e| e.to_string())?;
    let config = image::config::load(&store, &record.id).map_err(|e| e.to_string())?;
    let process = image::config::process(Some(&config), &request.overrides).map_err(|e| e.to_string())?;
    // One image, one disk: the VM's own serves both.
    let slot = match vm_spec.image == spec.image {
        true => None,
        false => {
            let disk = image::disk::image_disk(&store, record).map_err(|e| e.to_string())?;
            let disk = File::open(&disk).map_err(|e| format!("opening {}: {e}", disk.display()))?;
            Some(plug(&vm, &disk, target)?)
        }
    };
    let join = JoinSpec {
        id: dir.id.clone(),
        image_device: slot.map(|slot| format!("/dev/vd{}", char::from(b'a' + slot))),
        process: crate::run::process_spec(&request, &process, &vm_spec.hostname),
        init: spec.init,
    };
    let ended = run_joined(&vm, join, attachment);
    if let Some(slot) = slot {
        if let Err(e) = vm.plug_disk(slot, None) {
            // The VM may have ended under it: then there is nothing to unplug.
            if vm.is_running() {
                eprintln!("hull-shim: unplugging disk slot {slot} of container {target}: {e}");
            }
        }
    }
    ended
}

/// Plugs `disk` (read-only) into the first empty spare slot of `vm`.
fn plug(vm: &ContainerDir, disk: &File, target: &str) -> Result<u8, String> {
    for slot in SPARE_SLOTS {
        match vm.plug_disk(slot, Some(disk)) {
            Ok(()) => return Ok(slot),
            Err(crate::container::ContainerError::Control(reason)) if reason.contains("holds a disk already") => {}
            Err(e) => return Err(format!("bringing the image's disk into container {target}'s VM: {e}")),
        }
    }
    Err(format!(
        "container {target}'s VM has no disk slot left for this container's image (it has {} spare ones, for its disk volumes and for containers on its network with images of their own)",
        SPARE_SLOTS.len()
    ))
}

/// Sends `join` to the VM's agent and follows the container to its end.
fn run_joined(vm: &ContainerDir, join: JoinSpec, attachment: &mut dyn Attachment) -> Result<i32, String> {
    let mut conn = crate::agent_link::connect_to(vm).map_err(|e| format!("reaching the VM's agent: {e}"))?;
    write_frame(&mut conn, &Frame::Control(Control::Join(Box::new(join))))
        .map_err(|e| format!("asking the VM's agent: {e}"))?;
    let mut input = conn.try_clone().map_err(|e| format!("the agent's connection: {e}"))?;
    attachment.started(crate::run::Steer::new(conn));
    let mut frames = 0;
    match follow(&mut input, attachment, &mut frames, None) {
        Ok(Followed::Ended(Some(code))) => Ok(code),
        // The VM's agent went with its VM.
        Ok(Followed::Ended(None)) | Err(_) => Ok(KILLED),
        Ok(Followed::MoveAsked(_)) => Err("a container on another's network does not move on its own".into()),
    }
}
