//! Roles: the parts of a cell that run as their own processes.
//!
//! The runner starts each role as a child (`harness role NAME ...`), placed in
//! its network namespace, and talks to it over the child's standard input
//! and output with JSON lines. Control therefore never crosses the emulated
//! link, and because a role needs nothing but its pipes, the same role runs
//! unchanged on another machine under `ssh`.
//!
//! - [`protocol`]: the messages.
//! - [`child`]: the runner's side: a child process guard.
//! - [`migration_source`]: the source host of a `downtime` cell: the
//!   migrating application on a seeder's mount, and the seeder service.
//! - [`remote_backend`]: the role serving the source region's backend
//!   service over any transport.

pub mod child;
pub mod migration_source;
pub mod protocol;
pub mod remote_backend;
