//! Progress reporting for long image operations (downloads, conversions, uploads), kept
//! abstract so the library prints nothing: the CLI shows bars on a terminal and plain
//! lines otherwise.

/// A sink for progress: one [`Task`] per blob or step.
pub trait Progress: Send + Sync {
    /// Starts a task: `label` names it (e.g. `push sha256:ab12…`), `total` is its size in
    /// bytes when known.
    fn task(&self, label: &str, total: Option<u64>) -> Box<dyn Task>;
}

/// One running task.
pub trait Task: Send + Sync {
    /// Bytes done so far.
    fn set(&self, done: u64);
    /// Done; `note` says how it ended (e.g. `mounted`, `exists`, `3.1 MB`).
    fn finish(&self, note: &str);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn task(&self, _: &str, _: Option<u64>) -> Box<dyn Task> {
        Box::new(Silent)
    }
}

impl Task for Silent {
    fn set(&self, _: u64) {}
    fn finish(&self, _: &str) {}
}
