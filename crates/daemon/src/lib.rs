//! hull's daemon as a library: the Docker Engine API over containers in
//! microVMs. The `hulld` binary serves it; the fuzz targets call its
//! parsers of API input directly. Containers are run by their own
//! supervisors (`hull-shim`) and outlive hulld: a restarted hulld finds them
//! again. Container records live in an embedded store (redb).

#![recursion_limit = "256"]

pub mod api;
pub mod archive;
pub mod client_input;
pub mod commit;
pub mod containers;
pub mod create;
pub mod daemon;
pub mod detach;
pub mod dns;
pub mod docker_config;
pub mod events;
pub mod exec;
pub mod follow;
pub mod health;
pub mod images;
pub mod links;
pub mod listen;
pub mod migrate;
pub mod monitor;
pub mod network_connect;
pub mod networking;
pub mod networks;
pub mod slots;
pub mod span_names;
pub mod store;
pub mod streams;
pub mod system;
pub mod tls;
pub mod update;
pub mod volumes;
