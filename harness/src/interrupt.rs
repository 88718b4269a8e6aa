//! Ctrl-C: the first one stops the run after the access in progress and
//! keeps everything measured; the second one ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{self, SigHandler, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    // SAFETY: restoring the default disposition is async-signal-safe, and
    // no other code in this process relies on the SIGINT handler.
    unsafe {
        let _ = signal::signal(Signal::SIGINT, SigHandler::SigDfl);
    }
}

/// Installs the handler.
pub fn install() -> nix::Result<()> {
    // SAFETY: the handler only stores to an atomic and calls signal(2), both
    // async-signal-safe.
    unsafe { signal::signal(Signal::SIGINT, SigHandler::Handler(on_sigint)) }.map(|_| ())
}

/// Whether the user asked the run to stop.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}
