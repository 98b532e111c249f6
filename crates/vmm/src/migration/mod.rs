//! Live migration of a running VM between two hull-vmm processes: the
//! stream they speak (`stream`), sets of guest pages (`pages`), what the
//! host kernel knows of them (`pagemap`: written pages), the source's pre-copy and switch-over (`send`) and the
//! destination's side (`receive`), the disks (`disks`) and shared
//! directories (`trees`) that travel with a VM.
//!
//! The stream carries memory and an opaque state blob; what the state is
//! (vCPUs, interrupt controllers, devices: the snapshot's `VmState`) and
//! how the connection was made (hulld to hulld, over TLS) are the callers'.

pub mod disks;
pub mod pagemap;
pub mod pages;
pub mod receive;
pub mod send;
pub mod stream;
pub mod trees;

pub use disks::{IncomingDisks, OutgoingDisk};
pub use pages::PageSet;
pub use send::{Limits, Progress, Report, Source};
pub use stream::{Hello, StreamError};
pub use trees::{IncomingTrees, OutgoingTree};

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the destination refused the VM: {0}")]
    Refused(String),
    #[error("the migration was abandoned by the other side: {0}")]
    Aborted(String),
    #[error("the migration stream is out of order: {0}")]
    Unexpected(String),
    #[error("the source sent pages {first}..{first}+{count}, beyond the guest's {pages} pages")]
    OutOfRange { first: u64, count: u64, pages: u64 },
    #[error("a disk: {0}")]
    Disk(String),
    #[error("a shared directory that travels: {0}")]
    Tree(String),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("the dirty-page log: {0}")]
    DirtyLog(String),
    #[error("the VM: {0}")]
    Source(String),
    #[error(
        "the guest dirtied memory faster than it could be sent: {rounds} rounds in {seconds} s and {left} bytes still to \
         go; the migration was abandoned and the VM runs on here"
    )]
    DidNotConverge { rounds: u32, seconds: u64, left: u64 },
}

#[cfg(test)]
mod tests;
