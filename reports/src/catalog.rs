//! The figure catalog: one declarative entry per figure of the study.
//!
//! Every row of both figure tables in DESIGN.md ("Scenarios") has at least
//! one entry here ([`FigureSpec::design_row`] quotes the row). An entry
//! says which scenario produces the data, which metric is plotted against
//! which parameter, what makes a series, which cells are kept, and how the
//! axes are scaled. It is also the contract with scenarios not written
//! yet: the metric and parameter names below are the ones they must
//! record for their figures to appear.
//!
//! Metrics are looked up by name in a record's `metrics` object, so a new
//! field of `results::Metrics` needs no change here beyond its entry.

use crate::stats::BandPolicy;

/// Where a plotted value comes from in one cell record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    /// A scalar metric, by name.
    Metric(&'static str),
    /// A quantile (0..=1) of one repetition's histogram; repetitions are
    /// then folded like scalars.
    HistQuantile { histogram: &'static str, q: f64 },
    /// A quantile of every repetition's samples merged into one histogram,
    /// with p1-p99 of the merged samples as the band.
    HistMerged { histogram: &'static str, q: f64 },
}

/// One quantity drawn per series (a figure with two, such as p50 and p99,
/// draws each series twice: filled markers and solid lines for the first,
/// hollow markers and dashed lines for the second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    pub source: Source,
    /// Appended to the series label when a figure has several measures.
    pub suffix: &'static str,
}

/// Axis scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Linear, starting at zero.
    Linear,
    /// Base 10. A zero value on a log x axis is drawn one decade below the
    /// smallest positive value and labelled "0" (RTT sweeps start at 0);
    /// values <= 0 on a log y axis cannot be drawn and are counted in the
    /// caption.
    Log,
}

/// What names a series (and picks its colour and marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKey {
    Implementation,
    Transport,
    /// The value of a parameter (backend, heuristic, rtt_ms, ...).
    Param(&'static str),
}

impl SeriesKey {
    /// A name for captions: "implementation", "transport", "backend".
    pub fn name(self) -> &'static str {
        match self {
            SeriesKey::Implementation => "implementation",
            SeriesKey::Transport => "transport",
            SeriesKey::Param(p) => p,
        }
    }
}

/// The x axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum XAxis {
    /// A numeric parameter. Series whose cells lack it (the local baseline
    /// has no RTT) are drawn as horizontal reference lines.
    Param {
        name: &'static str,
        label: &'static str,
        scale: Scale,
    },
    /// One position per value of a key (implementation, backend, ...).
    Category { key: SeriesKey, label: &'static str },
}

/// A condition on a cell dimension: a parameter, or `implementation` or
/// `transport`. Cells that do not have the dimension pass (the baseline
/// has no `rtt_ms`, and belongs in a figure "at 0 ms RTT").
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cond {
    Eq(f64),
    Gt(f64),
    Is(&'static str),
}

/// Keeps the cells whose `param` satisfies `cond` (or lack `param`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Filter {
    pub param: &'static str,
    pub cond: Cond,
}

/// Lines drawn besides the series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Extra {
    /// y = x: where a measured value equals its configured one.
    Identity,
    /// A horizontal line at the median of `source` over the cells that
    /// pass `filters` (all series pooled).
    HLine {
        source: Source,
        filters: &'static [Filter],
        label: &'static str,
    },
}

/// One figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FigureSpec {
    /// File stem: `figures/<id>.svg`, `.png`, `.csv`.
    pub id: &'static str,
    /// What is compared; the emulation mode is appended when drawn.
    pub title: &'static str,
    /// The row of the DESIGN.md figure table this answers.
    pub design_row: &'static str,
    /// The scenario whose cells feed it.
    pub scenario: &'static str,
    pub measures: &'static [Measure],
    /// Y axis label, with its unit.
    pub y_label: &'static str,
    pub y_scale: Scale,
    /// Multiplies recorded values into the axis unit (ns -> us: 1e-3).
    pub y_factor: f64,
    pub band: BandPolicy,
    pub x: XAxis,
    pub series: SeriesKey,
    pub filters: &'static [Filter],
    /// A parameter drawn as side-by-side panels, one per value.
    pub facet: Option<&'static str>,
    pub extras: &'static [Extra],
    /// Series the figure is meant to compare; those absent from a run are
    /// named in the caption.
    pub expects: &'static [&'static str],
    /// What the scenario must run and record for this figure to have data.
    pub needs: &'static str,
}

const RTT_X: XAxis = XAxis::Param {
    name: "rtt_ms",
    label: "round-trip time (ms)",
    scale: Scale::Log,
};
const WORKERS_X: XAxis = XAxis::Param {
    name: "pull_workers",
    label: "pull workers",
    scale: Scale::Log,
};
const CHUNK_X: XAxis = XAxis::Param {
    name: "chunk_kib",
    label: "chunk size (KiB)",
    scale: Scale::Log,
};
const AT_ZERO_RTT: &[Filter] = &[Filter {
    param: "rtt_ms",
    cond: Cond::Eq(0.0),
}];
const IMPLEMENTATION_X: XAxis = XAxis::Category {
    key: SeriesKey::Implementation,
    label: "implementation",
};

/// The trackers the precopy-cost scenario compares.
const PRECOPY_TRACKERS: &[&str] = &[
    "hashsync-crc32",
    "hashsync-xxh3",
    "hashsync-blake3",
    "hashsync-sha256",
    "uffd-wp",
    "uffd-wp-sync",
];

/// A single scalar metric as the only measure.
macro_rules! one {
    ($name:literal) => {
        &[Measure {
            source: Source::Metric($name),
            suffix: "",
        }]
    };
}

const FIRST_CHUNK: &str = "first-chunk latency (µs)";
const READ_TPUT: &str = "read throughput (MiB/s)";
const PULL_IMPLS: &[&str] = &["baseline", "uffd", "mount-direct", "mount-managed"];
/// The downtime scenario's base region size and dirty rate.
const DOWNTIME_AT_BASE_SIZE_AND_RATE: &[Filter] = &[
    Filter {
        param: "region_mib",
        cond: Cond::Eq(64.0),
    },
    Filter {
        param: "dirty_rate",
        cond: Cond::Eq(2000.0),
    },
];

/// Every figure, in the order the report shows them.
pub const CATALOG: &[FigureSpec] = &[
    // ---- rtt-sweep ----
    FigureSpec {
        id: "rtt-sweep-first-chunk-latency-at-0ms",
        title: "First-chunk latency at 0 ms RTT: baseline vs uffd vs direct vs managed",
        design_row: "first-chunk latency: baseline vs uffd vs direct vs managed",
        scenario: "rtt-sweep",
        measures: one!("first_chunk_latency_us"),
        y_label: FIRST_CHUNK,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: IMPLEMENTATION_X,
        series: SeriesKey::Implementation,
        filters: AT_ZERO_RTT,
        facet: Some("workload"),
        extras: &[],
        expects: PULL_IMPLS,
        needs: "cells at rtt_ms = 0 recording `first_chunk_latency_us`",
    },
    FigureSpec {
        id: "rtt-sweep-first-chunk-latency-vs-rtt",
        title: "First-chunk latency as RTT grows",
        design_row: "first-chunk latency as RTT grows",
        scenario: "rtt-sweep",
        measures: one!("first_chunk_latency_us"),
        y_label: FIRST_CHUNK,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: RTT_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: Some("workload"),
        extras: &[],
        expects: PULL_IMPLS,
        needs: "cells recording `first_chunk_latency_us` over an `rtt_ms` axis",
    },
    FigureSpec {
        id: "rtt-sweep-fault-latency-vs-rtt",
        title: "Fault service latency (p50, p99) as RTT grows",
        design_row: "first-chunk latency as RTT grows (per-fault view)",
        scenario: "rtt-sweep",
        measures: &[
            Measure {
                source: Source::HistQuantile {
                    histogram: "fault_latency_ns",
                    q: 0.5,
                },
                suffix: "p50",
            },
            Measure {
                source: Source::HistQuantile {
                    histogram: "fault_latency_ns",
                    q: 0.99,
                },
                suffix: "p99",
            },
        ],
        y_label: "fault latency (µs)",
        y_scale: Scale::Log,
        y_factor: 1e-3,
        band: BandPolicy::MinMax,
        x: RTT_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: Some("workload"),
        extras: &[],
        expects: &["uffd"],
        needs: "implementations that fault (uffd) recording the `fault_latency_ns` histogram",
    },
    FigureSpec {
        id: "rtt-sweep-access-latency-vs-rtt",
        title: "Application access latency (p50 of all accesses) as RTT grows",
        design_row: "first-chunk latency as RTT grows (every access, not just the first)",
        scenario: "rtt-sweep",
        measures: &[Measure {
            source: Source::HistMerged {
                histogram: "access_latency_ns",
                q: 0.5,
            },
            suffix: "p50",
        }],
        y_label: "access latency (µs)",
        y_scale: Scale::Log,
        y_factor: 1e-3,
        band: BandPolicy::MinMax,
        x: RTT_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: Some("workload"),
        extras: &[],
        expects: PULL_IMPLS,
        needs: "cells recording the `access_latency_ns` histogram",
    },
    FigureSpec {
        id: "rtt-sweep-prepulled-vs-rtt",
        title: "MiB pre-pulled by managed mounts as RTT grows",
        design_row: "MiB pre-pulled (managed) as RTT grows",
        scenario: "rtt-sweep",
        measures: one!("prepulled_mib"),
        y_label: "pre-pulled before first read (MiB)",
        y_scale: Scale::Linear,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: RTT_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: Some("workload"),
        extras: &[],
        expects: &["mount-managed"],
        needs: "managed mounts (`mount-managed`) recording `prepulled_mib`",
    },
    FigureSpec {
        id: "rtt-sweep-read-throughput-at-0ms",
        title: "Read throughput at 0 ms RTT: baseline vs uffd vs direct vs migration",
        design_row: "read throughput: baseline vs uffd vs direct vs migration",
        scenario: "rtt-sweep",
        measures: one!("read_throughput_mib_s"),
        y_label: READ_TPUT,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: IMPLEMENTATION_X,
        series: SeriesKey::Implementation,
        filters: AT_ZERO_RTT,
        facet: Some("workload"),
        extras: &[],
        expects: &["baseline", "uffd", "mount-direct", "migration"],
        needs: "cells at rtt_ms = 0 recording `read_throughput_mib_s`",
    },
    FigureSpec {
        id: "rtt-sweep-read-throughput-vs-rtt",
        title: "Read throughput as RTT grows",
        design_row: "throughput as RTT grows",
        scenario: "rtt-sweep",
        measures: one!("read_throughput_mib_s"),
        y_label: READ_TPUT,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: RTT_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: Some("workload"),
        extras: &[],
        expects: &[
            "baseline",
            "uffd",
            "mount-direct",
            "mount-managed",
            "migration",
        ],
        needs: "cells recording `read_throughput_mib_s` over an `rtt_ms` axis",
    },
    FigureSpec {
        id: "rtt-sweep-write-throughput-vs-rtt",
        title: "Write throughput as RTT grows: direct vs managed mounts",
        design_row: "write throughput (direct vs managed) as RTT grows",
        scenario: "rtt-sweep",
        measures: one!("write_throughput_mib_s"),
        y_label: "write throughput (MiB/s)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: RTT_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: Some("workload"),
        extras: &[],
        expects: &["mount-direct", "mount-managed"],
        needs: "mounts (`mount-direct`, `mount-managed`) with a write workload recording `write_throughput_mib_s`",
    },
    // ---- worker-sweep ----
    FigureSpec {
        id: "worker-sweep-first-chunk-latency-vs-workers",
        title: "First-chunk latency as pull workers grow",
        design_row: "first-chunk latency as pull workers grow",
        scenario: "worker-sweep",
        measures: one!("first_chunk_latency_us"),
        y_label: FIRST_CHUNK,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: WORKERS_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: None,
        extras: &[],
        expects: &["mount-managed", "migration"],
        needs: "pulling implementations over a `workers` axis recording `first_chunk_latency_us`",
    },
    FigureSpec {
        id: "worker-sweep-prepulled-vs-workers",
        title: "MiB pre-pulled by managed mounts as pull workers grow",
        design_row: "MiB pre-pulled (managed) as workers grow",
        scenario: "worker-sweep",
        measures: one!("prepulled_mib"),
        y_label: "pre-pulled before first read (MiB)",
        y_scale: Scale::Linear,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: WORKERS_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: Some("workload"),
        extras: &[],
        expects: &["mount-managed"],
        needs: "managed mounts over a `workers` axis recording `prepulled_mib`",
    },
    FigureSpec {
        id: "worker-sweep-read-throughput-vs-workers",
        title: "Read throughput as pull workers grow (migration)",
        design_row: "throughput as workers grow (migration)",
        scenario: "worker-sweep",
        measures: one!("read_throughput_mib_s"),
        y_label: READ_TPUT,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: WORKERS_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: None,
        extras: &[],
        expects: &["migration", "mount-managed"],
        needs: "migration over a `workers` axis recording `read_throughput_mib_s`",
    },
    FigureSpec {
        id: "worker-sweep-pulled-before-open",
        title: "Data pulled before the device opens, by pull workers and RTT",
        design_row: "data pulled before the device opens, by workers and RTT",
        scenario: "worker-sweep",
        measures: one!("prepulled_mib"),
        y_label: "pulled before open (MiB)",
        y_scale: Scale::Linear,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: WORKERS_X,
        series: SeriesKey::Param("rtt_ms"),
        filters: &[Filter {
            param: "implementation",
            cond: Cond::Is("mount-managed"),
        }],
        facet: Some("workload"),
        extras: &[],
        expects: &[],
        needs: "managed mounts over `workers` and `rtt_ms` axes recording `prepulled_mib`",
    },
    FigureSpec {
        id: "worker-sweep-pull-efficiency-vs-workers",
        title: "Background pull efficiency: its rate over min(link rate, workers x chunk / RTT), nothing else reading",
        design_row: "throughput as RTT grows / as workers grow: the managed pull's efficiency",
        scenario: "worker-sweep",
        measures: one!("pull_efficiency"),
        y_label: "pull rate / bound",
        y_scale: Scale::Linear,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: WORKERS_X,
        series: SeriesKey::Param("rtt_ms"),
        filters: &[Filter {
            param: "workload",
            cond: Cond::Is("idle"),
        }],
        facet: None,
        extras: &[],
        expects: &[],
        needs: "managed mounts with `workload = idle` over `pull_workers` and `rtt_ms` recording `pull_efficiency`",
    },
    // ---- hash-throughput ----
    // The ceilings (`algorithm` = memory-read, memcpy) have no chunk size,
    // so they are drawn as horizontal lines in every panel.
    FigureSpec {
        id: "hash-throughput-by-algorithm",
        title: "Chunk hashing throughput by algorithm and chunk size, per hashing threads",
        design_row: "hashing algorithm throughput",
        scenario: "hash-throughput",
        measures: one!("hash_throughput_mib_s"),
        y_label: "hashing throughput (GiB/s)",
        y_scale: Scale::Log,
        y_factor: 1.0 / 1024.0,
        band: BandPolicy::Spread,
        x: CHUNK_X,
        series: SeriesKey::Param("algorithm"),
        filters: &[],
        facet: Some("threads"),
        extras: &[],
        expects: &["crc32", "xxh3", "blake3", "sha256", "memory-read"],
        needs: "cells over `algorithm`, `chunk_kib` and `threads` recording `hash_throughput_mib_s`, with `memory-read` ceiling cells",
    },
    FigureSpec {
        id: "hash-throughput-by-threads",
        title: "Chunk hashing throughput by hashing threads (64 KiB chunks)",
        design_row: "hashing algorithm throughput",
        scenario: "hash-throughput",
        measures: one!("hash_throughput_mib_s"),
        y_label: "hashing throughput (GiB/s)",
        y_scale: Scale::Log,
        y_factor: 1.0 / 1024.0,
        band: BandPolicy::Spread,
        x: XAxis::Param {
            name: "threads",
            label: "hashing threads",
            scale: Scale::Linear,
        },
        series: SeriesKey::Param("algorithm"),
        filters: &[Filter {
            param: "chunk_kib",
            cond: Cond::Eq(64.0),
        }],
        facet: None,
        extras: &[],
        expects: &["crc32", "xxh3", "blake3", "sha256", "memory-read"],
        needs: "cells over `algorithm` and `threads` at `chunk_kib` = 64 recording `hash_throughput_mib_s`, with ceiling cells",
    },
    // ---- transport-sweep ----
    FigureSpec {
        id: "transport-sweep-throughput-vs-rtt",
        title: "Transport throughput as RTT grows",
        design_row: "transport throughput (jsonl, grpc, frpc, tarpc) vs RTT",
        scenario: "transport-sweep",
        measures: one!("read_throughput_mib_s"),
        y_label: READ_TPUT,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: RTT_X,
        series: SeriesKey::Transport,
        filters: &[],
        facet: None,
        extras: &[],
        expects: &["jsonl", "grpc", "frpc", "tarpc"],
        needs: "cells over `transport` and `rtt_ms` recording `read_throughput_mib_s`",
    },
    FigureSpec {
        id: "transport-sweep-throughput-vs-workers",
        title: "Transport throughput as pull workers grow",
        design_row: "transport throughput (jsonl, grpc, frpc, tarpc) vs workers",
        scenario: "transport-sweep",
        measures: one!("read_throughput_mib_s"),
        y_label: READ_TPUT,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: WORKERS_X,
        series: SeriesKey::Transport,
        filters: &[],
        facet: None,
        extras: &[],
        expects: &["jsonl", "grpc", "frpc", "tarpc"],
        needs: "cells over `transport` and `workers` recording `read_throughput_mib_s`",
    },
    FigureSpec {
        id: "transport-sweep-throughput-vs-chunk-size",
        title: "Transport throughput as chunk size grows",
        design_row: "transport throughput (jsonl, grpc, frpc, tarpc) vs chunk size",
        scenario: "transport-sweep",
        measures: one!("read_throughput_mib_s"),
        y_label: READ_TPUT,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: XAxis::Param {
            name: "chunk_kib",
            label: "chunk size (KiB)",
            scale: Scale::Log,
        },
        series: SeriesKey::Transport,
        filters: &[],
        facet: None,
        extras: &[],
        expects: &["jsonl", "grpc", "frpc", "tarpc"],
        needs: "cells over `transport` and `chunk_kib` recording `read_throughput_mib_s`",
    },
    // ---- pull-heuristic ----
    FigureSpec {
        id: "pull-heuristic-first-chunk-latency",
        title: "Pull heuristics (linear is the thesis's right one, reverse its inverted one): first-chunk latency",
        design_row: "pull heuristic right vs inverted: first-chunk latency",
        scenario: "pull-heuristic",
        measures: one!("first_chunk_latency_us"),
        y_label: FIRST_CHUNK,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: RTT_X,
        series: SeriesKey::Param("pull_heuristic"),
        filters: &[],
        facet: Some("workload"),
        extras: &[],
        expects: &["linear", "reverse", "random", "trace"],
        needs: "managed mounts over a `pull_heuristic` axis recording `first_chunk_latency_us`",
    },
    FigureSpec {
        id: "pull-heuristic-read-throughput",
        title: "Pull heuristics (linear is the thesis's right one, reverse its inverted one): read throughput",
        design_row: "pull heuristic right vs inverted: throughput",
        scenario: "pull-heuristic",
        measures: one!("read_throughput_mib_s"),
        y_label: READ_TPUT,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: RTT_X,
        series: SeriesKey::Param("pull_heuristic"),
        filters: &[],
        facet: Some("workload"),
        extras: &[],
        expects: &["linear", "reverse", "random", "trace"],
        needs: "managed mounts over a `pull_heuristic` axis recording `read_throughput_mib_s`",
    },
    FigureSpec {
        id: "pull-heuristic-sqlite-time-to-answers",
        title: "Pull heuristics under SQLite lookups: from mounting to the last answer",
        design_row: "pull heuristic right vs inverted: first-chunk latency and throughput (time to useful work of a real application)",
        scenario: "pull-heuristic",
        measures: one!("total_ms"),
        y_label: "mount + lookups (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: RTT_X,
        series: SeriesKey::Param("pull_heuristic"),
        filters: &[Filter {
            param: "workload",
            cond: Cond::Is("sqlite"),
        }],
        facet: None,
        extras: &[],
        expects: &["linear", "reverse", "random", "trace"],
        needs: "managed mounts over a `pull_heuristic` axis with `workload = sqlite` recording `total_ms`",
    },
    // ---- chunk-sweep: chunk size ----
    FigureSpec {
        id: "chunk-sweep-first-chunk-latency-vs-chunk-size",
        title: "Managed mount: first-chunk latency as the chunk size grows",
        design_row: "chunking on the client vs on the server side: chunk size against first-chunk latency",
        scenario: "chunk-sweep",
        measures: one!("first_chunk_latency_us"),
        y_label: FIRST_CHUNK,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: CHUNK_X,
        series: SeriesKey::Param("rtt_ms"),
        filters: &[Filter {
            param: "implementation",
            cond: Cond::Is("mount-managed"),
        }],
        facet: Some("workload"),
        extras: &[],
        expects: &[],
        needs: "managed mounts over `chunk_kib` and `rtt_ms` recording `first_chunk_latency_us`",
    },
    FigureSpec {
        id: "chunk-sweep-read-throughput-vs-chunk-size",
        title: "Managed mount: read throughput as the chunk size grows",
        design_row: "chunking on the client vs on the server side: chunk size against throughput",
        scenario: "chunk-sweep",
        measures: one!("read_throughput_mib_s"),
        y_label: READ_TPUT,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: CHUNK_X,
        series: SeriesKey::Param("rtt_ms"),
        filters: &[Filter {
            param: "implementation",
            cond: Cond::Is("mount-managed"),
        }],
        facet: Some("workload"),
        extras: &[],
        expects: &[],
        needs: "managed mounts over `chunk_kib` and `rtt_ms` recording `read_throughput_mib_s`",
    },
    // ---- downtime ----
    // Each figure holds the other axes at the scenario's base point
    // (10 ms RTT, 64 MiB, 2000 pages/s).
    FigureSpec {
        id: "downtime-open-time-vs-rtt",
        title: "Open time as RTT grows (64 MiB, 2000 pages/s): uffd vs mounts",
        design_row: "open time: uffd vs mounts",
        scenario: "downtime",
        measures: one!("setup_ms"),
        y_label: "open time (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: RTT_X,
        series: SeriesKey::Implementation,
        filters: DOWNTIME_AT_BASE_SIZE_AND_RATE,
        facet: None,
        extras: &[],
        expects: &["two-step", "postcopy"],
        needs: "migration strategies over `rtt_ms` at 64 MiB and 2000 pages/s recording `setup_ms`",
    },
    FigureSpec {
        id: "downtime-vs-rtt",
        title: "Downtime as RTT grows (64 MiB, 2000 pages/s): one-step vs two-step migration vs stop-and-copy vs pre-copy",
        design_row: "downtime: one-step (direct, managed) vs two-step migration vs stop-and-copy vs pre-copy",
        scenario: "downtime",
        measures: one!("downtime_ms"),
        y_label: "downtime (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: RTT_X,
        series: SeriesKey::Implementation,
        filters: DOWNTIME_AT_BASE_SIZE_AND_RATE,
        facet: None,
        extras: &[],
        expects: &[
            "mount-direct",
            "mount-managed",
            "two-step",
            "stop-and-copy",
            "precopy-iterative",
        ],
        needs: "migration strategies over `rtt_ms` at 64 MiB and 2000 pages/s recording `downtime_ms`",
    },
    FigureSpec {
        id: "downtime-vs-region-size",
        title: "Downtime as the region grows (10 ms RTT, 2000 pages/s): two-step vs stop-and-copy vs pre-copy",
        design_row: "downtime: one-step (direct, managed) vs two-step migration vs stop-and-copy vs pre-copy",
        scenario: "downtime",
        measures: one!("downtime_ms"),
        y_label: "downtime (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: XAxis::Param {
            name: "region_mib",
            label: "region size (MiB)",
            scale: Scale::Log,
        },
        series: SeriesKey::Implementation,
        filters: &[
            Filter {
                param: "rtt_ms",
                cond: Cond::Eq(10.0),
            },
            Filter {
                param: "dirty_rate",
                cond: Cond::Eq(2000.0),
            },
        ],
        facet: None,
        extras: &[],
        expects: &["two-step", "stop-and-copy", "precopy-iterative"],
        needs: "migration strategies over `region_mib` at 10 ms RTT and 2000 pages/s recording `downtime_ms`",
    },
    FigureSpec {
        id: "downtime-transfer-amplification-vs-dirty-rate",
        title: "Bytes moved over the region size as the dirty rate grows (10 ms RTT, 64 MiB)",
        design_row: "downtime: one-step (direct, managed) vs two-step migration vs stop-and-copy vs pre-copy",
        scenario: "downtime",
        measures: one!("transfer_amplification"),
        y_label: "bytes over the link / region size",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: XAxis::Param {
            name: "dirty_rate",
            label: "pages written per second",
            scale: Scale::Linear,
        },
        series: SeriesKey::Implementation,
        filters: &[
            Filter {
                param: "rtt_ms",
                cond: Cond::Eq(10.0),
            },
            Filter {
                param: "region_mib",
                cond: Cond::Eq(64.0),
            },
        ],
        facet: None,
        extras: &[],
        expects: &["two-step", "stop-and-copy", "precopy-iterative"],
        needs: "migration strategies over `dirty_rate` at 10 ms RTT and 64 MiB recording `transfer_amplification`",
    },
    // ---- backends ----
    FigureSpec {
        id: "backends-read-throughput",
        title: "Read throughput by backend: memory, file, directory, redis, s3",
        design_row: "backends: memory, file, directory, redis, s3",
        scenario: "backends",
        measures: one!("read_throughput_mib_s"),
        y_label: READ_TPUT,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: XAxis::Category {
            key: SeriesKey::Param("backend"),
            label: "backend",
        },
        series: SeriesKey::Param("backend"),
        filters: &[],
        facet: None,
        extras: &[],
        expects: &["memory", "file", "directory", "redis", "s3"],
        needs: "cells over a `backend` axis recording `read_throughput_mib_s`",
    },
    // ---- chunk-sweep ----
    // Chunk size on x and RTT as panels: chunk-sweep's own axis, and the
    // RTT that the thesis says makes client-side chunking expensive. Only
    // `mount-direct` varies where it chunks (the managed mount always does
    // it on the client); its unchunked cells have no chunk size and are
    // drawn as the `none` reference line. One figure per workload, so no
    // point pools reads with writes or sequential with scattered writes.
    FigureSpec {
        id: "chunk-sweep-client-vs-server",
        title: "Chunking on the client vs on the server side: scattered writes (zipfian-write) by chunk size",
        design_row: "chunking on the client vs on the server side (scattered writes)",
        scenario: "chunk-sweep",
        measures: one!("write_throughput_mib_s"),
        y_label: "write throughput (MiB/s)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: CHUNK_X,
        series: SeriesKey::Param("chunking"),
        filters: &[
            Filter {
                param: "implementation",
                cond: Cond::Is("mount-direct"),
            },
            Filter {
                param: "workload",
                cond: Cond::Is("zipfian-write"),
            },
        ],
        facet: Some("rtt_ms"),
        extras: &[],
        expects: &["client", "server"],
        needs: "`mount-direct` cells over `chunk_kib` and `chunking` (client, server) with the `zipfian-write` workload recording `write_throughput_mib_s`",
    },
    FigureSpec {
        id: "chunk-sweep-client-vs-server-sequential-write",
        title: "Chunking on the client vs on the server side: sequential writes by chunk size",
        design_row: "chunking on the client vs on the server side (sequential writes)",
        scenario: "chunk-sweep",
        measures: one!("write_throughput_mib_s"),
        y_label: "write throughput (MiB/s)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: CHUNK_X,
        series: SeriesKey::Param("chunking"),
        filters: &[
            Filter {
                param: "implementation",
                cond: Cond::Is("mount-direct"),
            },
            Filter {
                param: "workload",
                cond: Cond::Is("sequential-write"),
            },
        ],
        facet: Some("rtt_ms"),
        extras: &[],
        expects: &["client", "server"],
        needs: "`mount-direct` cells over `chunk_kib` and `chunking` (client, server) with the `sequential-write` workload recording `write_throughput_mib_s`",
    },
    FigureSpec {
        id: "chunk-sweep-client-vs-server-read",
        title: "Chunking on the client vs on the server side: sequential reads by chunk size",
        design_row: "chunking on the client vs on the server side (sequential reads)",
        scenario: "chunk-sweep",
        measures: one!("read_throughput_mib_s"),
        y_label: READ_TPUT,
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: CHUNK_X,
        series: SeriesKey::Param("chunking"),
        filters: &[
            Filter {
                param: "implementation",
                cond: Cond::Is("mount-direct"),
            },
            Filter {
                param: "workload",
                cond: Cond::Is("sequential"),
            },
        ],
        facet: Some("rtt_ms"),
        extras: &[],
        expects: &["client", "server"],
        needs: "`mount-direct` cells over `chunk_kib` and `chunking` (client, server) with the `sequential` workload recording `read_throughput_mib_s`",
    },
    // ---- netem-calibration ----
    FigureSpec {
        id: "netem-calibration-rtt",
        title: "Emulated vs configured RTT (idle link, TCP round trips)",
        design_row: "emulated vs configured RTT and rate; emulator capacity (RTT)",
        scenario: "netem-calibration",
        measures: &[
            Measure {
                source: Source::Metric("rtt_p50_ms"),
                suffix: "p50",
            },
            Measure {
                source: Source::Metric("rtt_p99_ms"),
                suffix: "p99",
            },
        ],
        y_label: "measured RTT (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: XAxis::Param {
            name: "rtt_ms",
            label: "configured RTT (ms)",
            scale: Scale::Log,
        },
        series: SeriesKey::Implementation,
        filters: &[Filter {
            param: "rate_mbit",
            cond: Cond::Eq(0.0),
        }],
        facet: None,
        extras: &[Extra::Identity],
        expects: &[],
        needs: "link emulators over `rtt_ms` (rate_mbit = 0) recording `rtt_p50_ms` and `rtt_p99_ms`",
    },
    FigureSpec {
        id: "netem-calibration-goodput",
        title: "Measured goodput vs configured rate; emulator capacity",
        design_row: "emulated vs configured RTT and rate; emulator capacity (rate)",
        scenario: "netem-calibration",
        measures: one!("goodput_mbit_s"),
        y_label: "bulk TCP goodput (Mbit/s)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: XAxis::Param {
            name: "rate_mbit",
            label: "configured rate (Mbit/s)",
            scale: Scale::Log,
        },
        series: SeriesKey::Implementation,
        filters: &[Filter {
            param: "rate_mbit",
            cond: Cond::Gt(0.0),
        }],
        facet: None,
        extras: &[
            Extra::Identity,
            Extra::HLine {
                source: Source::Metric("capacity_mbit_s"),
                filters: &[Filter {
                    param: "rate_mbit",
                    cond: Cond::Eq(0.0),
                }],
                label: "emulator capacity",
            },
        ],
        expects: &[],
        needs: "link emulators over `rate_mbit` recording `goodput_mbit_s` (and `capacity_mbit_s` at rate_mbit = 0)",
    },
    // ---- precopy-cost ----
    // Each figure holds the other axis at the scenario's base point
    // (1024 MiB, 1 % dirty).
    FigureSpec {
        id: "precopy-cost-by-region-size",
        title: "Pre-copy cost per cycle by region size (1 % dirty): hashing vs write-protect",
        design_row: "pre-copy cost per cycle: hashing vs write-protect, by region size",
        scenario: "precopy-cost",
        measures: one!("precopy_cycle_ms"),
        y_label: "tracker's cost per cycle (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: XAxis::Param {
            name: "region_mib",
            label: "region size (MiB)",
            scale: Scale::Log,
        },
        series: SeriesKey::Implementation,
        filters: &[Filter {
            param: "dirty_fraction",
            cond: Cond::Eq(0.01),
        }],
        facet: None,
        extras: &[],
        expects: PRECOPY_TRACKERS,
        needs: "`hashsync-ALG` and `uffd-wp` cells over `region_mib` at `dirty_fraction` = 0.01 recording `precopy_cycle_ms`",
    },
    FigureSpec {
        id: "precopy-cost-by-dirty-fraction",
        title: "Pre-copy cost per cycle by dirty fraction (1024 MiB): hashing vs write-protect",
        design_row: "pre-copy cost per cycle: hashing vs write-protect, by dirty fraction",
        scenario: "precopy-cost",
        measures: one!("precopy_cycle_ms"),
        y_label: "tracker's cost per cycle (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: XAxis::Param {
            name: "dirty_fraction",
            label: "share of the region's pages written per cycle",
            scale: Scale::Log,
        },
        series: SeriesKey::Implementation,
        filters: &[Filter {
            param: "region_mib",
            cond: Cond::Eq(1024.0),
        }],
        facet: None,
        extras: &[],
        expects: PRECOPY_TRACKERS,
        needs: "`hashsync-ALG` and `uffd-wp` cells over `dirty_fraction` at `region_mib` = 1024 recording `precopy_cycle_ms`",
    },
    FigureSpec {
        id: "precopy-bytes-by-dirty-fraction",
        title: "Bytes a pre-copy cycle would send by dirty fraction (1024 MiB, 64 KiB hash chunks vs 4 KiB pages)",
        design_row: "pre-copy cost per cycle: hashing vs write-protect, by dirty fraction",
        scenario: "precopy-cost",
        measures: one!("bytes_to_send"),
        y_label: "MiB to send per cycle",
        y_scale: Scale::Log,
        y_factor: 1.0 / 1_048_576.0,
        band: BandPolicy::Spread,
        x: XAxis::Param {
            name: "dirty_fraction",
            label: "share of the region's pages written per cycle",
            scale: Scale::Log,
        },
        series: SeriesKey::Implementation,
        filters: &[Filter {
            param: "region_mib",
            cond: Cond::Eq(1024.0),
        }],
        facet: None,
        extras: &[],
        expects: PRECOPY_TRACKERS,
        needs: "`hashsync-ALG` and `uffd-wp` cells over `dirty_fraction` recording `bytes_to_send`",
    },
    // ---- faults ----
    FigureSpec {
        id: "faults-recovery-time",
        title: "Recovery time per implementation and injected fault",
        design_row: "outcome and recovery time per implementation x fault",
        scenario: "faults",
        measures: one!("recovery_ms"),
        y_label: "recovery time (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: XAxis::Category {
            key: SeriesKey::Param("fault"),
            label: "injected fault",
        },
        series: SeriesKey::Implementation,
        filters: &[],
        facet: None,
        extras: &[],
        expects: &[],
        needs: "cells over a `fault` axis recording `recovery_ms` (outcomes are in the cell table)",
    },
    // ---- replication ----
    FigureSpec {
        id: "replication-checkpoint-pause",
        title: "Checkpoint pause per implementation",
        design_row: "checkpoint pause, throughput lost, failover breakdown (pause)",
        scenario: "replication",
        measures: one!("checkpoint_pause_ms"),
        y_label: "checkpoint pause (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: IMPLEMENTATION_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: None,
        extras: &[],
        expects: &[],
        needs: "cells recording `checkpoint_pause_ms`",
    },
    FigureSpec {
        id: "replication-throughput-lost",
        title: "Application throughput lost to replication per implementation",
        design_row: "checkpoint pause, throughput lost, failover breakdown (throughput)",
        scenario: "replication",
        measures: one!("throughput_lost_pct"),
        y_label: "throughput lost (%)",
        y_scale: Scale::Linear,
        y_factor: 1.0,
        band: BandPolicy::Spread,
        x: IMPLEMENTATION_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: None,
        extras: &[],
        expects: &[],
        needs: "cells recording `throughput_lost_pct`",
    },
    FigureSpec {
        id: "replication-failover-breakdown",
        title: "Failover time by phase: detect, promote, resume",
        design_row: "checkpoint pause, throughput lost, failover breakdown (failover)",
        scenario: "replication",
        measures: &[
            Measure {
                source: Source::Metric("failover_detect_ms"),
                suffix: "detect",
            },
            Measure {
                source: Source::Metric("failover_promote_ms"),
                suffix: "promote",
            },
            Measure {
                source: Source::Metric("failover_resume_ms"),
                suffix: "resume",
            },
        ],
        y_label: "phase duration (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: IMPLEMENTATION_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: None,
        extras: &[],
        expects: &[],
        needs: "cells recording `failover_detect_ms`, `failover_promote_ms`, `failover_resume_ms`",
    },
    // ---- tcp-migration ----
    FigureSpec {
        id: "tcp-migration-stall",
        title: "TCP connection migration stall and its phases",
        design_row: "TCP connection migration stall and phases",
        scenario: "tcp-migration",
        measures: &[
            Measure {
                source: Source::Metric("stall_ms"),
                suffix: "stall",
            },
            Measure {
                source: Source::Metric("freeze_ms"),
                suffix: "freeze",
            },
            Measure {
                source: Source::Metric("restore_ms"),
                suffix: "restore",
            },
        ],
        y_label: "time (ms)",
        y_scale: Scale::Log,
        y_factor: 1.0,
        band: BandPolicy::MinMax,
        x: RTT_X,
        series: SeriesKey::Implementation,
        filters: &[],
        facet: None,
        extras: &[],
        expects: &[],
        needs: "cells recording `stall_ms`, `freeze_ms`, `restore_ms` over an `rtt_ms` axis",
    },
];

/// The catalog entry with this id.
pub fn find(id: &str) -> Option<&'static FigureSpec> {
    CATALOG.iter().find(|f| f.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both figure tables of DESIGN.md "Scenarios", row by row: (row,
    /// scenario). A row added there must be added here and to the catalog.
    const DESIGN_ROWS: &[(&str, &str)] = &[
        (
            "first-chunk latency: baseline vs uffd vs direct vs managed",
            "rtt-sweep",
        ),
        ("first-chunk latency as RTT grows", "rtt-sweep"),
        ("first-chunk latency as pull workers grow", "worker-sweep"),
        ("MiB pre-pulled (managed) as RTT grows", "rtt-sweep"),
        ("MiB pre-pulled (managed) as workers grow", "worker-sweep"),
        ("hashing algorithm throughput", "hash-throughput"),
        ("transport throughput", "transport-sweep"),
        (
            "read throughput: baseline vs uffd vs direct vs migration",
            "rtt-sweep",
        ),
        ("throughput as RTT grows", "rtt-sweep"),
        ("throughput as workers grow (migration)", "worker-sweep"),
        ("pull heuristic right vs inverted", "pull-heuristic"),
        ("open time: uffd vs mounts", "downtime"),
        ("downtime: one-step", "downtime"),
        ("backends: memory, file, directory, redis, s3", "backends"),
        (
            "write throughput (direct vs managed) as RTT grows",
            "rtt-sweep",
        ),
        (
            "chunking on the client vs on the server side",
            "chunk-sweep",
        ),
        (
            "data pulled before the device opens, by workers and RTT",
            "worker-sweep",
        ),
        (
            "emulated vs configured RTT and rate; emulator capacity",
            "netem-calibration",
        ),
        ("pre-copy cost per cycle", "precopy-cost"),
        (
            "outcome and recovery time per implementation x fault",
            "faults",
        ),
        (
            "checkpoint pause, throughput lost, failover breakdown",
            "replication",
        ),
        ("TCP connection migration stall and phases", "tcp-migration"),
    ];

    #[test]
    fn every_design_row_has_a_figure_of_its_scenario() {
        for (row, scenario) in DESIGN_ROWS {
            assert!(
                CATALOG
                    .iter()
                    .any(|f| f.design_row.starts_with(row) && f.scenario == *scenario),
                "no catalog entry for DESIGN.md row {row:?} ({scenario})"
            );
        }
    }

    #[test]
    fn ids_are_unique_and_file_name_safe() {
        for (i, f) in CATALOG.iter().enumerate() {
            assert!(
                f.id.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{}",
                f.id
            );
            assert!(
                CATALOG[i + 1..].iter().all(|g| g.id != f.id),
                "duplicate {}",
                f.id
            );
            assert!(!f.measures.is_empty(), "{} plots nothing", f.id);
            assert!(f.y_factor > 0.0, "{}", f.id);
        }
    }

    #[test]
    fn the_rtt_sweep_figures_the_issue_names_exist() {
        let fcl = find("rtt-sweep-first-chunk-latency-vs-rtt").unwrap();
        assert_eq!(
            fcl.measures[0].source,
            Source::Metric("first_chunk_latency_us")
        );
        assert_eq!(fcl.y_scale, Scale::Log);
        assert!(matches!(fcl.x, XAxis::Param { name: "rtt_ms", .. }));
        let tput = find("rtt-sweep-read-throughput-vs-rtt").unwrap();
        assert_eq!(tput.y_scale, Scale::Log);
        let pre = find("rtt-sweep-prepulled-vs-rtt").unwrap();
        assert_eq!(pre.scenario, "rtt-sweep");
        assert!(find("rtt-sweep-fault-latency-vs-rtt").is_some());
    }
}
