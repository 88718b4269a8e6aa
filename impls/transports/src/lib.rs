//! The remote backend service and the wires that carry it.
