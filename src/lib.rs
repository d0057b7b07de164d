//! loopwatch: a Prometheus exporter that makes the failure modes of async
//! services visible. Data flows one way: config → sources (collectors,
//! ingest) → families → `/metrics`; no module imports from one above it.
//! `config` resolves the file and flags once; [`exporter`] builds the
//! collectors from it and runs them; `families` owns every metric family;
//! `server` serves what is current. See DESIGN.md for the architecture;
//! `main.rs` only parses the command line and calls [`exporter::run`].

pub mod collector;
pub mod config;
mod error;
pub mod exporter;
// Until the ingest rewrite fills the loop, task, ingest and pool families
// from here, part of the catalog has no user outside tests.
#[allow(dead_code)]
pub(crate) mod families;
pub mod ingest;
pub mod logging;
pub mod loops;
pub(crate) mod metrics;
pub(crate) mod self_process;
pub mod server;
pub mod version;
