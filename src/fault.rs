//! Fault points for the crash tests: `MOCSE_FAULT=<name>` makes the process abort (as kill -9
//! would end it: no destructors, no flushing) when it reaches the point of that name, so a test
//! can stop a run exactly between two steps of a transaction. Unset, a point costs one load of
//! a cached value.

use std::sync::OnceLock;

/// Names of the fault points, so tests and code agree on them.
pub mod points {
    /// Checkpoint: both new files are written and synced, neither has replaced the old one.
    pub const CHECKPOINT_WRITTEN: &str = "checkpoint-written";
    /// Checkpoint: the new training state has replaced the old one, the model not yet.
    pub const CHECKPOINT_HALF_SWITCHED: &str = "checkpoint-half-switched";
    /// Epoch end: the log line is appended, the checkpoint not yet written.
    pub const EPOCH_LOGGED: &str = "epoch-logged";
}

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED.get_or_init(|| std::env::var("MOCSE_FAULT").ok().filter(|v| !v.is_empty())).as_deref()
}

/// Aborts the process if `MOCSE_FAULT` names this point.
pub fn point(name: &str) {
    if armed() == Some(name) {
        eprintln!("mocse: MOCSE_FAULT={name}: aborting here (test fault point)");
        std::process::abort();
    }
}
