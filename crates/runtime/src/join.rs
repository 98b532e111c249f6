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

/// Why a container cannot start on `target`'s network now (dockerd's words).
pub fn not_running(target: &str) -> String {
    format!("cannot join network of a non running container: {target}")
}

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
        return Err(not_running(target));
    }
    let vm_spec = vm.spec().map_err(|e| e.to_string())?;
    let request = crate::shim::request_for(spec)?;
    let Source::Image(record) = &request.source else {
        return Err("a container on another's network runs an image".into());
    };
    let store = image::Store::open(&crate::data_dir()).map_err(|e| e.to_string())?;
    let process = image::config::process_of(&store, &record.id, request.process.as_ref(), &request.overrides)
        .map_err(|e| e.to_string())?;
    // One image, one disk: the VM's own serves both.
    let (slot, image_sectors) = match vm_spec.image == spec.image {
        true => (None, 0),
        false => {
            let disk = image::disk::image_disk(&store, record).map_err(|e| e.to_string())?;
            let opened = File::open(&disk).map_err(|e| format!("opening {}: {e}", disk.display()))?;
            let bytes = opened.metadata().map_err(|e| format!("{}: {e}", disk.display()))?.len();
            (Some(plug(&vm, &opened, &dir.id)?), bytes / 512)
        }
    };
    let join = JoinSpec {
        id: dir.id.clone(),
        image_device: slot.map(crate::run::guest_disk),
        image_sectors,
        process: crate::run::process_spec(&request, &process, &vm_spec.hostname),
        init: spec.init,
    };
    let ended = run_joined(&vm, join, attachment);
    if let Some(slot) = slot {
        if let Err(e) = unplug(&vm, slot) {
            // The VM may have ended under it: then there is nothing to unplug.
            if vm.is_running() {
                eprintln!("hull-shim: unplugging disk slot {slot} of container {target}: {e}");
            }
        }
    }
    ended
}

/// Where `vm`'s directory records which container's disk is in which
/// spare slot (`SLOT` holding its ID), so the slot of one whose
/// supervisor was killed before it could unplug is taken back.
fn owners(vm: &ContainerDir) -> std::path::PathBuf {
    vm.path.join("joined-slots")
}

/// Holds the owners' record while it and the slots change.
fn lock_owners(vm: &ContainerDir) -> Result<File, String> {
    let dir = owners(vm);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    crate::lock_file(&dir.join(".lock"), true).map_err(|e| format!("locking {}: {e}", dir.display()))
}

/// Plugs `disk` (read-only) into the first empty spare slot of `vm`, for
/// container `owner`.
fn plug(vm: &ContainerDir, disk: &File, owner: &str) -> Result<u8, String> {
    let _held = lock_owners(vm)?;
    take_back_locked(vm);
    for slot in SPARE_SLOTS {
        match vm.plug_disk(slot, Some(disk)) {
            Ok(()) => {
                let record = owners(vm).join(slot.to_string());
                if let Err(e) = image::store::write_atomic(&record, owner.as_bytes()) {
                    let _ = vm.plug_disk(slot, None);
                    return Err(format!("recording disk slot {slot}: {e}"));
                }
                return Ok(slot);
            }
            Err(crate::container::ContainerError::Control(reason)) if reason.contains("holds a disk already") => {}
            Err(e) => return Err(format!("bringing the image's disk into container {}'s VM: {e}", vm.id)),
        }
    }
    Err(format!(
        "container {}'s VM has no disk slot left for this container's image (it has {} spare ones, for its disk volumes and for containers on its network with images of their own)",
        vm.id,
        SPARE_SLOTS.len()
    ))
}

fn unplug(vm: &ContainerDir, slot: u8) -> Result<(), String> {
    let _held = lock_owners(vm)?;
    let unplugged = vm.plug_disk(slot, None).map_err(|e| e.to_string());
    let _ = std::fs::remove_file(owners(vm).join(slot.to_string()));
    unplugged
}

/// Takes back the spare slots of `vm` whose containers no longer run (a
/// supervisor killed before it unplugged): before a plug, and before the
/// VM moves (a plugged disk keeps it from moving).
pub fn take_back_slots(vm: &ContainerDir) {
    if let Ok(_held) = lock_owners(vm) {
        take_back_locked(vm);
    }
}

fn take_back_locked(vm: &ContainerDir) {
    let Ok(entries) = std::fs::read_dir(owners(vm)) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(slot) = entry.file_name().to_str().and_then(|n| n.parse::<u8>().ok()) else {
            continue;
        };
        let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if SPARE_SLOTS.contains(&slot) && !ContainerDir::new(owner.trim()).is_running() {
            // Refused if the VM is another one by now (nothing plugged there).
            let _ = vm.plug_disk(slot, None);
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Sends `join` to the VM's agent and follows the container to its end.
fn run_joined(vm: &ContainerDir, join: JoinSpec, attachment: &mut dyn Attachment) -> Result<i32, String> {
    let target = &vm.id;
    let mut conn = crate::agent_link::connect_to(vm).map_err(|e| format!("reaching the VM's agent: {e}"))?;
    write_frame(&mut conn, &Frame::Control(Control::Join(Box::new(join))))
        .map_err(|e| format!("asking the VM's agent: {e}"))?;
    let mut input = conn.try_clone().map_err(|e| format!("the agent's connection: {e}"))?;
    attachment.started(crate::run::Steer::new(conn));
    let mut frames = 0;
    match follow(&mut input, attachment, &mut frames, None) {
        Ok(Followed::Ended(Some(code))) => Ok(code),
        // The VM's agent went with its VM.
        Ok(Followed::Ended(None)) | Err(_) => {
            attachment.failed(&format!("the VM it ran in ended (container {target})"));
            Ok(KILLED)
        }
        Ok(Followed::MoveAsked(_)) => Err("a container on another's network does not move on its own".into()),
    }
}
