//! OCI images for hull: Docker-style references, a registry client that
//! streams and verifies every blob, a content-addressed store written
//! atomically, `docker save` / OCI layout import and export, layer unpacking that a
//! hostile tarball cannot escape, and one read-only disk per image (cached by
//! chain ID) that every container of that image shares.

pub mod changes;
pub mod commit;
pub mod config;
pub mod digest;
pub mod disk;
pub mod inspect;
pub mod load;
pub mod pull;
pub mod reference;
pub mod save;
pub mod store;
pub mod unpack;

pub use reference::ImageRef;
pub use store::{ImageRecord, Store, StoreError};
