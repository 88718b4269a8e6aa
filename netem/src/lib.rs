//! Network emulation: the in-process delay line, per-call delay, and (later) namespaces and the packet-level link.
