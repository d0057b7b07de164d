//! What `GET /api/v1/loops` and the landing page show of apps' loops: one
//! view per loop, with each of its processes.

use std::collections::VecDeque;

use serde::Serialize;

/// One stall as `/api/v1/loops` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StallRecord {
    /// The process that stalled.
    pub pid: u32,
    /// The app's id for the stall; 0 when only loopwatch's watchdog saw it.
    pub stall_id: u64,
    /// Unix time the stall started.
    pub started: f64,
    pub blocked_seconds: f64,
    pub site: String,
    pub stack: Vec<String>,
    pub ended: bool,
}

/// Keeps the latest `cap` items.
pub(super) fn push_capped<T>(recent: &mut VecDeque<T>, item: T, cap: usize) {
    recent.push_back(item);
    while recent.len() > cap {
        recent.pop_front();
    }
}

/// One process reporting a loop.
#[derive(Debug, Serialize)]
pub struct ProcessView {
    pub pid: u32,
    pub worker: Option<String>,
    pub state: &'static str,
    pub stall_seconds: f64,
    pub silent_seconds: f64,
    pub current_stall: Option<StallRecord>,
    /// The sites of its recent stalls, newest first (the loop's
    /// `recent_stalls` has their stacks).
    pub recent_sites: Vec<String>,
}

/// A loop as `GET /api/v1/loops` shows it: the state and stall of its worst
/// process, and every process on its own.
#[derive(Debug, Serialize)]
pub struct LoopView {
    pub app_name: String,
    #[serde(rename = "loop")]
    pub loop_name: String,
    /// The worst process's pid (the blocked one, when one is).
    pub pid: u32,
    pub state: &'static str,
    pub stall_seconds: f64,
    /// Time since the last sign of life from any process.
    pub silent_seconds: f64,
    pub client_version: Option<String>,
    pub runtime: Option<String>,
    pub language_version: Option<String>,
    /// The worst process's current stall.
    pub current_stall: Option<StallRecord>,
    /// Every process's recent stalls, newest first.
    pub recent_stalls: Vec<StallRecord>,
    /// The worst processes first, at most [`MAX_PROCESSES_IN_VIEW`].
    pub processes: Vec<ProcessView>,
    pub processes_total: usize,
}

/// Processes listed per loop at most: a loop may have hundreds.
pub const MAX_PROCESSES_IN_VIEW: usize = 64;

/// One page of `GET /api/v1/loops`.
#[derive(Debug, Serialize)]
pub struct LoopPage {
    pub loops: Vec<LoopView>,
    /// Loops in all.
    pub total: usize,
    /// Where the next page starts, when this one did not hold them all.
    pub next_offset: Option<usize>,
}

/// A blocking site and how often it stalled a loop.
#[derive(Debug, Serialize)]
pub struct SiteCount {
    pub app_name: String,
    #[serde(rename = "loop")]
    pub loop_name: String,
    pub site: String,
    pub stalls: u64,
}
