//! `harness nbd serve` and `harness nbd info`: the project's NBD server and
//! client (crate `nbd`) as standalone commands, so qemu, nbdkit's tools and
//! the kernel can be pointed at any backend by hand.
//!
//! # Behavior
//!
//! - `serve` builds one export per `NAME=BACKEND` argument, listens on TCP
//!   (default `127.0.0.1:10809`) or a Unix socket, prints the listening
//!   address and one URI per export on stdout, and serves until SIGINT or
//!   SIGTERM; then it stops accepting, lets open connections finish their
//!   requests and prints the totals. A second signal exits at once.
//! - `info` parses an NBD URI (`nbd://HOST[:PORT][/NAME]`,
//!   `nbd+unix:///NAME?socket=PATH`) and asks the server with
//!   `NBD_OPT_LIST` / `NBD_OPT_INFO`, never entering transmission.
//!
//! # Limitations
//!
//! - No TLS (`nbds://`), so no `nbds` URIs either.
//! - `file:PATH` opens the file for writing even with `--read-only`
//!   (`FileBackend::open` needs both), so a file the user cannot write
//!   cannot be served.

mod info;
mod serve;
mod size;
mod spec;
mod url;

use std::path::PathBuf;
use std::process::ExitCode;

use spec::{parse_export_spec, ExportSpec};

/// The port IANA assigned to NBD.
const DEFAULT_PORT: u16 = 10809;
/// Where `serve` listens without `--listen` or `--unix`.
const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

/// `harness nbd ...`.
#[derive(Debug, clap::Subcommand)]
pub enum NbdCommand {
    /// Serve backends as NBD exports until Ctrl-C.
    ///
    /// Prints `listening on ADDR`, then one line per export with its URI
    /// and size, on stdout. Ctrl-C (or SIGTERM) stops accepting, lets open
    /// connections finish their requests, and prints the totals; a second
    /// Ctrl-C exits at once.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Describe an NBD server's exports, without reading or writing them.
    ///
    /// Without an export name, lists the server's exports (NBD_OPT_LIST)
    /// and describes each; with one, describes that export (NBD_OPT_INFO):
    /// size, block sizes, read-only, transmission flags, description.
    #[command(after_help = INFO_EXAMPLES)]
    Info(InfoArgs),
}

const SERVE_EXAMPLES: &str = "\
Examples:
  harness nbd serve disk=memory:64M
  harness nbd serve --read-only img=file:./disk.img scratch=memory:1G
  harness nbd serve --unix /tmp/nbd.sock disk=dir:/tmp/chunks:4G:64K
  harness nbd serve --listen 127.0.0.1:0 disk=memory:64M   # any free port

Then, from another terminal:
  qemu-img info nbd://127.0.0.1:10809/disk
  nbdinfo --list nbd://127.0.0.1:10809
  nbdcopy nbd://127.0.0.1:10809/disk out.img
  harness nbd info nbd://127.0.0.1:10809

Backends:
  memory:SIZE             zeroed process memory (SIZE like 4096, 64M, 2GiB)
  file:PATH               an existing regular file, served at its size
  dir:PATH:SIZE:CHUNK     one file per CHUNK bytes in directory PATH; a missing
                          or empty directory starts zeroed, one holding chunk
                          files is reattached (same SIZE and CHUNK as before)";

const INFO_EXAMPLES: &str = "\
Examples:
  harness nbd info nbd://127.0.0.1:10809            # every export
  harness nbd info nbd://127.0.0.1:10809/disk --json
  harness nbd info 'nbd+unix:///disk?socket=/tmp/nbd.sock'";

/// `harness nbd serve` arguments.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TCP address to listen on (port 0 picks a free port; the bound
    /// address is printed).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN, conflicts_with = "unix")]
    listen: String,
    /// Listen on this Unix socket instead of TCP (a stale socket left by a
    /// dead server is replaced; the socket is removed on exit).
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Serve every export read-only: writes, trims and write-zeroes fail
    /// with EPERM.
    #[arg(long)]
    read_only: bool,
    /// The exports: NAME=memory:SIZE, NAME=file:PATH or
    /// NAME=dir:PATH:SIZE:CHUNK. The first is also the default export (the
    /// one an empty name selects).
    #[arg(value_name = "NAME=BACKEND", required = true, value_parser = parse_export_spec)]
    exports: Vec<ExportSpec>,
}

/// `harness nbd info` arguments.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// nbd://HOST[:PORT][/NAME] or nbd+unix:///NAME?socket=PATH.
    #[arg(value_name = "URL")]
    url: String,
    /// Print one JSON object: {"uri": ..., "exports": [...]}.
    #[arg(long)]
    json: bool,
}

/// Runs `harness nbd ...`.
pub fn run(command: NbdCommand) -> anyhow::Result<ExitCode> {
    match command {
        NbdCommand::Serve(args) => serve::serve(args),
        NbdCommand::Info(args) => info::info(&args),
    }
}
