//! Measuring the emulated link: `harness netem check`, and the calibration
//! every packet-level run records in its manifest.

use std::time::Duration;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use netem::calibrate::{CalibrationPlan, CalibrationReport, TargetCheck, Verdict};
use netem::link::LinkConfig;

use crate::emulation::EmulationChoice;
use crate::network::Namespaces;

/// What `netem check` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LinkEmulator {
    /// The kernel's netem where it works, else the project's relay.
    Auto,
    /// The project's packet relay in a third namespace.
    UserspaceLink,
    /// The kernel's netem qdisc on a direct veth pair.
    KernelNetem,
}

impl LinkEmulator {
    /// The emulation mode to resolve.
    pub fn choice(self) -> EmulationChoice {
        match self {
            LinkEmulator::Auto => EmulationChoice::Auto,
            LinkEmulator::UserspaceLink => EmulationChoice::UserspaceLink,
            LinkEmulator::KernelNetem => EmulationChoice::KernelNetem,
        }
    }
}

/// Parses `50ms`, `500us`, `1.5s` (a bare number is milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1e-3)
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; use e.g. 50ms, 500us, 1.5s"))?;
    if !(0.0..=3600.0).contains(&(v * scale)) {
        return Err(format!("`{text}` is not between 0 and 1 hour"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Parses a rate the way `tc` writes it: `10mbit`, `1gbit`, `500kbit`, `2000000bit`.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (number, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(suffix, scale)| t.strip_suffix(suffix).map(|n| (n.to_owned(), *scale)))
        .ok_or_else(|| format!("`{text}` is not a rate; use e.g. 10mbit, 1gbit, 500kbit"))?;
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a rate; use e.g. 10mbit, 1gbit, 500kbit"))?;
    let bps = v * scale;
    if !(1e3..=1e11).contains(&bps) {
        return Err(format!("`{text}` is not between 1kbit and 100gbit"));
    }
    Ok(bps as u64)
}

/// Parses a loss probability: `1%` or `0.01`.
pub fn parse_loss(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let p = match t.strip_suffix('%') {
        Some(n) => n.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("`{text}` is not a loss; use e.g. 1% or 0.01"))?;
    if !(0.0..1.0).contains(&p) {
        return Err(format!("`{text}` is not a loss in [0%, 100%)"));
    }
    Ok(p)
}

/// A short plan for the calibration recorded with every run (a few
/// seconds per RTT).
pub fn run_plan() -> CalibrationPlan {
    CalibrationPlan {
        round_trips: 200,
        udp_probes: 300,
        bulk_warmup: Duration::from_millis(200),
        bulk_duration: Duration::from_millis(500),
        loaded_duration: Duration::from_millis(500),
        ..CalibrationPlan::quick()
    }
}

/// Shapes the run's link with `config` (relay or kernel netem, as the
/// topology is built), measures through it, and stops shaping.
pub fn calibrate(
    net: &Namespaces,
    config: &LinkConfig,
    plan: &CalibrationPlan,
) -> Result<(CalibrationReport, Vec<TargetCheck>), String> {
    let link = net.start_link(config.clone())?;
    let report = match link.relay() {
        Some(relay) => netem::calibrate::run_with_relay(&net.topology, config, relay, plan),
        None => netem::calibrate::run(&net.topology, config, plan),
    }
    .map_err(|e| format!("calibrating the link: {e}"));
    link.stop()?;
    let report = report?;
    let checks = report.check_targets();
    Ok((report, checks))
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "ns" => format!("{:.3} ms", v / 1e6),
        "bit/s" => format!("{:.2} Mbit/s", v / 1e6),
        "fraction" => format!("{:.3}%", v * 100.0),
        other => format!("{v:.3} {other}"),
    }
}

/// Configured (expected) against measured, one row per target.
pub fn checks_table(checks: &[TargetCheck]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "quantity",
        "configured",
        "measured",
        "allowed error",
        "verdict",
        "note",
    ]);
    for c in checks {
        let unset = c.verdict == Verdict::Skipped && c.expected == 0.0;
        t.add_row([
            c.quantity.to_owned(),
            if unset {
                "-".to_owned()
            } else {
                fmt_value(c.expected, c.unit)
            },
            fmt_value(c.measured, c.unit),
            if unset {
                "-".to_owned()
            } else {
                fmt_value(c.allowed_error, c.unit)
            },
            match c.verdict {
                Verdict::Met => "met".to_owned(),
                Verdict::Missed => "MISSED".to_owned(),
                Verdict::Skipped => "skipped".to_owned(),
            },
            c.note.clone().unwrap_or_default(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_take_the_usual_spellings_and_name_bad_input() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("20").unwrap(), Duration::from_millis(20));
        assert!(parse_duration("fast").unwrap_err().contains("fast"));
        assert_eq!(parse_rate("10mbit").unwrap(), 10_000_000);
        assert_eq!(parse_rate("1Gbit").unwrap(), 1_000_000_000);
        assert!(parse_rate("10mb").unwrap_err().contains("10mb"));
        assert!((parse_loss("1%").unwrap() - 0.01).abs() < 1e-12);
        assert!((parse_loss("0.02").unwrap() - 0.02).abs() < 1e-12);
        assert!(parse_loss("100%").is_err());
    }
}
