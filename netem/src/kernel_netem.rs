//! `kernel-netem`: the kernel's netem qdisc shapes the link.
//!
//! On hosts whose kernel has `sch_netem`, a [`Layout::Direct`] topology
//! (one veth pair from `src` to `dst`) gets a netem qdisc as the root of
//! each end's egress: `src`'s end shapes `src -> dst`, `dst`'s end shapes
//! `dst -> src`, each from its [`DirectionConfig`]. No process relays
//! packets, so no core is spent on the link.
//!
//! # Behavior
//!
//! - [`KernelNetem::apply`] runs `tc qdisc replace dev IF root netem ...`
//!   inside each namespace (iproute2's `tc`); a kernel without netem fails
//!   there, with `tc`'s own message. That is the detection: try it.
//! - The qdiscs go away with [`KernelNetem::remove`], on drop, or with the
//!   namespaces themselves.
//! - [`netem_args`] maps the project's link model onto netem's options; it
//!   is a pure function, tested without a kernel.
//!
//! # Limitations (differences from the user-space relay)
//!
//! - netem's `limit` counts packets held, delayed ones included, where the
//!   relay's queue limit counts bytes waiting to be serialized. The limit
//!   set here is the queue's bytes in full-size frames plus the frames the
//!   delay keeps in flight at the rate (or at 10 Gbit/s without a rate).
//! - With jitter, netem reorders packets (each gets its own send time);
//!   the relay never reorders.
//! - Gilbert-Elliott loss maps onto netem's `gemodel`, whose chain moves
//!   in a slightly different order per packet; the long-run loss rate and
//!   mean burst length are the same.
//! - No departure-error histogram: the kernel does not report how late it
//!   sent. Calibration (`netem check`) measures the link end to end.

use std::io;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::link::{DirectionConfig, LinkConfig, LossModel};
use crate::topology::{Layout, NetNs, Topology, MTU};

/// Bytes of a full-size frame on the wire: MTU plus the Ethernet header.
const FULL_FRAME_BYTES: u64 = MTU as u64 + 14;
/// Rate assumed for the packets in flight when no rate is set: about the
/// fastest a veth pair carries here.
const UNLIMITED_RATE_BPS: u64 = 10_000_000_000;
/// netem's own default `limit`, kept as a floor.
const MIN_LIMIT_PACKETS: u64 = 1000;

/// Why the kernel's netem could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum KernelNetemError {
    /// The topology is not a direct veth pair.
    #[error("kernel netem shapes a direct veth pair; this topology is {layout}")]
    Layout {
        /// The topology's layout.
        layout: Layout,
    },
    /// `tc` could not be started.
    #[error("running `{command}`: {source} (is iproute2's `tc` installed?)")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// `tc` ran and failed; a kernel without netem says so here.
    #[error("`{command}` in namespace {netns} failed ({status}): {stderr}")]
    Tc {
        /// The command line.
        command: String,
        /// The namespace it ran in.
        netns: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `tc` printed something this module cannot read.
    #[error("reading `{command}` output: {message}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong.
        message: String,
    },
}

/// netem qdiscs on both ends of a direct link; removed on drop.
#[derive(Debug)]
pub struct KernelNetem {
    /// (namespace, interface) of each qdisc applied.
    applied: Vec<(NetNs, &'static str)>,
    config: LinkConfig,
}

impl KernelNetem {
    /// Shapes `topology`'s link with `config`: `a_to_b` on `src`'s egress,
    /// `b_to_a` on `dst`'s.
    pub fn apply(topology: &Topology, config: &LinkConfig) -> Result<Self, KernelNetemError> {
        if topology.layout() != Layout::Direct {
            return Err(KernelNetemError::Layout {
                layout: topology.layout(),
            });
        }
        let open = |name: &str| {
            NetNs::open(name).map_err(|e| KernelNetemError::Output {
                command: format!("opening namespace {name}"),
                message: e.to_string(),
            })
        };
        let mut applied = Self {
            applied: Vec::with_capacity(2),
            config: config.clone(),
        };
        for (netns, interface, direction) in [
            (open(topology.src_ns())?, topology.src_if(), &config.a_to_b),
            (open(topology.dst_ns())?, topology.dst_if(), &config.b_to_a),
        ] {
            let mut args = vec!["qdisc", "replace", "dev", interface, "root", "netem"]
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>();
            args.extend(netem_args(direction));
            tc(&netns, &args)?;
            // Dropping `applied` on a later error removes this one.
            applied.applied.push((netns, interface));
        }
        Ok(applied)
    }

    /// What it was configured with.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Frame bytes both veth ends transmitted so far: what crossed the
    /// link in both directions, as the kernel counts it.
    pub fn transferred_bytes(&self) -> Result<u64, KernelNetemError> {
        let mut total = 0;
        for (netns, interface) in &self.applied {
            total += tx_bytes(netns, interface)?;
        }
        Ok(total)
    }

    /// Removes both qdiscs (the veths go back to their default queue).
    pub fn remove(mut self) -> Result<(), KernelNetemError> {
        self.remove_all()
    }

    fn remove_all(&mut self) -> Result<(), KernelNetemError> {
        let mut first_error = None;
        for (netns, interface) in self.applied.drain(..) {
            let args = ["qdisc", "del", "dev", interface, "root"].map(str::to_owned);
            if let Err(e) = tc(&netns, &args) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for KernelNetem {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            tracing::warn!(error = %e, "removing the netem qdiscs");
        }
    }
}

/// netem's options for one direction: `limit`, `delay` (with jitter),
/// `loss`, `rate`.
pub fn netem_args(direction: &DirectionConfig) -> Vec<String> {
    let mut args = vec!["limit".to_owned(), limit_packets(direction).to_string()];
    args.push("delay".into());
    args.push(micros(direction.delay));
    if !direction.jitter.is_zero() {
        // Without a `distribution`, netem draws jitter uniformly, as the relay does.
        args.push(micros(direction.jitter));
    }
    match direction.loss {
        LossModel::None => {}
        LossModel::Random { p } => {
            args.extend(["loss".into(), "random".into(), percent(p)]);
        }
        LossModel::GilbertElliott {
            p_gb,
            p_bg,
            loss_good,
            loss_bad,
        } => {
            // gemodel p r 1-h 1-k: p = good -> bad, r = bad -> good,
            // 1-h = loss in bad, 1-k = loss in good.
            args.extend(
                ["loss".into(), "gemodel".into()]
                    .into_iter()
                    .chain([p_gb, p_bg, loss_bad, loss_good].map(percent)),
            );
        }
    }
    if let Some(rate) = direction.rate_bps {
        args.extend(["rate".into(), format!("{rate}bit")]);
    }
    args
}

/// Packets netem may hold: the queue's bytes in full-size frames, plus
/// what the delay keeps in flight at the rate.
fn limit_packets(direction: &DirectionConfig) -> u64 {
    let queue = direction.queue_limit_bytes.div_ceil(FULL_FRAME_BYTES);
    let rate = direction.rate_bps.unwrap_or(UNLIMITED_RATE_BPS) as f64;
    let held = (direction.delay + direction.jitter).as_secs_f64();
    let in_flight = (rate / 8.0 * held / FULL_FRAME_BYTES as f64).ceil() as u64;
    (queue + in_flight).clamp(MIN_LIMIT_PACKETS, u64::from(u32::MAX))
}

fn micros(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

fn percent(p: f64) -> String {
    // Enough digits for 1e-6 loss; tc accepts plain decimals.
    let text = format!("{:.6}", p * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// The `tc` binary, where root's PATH may not reach.
fn tc_program() -> &'static str {
    ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc", "/bin/tc"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("tc")
}

fn tc(netns: &NetNs, args: &[String]) -> Result<String, KernelNetemError> {
    run(netns, tc_program(), "tc", args)
}

fn run(
    netns: &NetNs,
    program: &str,
    name: &str,
    args: &[String],
) -> Result<String, KernelNetemError> {
    let command = format!("{name} {}", args.join(" "));
    tracing::debug!(%command, netns = netns.name(), "running");
    let mut cmd: Command = netns.command(program);
    let out = cmd
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| KernelNetemError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(KernelNetemError::Tc {
            command,
            netns: netns.name().to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bytes `interface` transmitted, from `ip -s -j link show` in its namespace
/// (sysfs would show the namespace it was mounted in, not this one).
fn tx_bytes(netns: &NetNs, interface: &str) -> Result<u64, KernelNetemError> {
    let args = ["-s", "-j", "link", "show", "dev", interface].map(str::to_owned);
    let text = run(netns, ip_program(), "ip", &args)?;
    let command = format!("ip {}", args.join(" "));
    let bad = |message: &str| KernelNetemError::Output {
        command: command.clone(),
        message: message.to_owned(),
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    value
        .get(0)
        .and_then(|link| link.get("stats64").or_else(|| link.get("stats")))
        .and_then(|stats| stats.get("tx"))
        .and_then(|tx| tx.get("bytes"))
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| bad("no stats64.tx.bytes in it"))
}

fn ip_program() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("ip")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delay_only_keeps_netems_default_limit_as_a_floor() {
        let args = netem_args(&DirectionConfig::with_delay(ms(5)));
        // 5 ms at 10 Gbit/s is 4129 full frames, plus the 1 MiB queue's 693.
        assert_eq!(args, ["limit", "4822", "delay", "5000us"]);
        let args = netem_args(&DirectionConfig::default());
        assert_eq!(args, ["limit", "1000", "delay", "0us"]);
    }

    #[test]
    fn every_property_maps_to_its_netem_option() {
        let direction = DirectionConfig {
            delay: ms(25),
            jitter: Duration::from_micros(500),
            loss: LossModel::Random { p: 0.015 },
            rate_bps: Some(100_000_000),
            queue_limit_bytes: 150_000,
        };
        let args = netem_args(&direction);
        // 100 queued frames plus 25.5 ms at 100 Mbit/s = 211 in flight.
        assert_eq!(
            args,
            [
                "limit",
                "1000",
                "delay",
                "25000us",
                "500us",
                "loss",
                "random",
                "1.5%",
                "rate",
                "100000000bit"
            ]
        );
        let fast = DirectionConfig {
            delay: ms(200),
            rate_bps: Some(1_000_000_000),
            ..DirectionConfig::default()
        };
        // 200 ms at 1 Gbit/s holds 16,513 full frames.
        assert_eq!(netem_args(&fast)[1], (693 + 16_513).to_string());
    }

    #[test]
    fn gilbert_elliott_maps_onto_gemodel_in_netems_order() {
        let direction = DirectionConfig {
            loss: LossModel::GilbertElliott {
                p_gb: 0.01,
                p_bg: 0.25,
                loss_good: 0.0,
                loss_bad: 0.5,
            },
            ..DirectionConfig::with_delay(ms(1))
        };
        let args = netem_args(&direction);
        assert_eq!(
            &args[4..],
            ["loss", "gemodel", "1%", "25%", "50%", "0%"],
            "{args:?}"
        );
    }

    #[test]
    fn small_probabilities_keep_their_digits() {
        assert_eq!(percent(0.000_001), "0.0001%");
        assert_eq!(percent(0.1), "10%");
        assert_eq!(percent(1.0), "100%");
    }
}
