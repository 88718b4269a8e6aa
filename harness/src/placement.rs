//! Running the workload on the CPU a placement asks for.

use crate::scenario::Placement;

/// The CPU the workload runs on, if the placement pins it.
pub fn workload_cpu(p: Placement) -> Option<usize> {
    match p {
        Placement::Unpinned => None,
        Placement::Split | Placement::Shared => Some(0),
    }
}

/// The CPU the fault handler runs on, if the placement pins it.
pub fn handler_cpu(p: Placement) -> Option<usize> {
    match p {
        Placement::Unpinned => None,
        Placement::Split => Some(1),
        Placement::Shared => Some(0),
    }
}

/// Runs `f` on a fresh thread placed as `p` asks, and returns its result.
///
/// A fresh thread, because the workload must never run on a thread that
/// drives the async runtime: a fault it takes would stall the very runtime
/// that serves the fault.
pub fn run_workload_placed<T: Send>(
    p: Placement,
    f: impl FnOnce() -> T + Send,
) -> Result<T, String> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("workload".into())
            .spawn_scoped(s, move || {
                if let Some(cpu) = workload_cpu(p) {
                    crate::host::pin_current_thread(cpu)
                        .map_err(|e| format!("pinning the workload to CPU {cpu}: {e}"))?;
                }
                Ok(f())
            })
            .map_err(|e| format!("starting the workload thread: {e}"))?;
        handle
            .join()
            .map_err(|_| "the workload thread panicked".to_string())?
    })
}
