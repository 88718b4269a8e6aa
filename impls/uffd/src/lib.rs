//! Post-copy memory regions: userfaultfd MISSING faults resolved from a backend.
