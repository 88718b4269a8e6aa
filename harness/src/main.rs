//! `harness`: runs the memsync-bench scenarios and reports what it found.
//!
//! # Layout
//!
//! - [`scenario`]: scenario files, profiles, expansion into cells.
//! - [`runner`]: runs cells, records them, summarizes.
//! - [`implementations`]: the implementations under test.
//! - [`workload`]: the application's access patterns and timing loop.
//! - [`remote`]: the source side and the link to it.
//! - [`emulation`]: how the network is made.
//! - [`doctor`]: what the host offers.
//! - [`report`]: `harness report`, figures and index.html of a run.
//! - [`roles`]: parts of a cell that run as child processes.
//! - [`compare_cli`], [`baseline_cli`]: `harness compare` and
//!   `harness baseline`, the regression gate over runs and baselines.
//! - [`icount`]: `harness icount`, instruction counts under callgrind.

mod access_trace;
mod baseline_cli;
mod calibration;
mod compare_cli;
mod doctor;
mod downtime;
mod emulation;
mod hash_throughput;
mod host;
mod icount;
mod implementations;
mod interrupt;
mod link_calibration;
mod nbd_cli;
mod network;
mod placement;
mod precopy_cost;
mod remote;
mod report;
mod roles;
mod runner;
mod scenario;
mod source;
mod sqlite_app;
mod thesis;
mod transport_sweep;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

/// Benchmarks and checks ways to keep a memory region in sync between two
/// hosts: pull on fault (userfaultfd), NBD mounts, migration, and more, each
/// under the same emulated network.
#[derive(Debug, Parser)]
#[command(name = "harness", version, propagate_version = true)]
#[command(
    after_help = "Start with `harness doctor`, then `harness scenario rtt-sweep --profile quick`."
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario and write its results.
    ///
    /// Writes results/runs/<utc-time>-<scenario>/ with manifest.json (host,
    /// build, capabilities, emulation), cells.jsonl (one record per cell and
    /// repetition, written as measured) and summary.csv, then prints a table
    /// and renders the report (figures/ and index.html, see `harness report`).
    #[command(after_help = "Examples:\n  \
        harness scenario rtt-sweep --profile quick\n  \
        harness scenario rtt-sweep --emulation per-call   # RTT as a sleep per call, as the thesis did\n  \
        harness scenario ./my-scenario.toml --out /tmp/runs\n  \
        harness scenario thesis --profile default         # every scenario, one report page")]
    Scenario {
        /// A built-in scenario name (see `harness list`), a path to a .toml
        /// file, or `thesis`: every built-in scenario, one after the other,
        /// with a page linking their reports.
        name: String,
        /// Size of the run: quick (CI, under two minutes), default (about
        /// fifteen minutes at most), thesis (the full study). Default:
        /// `default`, or `thesis` for `harness scenario thesis`.
        #[arg(long, value_enum)]
        profile: Option<Profile>,
        /// Directory the run directory is created in.
        #[arg(long, default_value = "results/runs")]
        out: PathBuf,
        /// How the network is emulated. `auto` picks the most faithful mode
        /// available: `userspace-link` (packets between network namespaces)
        /// as root, else `inproc` (a delay line in this process).
        #[arg(long, value_enum, default_value_t = emulation::EmulationChoice::Auto)]
        emulation: emulation::EmulationChoice,
    },
    /// Run a fixed benchmark cell set (`ci`: baseline, uffd, direct and
    /// managed mounts over frpc and grpc at RTT 0 and 10 ms, 10 repetitions)
    /// and, with --against, compare it with a baseline.
    #[command(after_help = "Examples:\n  \
        harness bench --profile ci\n  \
        harness bench --profile ci --against results/baselines/ci.json --fail-above 20 --markdown bench.md")]
    Bench {
        /// The cell set.
        #[arg(long, value_enum)]
        profile: BenchProfile,
        /// Directory the run directory is created in.
        #[arg(long, default_value = "results/runs")]
        out: PathBuf,
        /// How the network is emulated (see `harness scenario --help`).
        #[arg(long, value_enum, default_value_t = emulation::EmulationChoice::Auto)]
        emulation: emulation::EmulationChoice,
        /// A baseline file or run directory to compare the run with; the
        /// exit code is then the comparison's.
        #[arg(long)]
        against: Option<PathBuf>,
        #[command(flatten)]
        gate: compare_cli::GateOptions,
    },
    /// Compare two runs (or baselines) cell by cell and metric by metric:
    /// a two-sided permutation test on the per-repetition samples (p <
    /// 0.01) and a noise threshold (5 %); improved / unchanged / regressed
    /// with the change of the medians and its bootstrap interval. Exits 1
    /// on a significant regression beyond its threshold (and --fail-above),
    /// 0 otherwise.
    #[command(after_help = "Examples:\n  \
        harness compare results/baselines/ci.json results/runs/20261206T090000Z-ci\n  \
        harness compare RUN_A RUN_B --thresholds bench-thresholds.toml --markdown compare.md\n  \
        harness compare results/baselines/ci.json RUN --fail-above 20   # report-only below 20 %")]
    Compare {
        /// The reference: a run directory or a baseline JSON file.
        base: PathBuf,
        /// The candidate: a run directory or a baseline JSON file.
        new: PathBuf,
        #[command(flatten)]
        gate: compare_cli::GateOptions,
    },
    /// Count the instructions of fixed workloads (codecs, the NBD request
    /// decoder, pipeline stages) under valgrind's callgrind and compare them
    /// with the committed baseline: deterministic, so the gate is strict.
    /// Exits 1 when a workload executes more than --threshold percent more.
    #[command(after_help = "Examples:\n  \
        harness icount                 # against results/baselines/icount.json\n  \
        harness icount --update        # rewrite the baseline\n  \
        harness icount frpc_reply_4k   # one workload")]
    Icount {
        /// Workloads to count (default: all; `icount-workloads --list`).
        workloads: Vec<String>,
        /// The baseline file.
        #[arg(long, default_value = icount::DEFAULT_BASELINE)]
        baseline: PathBuf,
        /// Write the counts as the new baseline instead of comparing.
        #[arg(long)]
        update: bool,
        /// Allowed increase, percent.
        #[arg(long, default_value_t = 1.0)]
        threshold: f64,
    },
    /// Keep a run's samples as a named baseline for `harness compare`.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// List the built-in scenarios and the implementations.
    List,
    /// Run one role of a cell (started by the runner; talks JSON lines on
    /// stdin/stdout, so it also runs on another machine under ssh).
    #[command(subcommand)]
    Role(RoleCommand),
    /// Measure the emulated link.
    #[command(subcommand)]
    Netem(NetemCommand),
    /// Remove what a killed run left behind: every network namespace, veth
    /// and FUSE mount named with the project's prefix (`msb-`), and nothing
    /// else.
    Cleanup,
    /// Serve backends over NBD, or describe an NBD server's exports.
    #[command(subcommand)]
    Nbd(nbd_cli::NbdCommand),
    /// Show what this host offers (root, userfaultfd, FUSE, namespaces, netem, NBD...).
    Doctor {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-render a run's figures and report from its records, without
    /// running anything: RUN_DIR/figures/*.svg, *.png, *.csv and
    /// RUN_DIR/index.html (self-contained, opens offline).
    #[command(
        after_help = "Example:\n  harness report results/runs/20261123T142114Z-rtt-sweep --open"
    )]
    Report {
        /// A run directory (holds manifest.json and cells.jsonl).
        run_dir: PathBuf,
        /// Open index.html with xdg-open afterwards.
        #[arg(long)]
        open: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BaselineCommand {
    /// Write results/baselines/NAME.json from one or more run directories:
    /// every per-repetition sample, the machine description and git revision.
    #[command(
        after_help = "Example:\n  harness baseline update ci --run results/runs/20261206T090000Z-ci"
    )]
    Update {
        /// The baseline's name (its file name without `.json`).
        name: String,
        /// The run directory to keep; repeat it to pool several runs' samples
        /// (a baseline from one run misses how much runs differ).
        #[arg(long, required = true)]
        run: Vec<PathBuf>,
        /// Directory of baselines.
        #[arg(long, default_value = baseline_cli::DEFAULT_DIR)]
        dir: PathBuf,
    },
}

/// Fixed cell sets of `harness bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchProfile {
    /// scenarios/ci.toml: the CI regression cells.
    Ci,
}

#[derive(Debug, Subcommand)]
enum NetemCommand {
    /// Build the src and dst namespaces, shape the link between them with
    /// the given properties, and measure through it: TCP and UDP round
    /// trips, UDP loss, bulk TCP throughput, and round trips under load.
    /// Prints configured against measured for each target. Needs root.
    #[command(after_help = "Examples:\n  \
        harness netem check --rtt 50ms\n  \
        harness netem check --rtt 10ms --rate 100mbit --loss 1%\n  \
        harness netem check --emulator kernel-netem   # where the kernel has netem")]
    Check {
        /// What shapes the link: the kernel's netem where it works (auto),
        /// or the project's packet relay.
        #[arg(long, value_enum, default_value_t = calibration::LinkEmulator::Auto)]
        emulator: calibration::LinkEmulator,
        /// Round-trip time (half each way).
        #[arg(long, default_value = "10ms", value_parser = calibration::parse_duration)]
        rtt: std::time::Duration,
        /// Jitter per direction (uniform, +-), never reordering.
        #[arg(long, default_value = "0ms", value_parser = calibration::parse_duration)]
        jitter: std::time::Duration,
        /// Bottleneck rate per direction; none by default.
        #[arg(long, value_parser = calibration::parse_rate)]
        rate: Option<u64>,
        /// Independent loss per direction.
        #[arg(long, default_value = "0%", value_parser = calibration::parse_loss)]
        loss: f64,
        /// A shorter measurement (a few seconds).
        #[arg(long)]
        quick: bool,
        /// Print the full report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RoleCommand {
    /// Serve the source region's backend service over a transport (jsonl,
    /// grpc, frpc, tarpc, raw) on a TCP listener until stdin says stop (or
    /// closes). Prints a `ready` line with the bound address.
    RemoteBackend(roles::remote_backend::RemoteBackendArgs),
    /// Run the migrating application on a seeder's mount of the seeded
    /// region and serve the seeder service (Track, Dirty, Sync, ReadAt,
    /// Close) until stdin says stop: the source host of a `downtime` cell.
    MigrationSource(roles::migration_source::MigrationSourceArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Profile {
    Quick,
    Default,
    Thesis,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Quick => "quick",
            Profile::Default => "default",
            Profile::Thesis => "thesis",
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Scenarios that measure in this process, with no link, take no
/// `--emulation`; the default is accepted so `thesis` can pass it.
fn refuse_emulation(emulation: emulation::EmulationChoice, name: &str) -> anyhow::Result<()> {
    if emulation != emulation::EmulationChoice::Auto {
        anyhow::bail!(
            "--emulation does not apply to {name}: it measures in this process and crosses no link"
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Scenario {
            name,
            profile,
            out,
            emulation,
        } => {
            if name == thesis::NAME {
                interrupt::install().context("installing the Ctrl-C handler")?;
                let profile = profile.unwrap_or(Profile::Thesis);
                return thesis::run(profile.name(), emulation.name(), &out);
            }
            let profile = profile.unwrap_or(Profile::Default);
            run_scenario(&name, profile, &out, emulation).map(|(code, _)| code)
        }
        Command::Bench {
            profile,
            out,
            emulation,
            against,
            gate,
        } => {
            let name = match profile {
                BenchProfile::Ci => "ci",
            };
            let started = std::time::Instant::now();
            let (code, dir) = run_scenario(name, Profile::Default, &out, emulation)?;
            println!(
                "bench {name}: ran in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            match against {
                Some(base) if code == ExitCode::SUCCESS => compare_cli::run(&base, &dir, &gate),
                _ => Ok(code),
            }
        }
        Command::Compare { base, new, gate } => compare_cli::run(&base, &new, &gate),
        Command::Icount {
            workloads,
            baseline,
            update,
            threshold,
        } => icount::run(&baseline, update, threshold, &workloads),
        Command::Baseline(BaselineCommand::Update { name, run, dir }) => {
            baseline_cli::update(&name, &run, &dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            println!("scenarios (built in; run with `harness scenario NAME`):");
            for name in scenario::built_in_names() {
                let s = scenario::load_any(name, "default")?;
                println!("  {name:<18} {}", s.description());
            }
            println!(
                "  {:<18} every scenario above, one after the other (thesis profile unless --profile)",
                thesis::NAME
            );
            println!("\nimplementations:");
            for d in implementations::ALL {
                println!("  {:<16} {}", d.name, d.summary);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Role(RoleCommand::RemoteBackend(args)) => {
            roles::remote_backend::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Role(RoleCommand::MigrationSource(args)) => {
            roles::migration_source::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Netem(NetemCommand::Check {
            emulator,
            rtt,
            jitter,
            rate,
            loss,
            quick,
            json,
        }) => {
            let config = network::symmetric_link(rtt, jitter, rate, loss);
            let plan = if quick {
                netem::calibrate::CalibrationPlan::quick()
            } else {
                netem::calibrate::CalibrationPlan::default()
            };
            let emulation = emulation::resolve(emulator.choice(), &doctor::probe_all())
                .map_err(anyhow::Error::msg)?;
            let layout = emulation
                .layout()
                .context("netem check measures a packet-level link")?;
            let net = network::Namespaces::create(layout).map_err(anyhow::Error::msg)?;
            eprintln!(
                "measuring through {emulation} between {} and {} ...",
                net.topology.src_ns(),
                net.topology.dst_ns()
            );
            let (report, checks) =
                calibration::calibrate(&net, &config, &plan).map_err(anyhow::Error::msg)?;
            drop(net);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", calibration::checks_table(&checks));
                println!(
                    "bulk TCP goodput {:.1} Mbit/s; relay departure error src->dst p50 {} us, p99 {} us",
                    report.bulk_goodput_bps / 1e6,
                    report.relay.as_ref().map_or(0, |r| r.departure_error_a_to_b_ns.p50_ns / 1000),
                    report.relay.as_ref().map_or(0, |r| r.departure_error_a_to_b_ns.p99_ns / 1000),
                );
            }
            let missed = checks
                .iter()
                .filter(|c| c.verdict == netem::calibrate::Verdict::Missed)
                .count();
            if missed > 0 {
                println!("{missed} target(s) missed on this host");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup => {
            cleanup()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { run_dir, open } => report::run(&run_dir, open),
        Command::Nbd(command) => nbd_cli::run(command),
        Command::Doctor { json } => {
            let caps = doctor::probe_all();
            if json {
                println!("{}", serde_json::to_string_pretty(&caps)?);
            } else {
                println!("{}", doctor::table(&caps));
                let build = host::build_info();
                match host::build_warning(&build) {
                    Some(w) => println!("build: {w}"),
                    None => println!(
                        "build: profile {}, opt-level {}, fit for numbers",
                        build.profile, build.opt_level
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs one scenario (not `thesis`) and prints its table; returns the exit
/// code and the run directory.
fn run_scenario(
    name: &str,
    profile: Profile,
    out: &Path,
    emulation: emulation::EmulationChoice,
) -> anyhow::Result<(ExitCode, PathBuf)> {
    let capabilities = doctor::probe_all();
    let report = match scenario::load_any(name, profile.name())? {
        scenario::AnyScenario::Region(scenario) => {
            let emulation =
                emulation::resolve(emulation, &capabilities).map_err(anyhow::Error::msg)?;
            interrupt::install().context("installing the Ctrl-C handler")?;
            eprintln!(
                "scenario {} ({} profile): {} cells x {} repetitions, emulation {}, budget {} s per cell",
                scenario.name,
                scenario.profile,
                scenario.cells().len(),
                scenario.repetitions,
                emulation,
                scenario.cell_time_budget_s
            );
            let report = runner::run(&scenario, emulation, capabilities, out)?;
            println!("{}", reports::summary_table(&report.rows));
            report
        }
        scenario::AnyScenario::LinkCalibration(scenario) => {
            if emulation != emulation::EmulationChoice::Auto {
                anyhow::bail!(
                    "--emulation does not apply to {}: it measures the emulators its file \
                     lists ({}); edit `emulators` in a copy of the file to choose",
                    scenario.name,
                    scenario
                        .emulators
                        .iter()
                        .map(|e| e.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            interrupt::install().context("installing the Ctrl-C handler")?;
            eprintln!(
                "scenario {} ({} profile): {} emulator(s) x {} points x {} repetitions",
                scenario.name,
                scenario.profile,
                scenario.emulators.len(),
                scenario.points().len(),
                scenario.repetitions,
            );
            let report = link_calibration::run(&scenario, capabilities, out)?;
            println!("{}", link_calibration::table(&report.rows));
            for line in link_calibration::skipped_lines(&report.rows)
                .into_iter()
                .chain(link_calibration::capacity_lines(&report.rows))
            {
                println!("{line}");
            }
            report
        }
        scenario::AnyScenario::TransportSweep(scenario) => {
            let emulation =
                emulation::resolve(emulation, &capabilities).map_err(anyhow::Error::msg)?;
            interrupt::install().context("installing the Ctrl-C handler")?;
            eprintln!(
                "scenario {} ({} profile): {} transports x {} points x {} repetitions, emulation {}",
                scenario.name,
                scenario.profile,
                scenario.transports.len(),
                scenario.points().len(),
                scenario.repetitions,
                emulation,
            );
            let report = transport_sweep::run(&scenario, emulation, capabilities, out)?;
            println!("{}", transport_sweep::table(&report.rows));
            for line in transport_sweep::skipped_lines(&report.rows)
                .into_iter()
                .chain(transport_sweep::target_lines(&report.rows))
            {
                println!("{line}");
            }
            report
        }
        scenario::AnyScenario::Downtime(scenario) => {
            let emulation =
                emulation::resolve(emulation, &capabilities).map_err(anyhow::Error::msg)?;
            interrupt::install().context("installing the Ctrl-C handler")?;
            eprintln!(
                "scenario {} ({} profile): {} strategies x {} transports x {} points x {} repetitions, emulation {}",
                scenario.name,
                scenario.profile,
                scenario.strategies.len(),
                scenario.transports.len(),
                scenario.points().len(),
                scenario.repetitions,
                emulation,
            );
            let report = downtime::run(&scenario, emulation, capabilities, out)?;
            println!("{}", downtime::table(&report.rows));
            for line in downtime::target_lines(&report.rows) {
                println!("{line}");
            }
            report
        }
        scenario::AnyScenario::HashThroughput(scenario) => {
            refuse_emulation(emulation, &scenario.name)?;
            interrupt::install().context("installing the Ctrl-C handler")?;
            eprintln!(
                "scenario {} ({} profile): {} cells x {} repetitions, {} MiB region in memory",
                scenario.name,
                scenario.profile,
                scenario.cells_per_repetition(),
                scenario.repetitions,
                scenario.region_mib,
            );
            let report = hash_throughput::run(&scenario, capabilities, out)?;
            println!("{}", hash_throughput::table(&report.rows));
            for line in hash_throughput::ceiling_lines(&report.rows) {
                println!("{line}");
            }
            report
        }
        scenario::AnyScenario::PrecopyCost(scenario) => {
            refuse_emulation(emulation, &scenario.name)?;
            interrupt::install().context("installing the Ctrl-C handler")?;
            eprintln!(
                "scenario {} ({} profile): {} trackers x {} points x {} repetitions, {} measured cycles each",
                scenario.name,
                scenario.profile,
                scenario.trackers.len(),
                scenario.points().len(),
                scenario.repetitions,
                scenario.cycles,
            );
            let report = precopy_cost::run(&scenario, capabilities, out)?;
            println!("{}", precopy_cost::table(&report.rows));
            for line in precopy_cost::claim_lines(&report.rows, &scenario.base) {
                println!("{line}");
            }
            report
        }
    };
    for w in &report.warnings {
        println!("warning: {w}");
    }
    println!("results: {}", report.dir.display());
    report::after_run(&report.dir);
    let failed = report.rows.iter().any(|r| r.failed > 0);
    if failed {
        println!("some cells failed; their reasons are in cells.jsonl and summary.csv");
    }
    let code = if report.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    };
    Ok((code, report.dir))
}

/// `harness cleanup`: namespaces and veths, then FUSE mounts (and the
/// `msb-` mount point directories they leave), all by the project's prefix.
fn cleanup() -> anyhow::Result<()> {
    let prefix = netem::topology::PREFIX;
    let left = netem::topology::leftovers(prefix).context("listing leftover namespaces")?;
    if !left.is_empty() {
        let report = netem::topology::cleanup(prefix).context("removing namespaces")?;
        for ns in &report.namespaces {
            println!("removed namespace {ns}");
        }
        for link in &report.links {
            println!("removed veth {link}");
        }
    }
    let mounts = fusefs::unmount_leftovers(prefix).context("removing FUSE mounts")?;
    for m in mounts.unmounted.iter().chain(&mounts.aborted) {
        println!("unmounted {} ({})", m.mount_point.display(), m.source);
        let is_ours = m
            .mount_point
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix));
        if is_ours {
            // Only an empty directory goes; anything else is not ours to delete.
            let _ = std::fs::remove_dir(&m.mount_point);
        }
    }
    for (m, errno) in &mounts.failed {
        eprintln!("could not unmount {}: {errno}", m.mount_point.display());
    }
    if left.is_empty() && mounts.unmounted.is_empty() && mounts.aborted.is_empty() {
        println!("nothing to remove: no namespace, veth or FUSE mount named {prefix}*");
    }
    if mounts.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} FUSE mount(s) could not be removed", mounts.failed.len())
    }
}
