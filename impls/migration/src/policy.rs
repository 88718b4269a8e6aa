//! When to finalize.
//!
//! Finalize is the critical phase: the source application is suspended
//! from `Sync` until the destination unlocks. Finalizing early leaves more
//! chunks to fetch after the switch (the application waits on them);
//! finalizing late lets the source dirty more chunks meanwhile. The policy
//! is the caller's choice, and [`crate::Leecher::finalize_when`] applies it.

use std::time::Duration;

use crate::leecher::ProgressView;
use crate::MigrationError;

/// When [`crate::Leecher::finalize_when`] finalizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FinalizePolicy {
    /// Once this fraction of the chunks (0.0 to 1.0) is local.
    AfterFractionLocal(f64),
    /// Once this much time has passed since the leecher's `open` started
    /// (at once if it already has).
    AtTime(Duration),
    /// Now.
    Immediately,
}

impl FinalizePolicy {
    pub(crate) fn validate(self) -> Result<(), MigrationError> {
        match self {
            Self::AfterFractionLocal(f) if !(0.0..=1.0).contains(&f) => {
                Err(MigrationError::Option {
                    option: "AfterFractionLocal",
                    value: f.to_string(),
                    allowed: "a fraction from 0.0 to 1.0",
                })
            }
            _ => Ok(()),
        }
    }

    /// Waits until the condition holds; fails if the pull fails first.
    pub(crate) async fn wait(self, view: &ProgressView<'_>) -> Result<(), MigrationError> {
        match self {
            Self::Immediately => Ok(()),
            Self::AtTime(after) => {
                let at = tokio::time::Instant::from_std(view.opened_at() + after);
                tokio::select! {
                    () = tokio::time::sleep_until(at) => Ok(()),
                    e = view.pull_failed() => Err(e),
                }
            }
            Self::AfterFractionLocal(fraction) => {
                let failed = view.pull_failed();
                tokio::pin!(failed);
                loop {
                    // Registered before the check, so a chunk arriving in
                    // between still wakes us.
                    let changed = view.changed();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    if view.fraction_local() >= fraction {
                        return Ok(());
                    }
                    tokio::select! {
                        () = &mut changed => {}
                        e = &mut failed => return Err(e),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_outside_zero_to_one_are_refused() {
        for bad in [-0.1, 1.5, f64::NAN] {
            let e = FinalizePolicy::AfterFractionLocal(bad)
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains("0.0 to 1.0"), "{e}");
        }
        FinalizePolicy::AfterFractionLocal(1.0).validate().unwrap();
        FinalizePolicy::AtTime(Duration::ZERO).validate().unwrap();
    }
}
