//! loopwatch: a Prometheus exporter that makes the failure modes of async
//! services visible. Data flows one way: sources → collectors → registry →
//! `/metrics`. See DESIGN.md for the architecture; `main.rs` only parses the
//! command line and calls [`app::run`].

pub mod app;
pub mod collector;
pub mod config;
pub mod families;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod self_process;
pub mod server;
pub mod watchdog;
