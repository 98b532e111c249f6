//! Loading a bzImage, its initramfs and command line into guest memory, and
//! writing the zero page the kernel reads at its 64-bit entry point.

use std::fs::File;
use std::path::Path;

use crate::guest_memory::GuestMemoryMmap;
use linux_loader::configurator::{linux::LinuxBootConfigurator, BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{bzimage::BzImage, load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path} is not a loadable bzImage: {source}")]
    Kernel {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("the initramfs {path} ({size} bytes) does not fit in guest memory; give the VM more memory")]
    InitrdTooLarge { path: String, size: u64 },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing to guest memory: {0}")]
    Memory(String),
}

/// Where the kernel was loaded: the vCPU starts at `entry`.
pub struct LoadedKernel {
    pub entry: GuestAddress,
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const E820_RAM: u32 = 1;
/// The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
const STARTUP_64_OFFSET: u64 = 0x200;

pub fn load(
    memory: &GuestMemoryMmap,
    kernel_path: &Path,
    initrd_path: Option<&Path>,
    cmdline: &str,
    rsdp: GuestAddress,
) -> Result<LoadedKernel, BootError> {
    let open = |p: &Path| {
        File::open(p).map_err(|source| BootError::Open {
            path: p.display().to_string(),
            source,
        })
    };
    let mut kernel_file = open(kernel_path)?;
    let loaded = BzImage::load(memory, None, &mut kernel_file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
        BootError::Kernel {
            path: kernel_path.display().to_string(),
            source,
        }
    })?;
    let mut header = loaded.setup_header.ok_or_else(|| BootError::Kernel {
        path: kernel_path.display().to_string(),
        source: linux_loader::loader::Error::InvalidKernelStartAddress,
    })?;

    let mut cmd = Cmdline::new(CMDLINE_MAX).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cmd.insert_str(cmdline).map_err(|e| BootError::Cmdline(e.to_string()))?;
    // This machine resets through the i8042; the kernel's default after a
    // panic is a real-mode jump into a BIOS that is not there.
    if !cmdline.split_whitespace().any(|w| w.starts_with("reboot=")) {
        cmd.insert_str("reboot=k")
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    load_cmdline(memory, GuestAddress(CMDLINE), &cmd).map_err(|e| BootError::Cmdline(e.to_string()))?;

    let mem_end = memory.last_addr().raw_value() + 1;
    if let Some(path) = initrd_path {
        let data = std::fs::read(path).map_err(|source| BootError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let size = data.len() as u64;
        // Highest page-aligned spot below the end of RAM and the kernel's limit.
        let limit = mem_end.min(u64::from(header.initrd_addr_max) + 1);
        let addr = limit
            .checked_sub(size)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= loaded.kernel_end);
        let addr = addr.ok_or_else(|| BootError::InitrdTooLarge {
            path: path.display().to_string(),
            size,
        })?;
        memory
            .write_slice(&data, GuestAddress(addr))
            .map_err(|e| BootError::Memory(e.to_string()))?;
        header.ramdisk_image = addr as u32;
        header.ramdisk_size = size as u32;
    }

    header.type_of_loader = KERNEL_LOADER_OTHER;
    header.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    header.header = KERNEL_HDR_MAGIC;
    header.cmd_line_ptr = CMDLINE as u32;
    header.cmdline_size = cmd.as_cstring().map(|c| c.as_bytes().len()).unwrap_or(0) as u32;
    if header.kernel_alignment < KERNEL_MIN_ALIGNMENT {
        header.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }

    let mut params = boot_params {
        hdr: header,
        acpi_rsdp_addr: rsdp.raw_value(),
        ..Default::default()
    };
    let ram = [(0, EBDA_START), (HIMEM_START, mem_end - HIMEM_START)];
    for (i, (start, len)) in ram.iter().enumerate() {
        params.e820_table[i].addr = *start;
        params.e820_table[i].size = *len;
        params.e820_table[i].r#type = E820_RAM;
    }
    params.e820_entries = ram.len() as u8;
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, GuestAddress(ZERO_PAGE)), memory)
        .map_err(|e| BootError::Memory(e.to_string()))?;
    Ok(LoadedKernel {
        entry: loaded.kernel_load.unchecked_add(STARTUP_64_OFFSET),
    })
}
