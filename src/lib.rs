//! loopwatch: a Prometheus exporter that makes the failure modes of async
//! services visible. Data flows one way, and no module imports from one
//! above it (`../shared/tools/module-cycles.py` checks):
//!
//!     config → sources (collector: periodic polls, the UDP receiver;
//!              server: POST /api/v1/events)
//!            → state (ingest: apps' loops, processes, pools, rate limits;
//!              watchdog: every loop's clock)
//!            → families (one catalog of metric families) → metrics → `/metrics`
//!
//! `config` resolves the file and flags once; [`exporter`] builds the
//! collectors from it and runs them; `server` serves what is current. See
//! DESIGN.md for the architecture; `main.rs` only parses the command line and
//! calls [`exporter::run`].

pub mod auth;
pub mod collector;
pub mod config;
mod error;
pub mod exporter;
pub(crate) mod families;
pub mod ingest;
pub mod listener;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod self_process;
pub mod server;
pub mod version;
pub mod watchdog;
