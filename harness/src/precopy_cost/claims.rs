//! The claim check: how each tracker's cost grows with the region and
//! with the dirty pages, and where hashing and write-protect cross.

use results::SummaryRow;

use super::Point;

fn cost(r: &SummaryRow) -> Option<f64> {
    r.other_medians.get("precopy_cycle_ms").copied()
}

fn total(r: &SummaryRow) -> Option<f64> {
    Some(cost(r)? + r.other_medians.get("write_ms")?)
}

fn region(r: &SummaryRow) -> Option<f64> {
    r.params.get("region_mib")?.as_f64()
}

fn dirty(r: &SummaryRow) -> Option<f64> {
    r.params.get("dirty_fraction")?.as_f64()
}

/// (x, cost) of `implementation`'s cells along one axis, the other held
/// at the base, ascending in x.
fn series(
    rows: &[SummaryRow],
    implementation: &str,
    along_region: bool,
    base: &Point,
    value: fn(&SummaryRow) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.implementation == implementation && r.ok > 0)
        .filter(|r| {
            if along_region {
                dirty(r).is_some_and(|d| d.to_bits() == base.dirty_fraction.to_bits())
            } else {
                region(r) == Some(base.region_mib as f64)
            }
        })
        .filter_map(|r| {
            let x = if along_region { region(r)? } else { dirty(r)? };
            Some((x, value(r)?))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The exponent k of cost ~ x^k between the smallest and largest x: 1 is
/// proportional, 0 is flat.
fn elasticity(s: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let (&(x0, c0), &(x1, c1)) = (s.first()?, s.last()?);
    if s.len() < 2 || x0 <= 0.0 || c0 <= 0.0 || c1 <= 0.0 {
        return None;
    }
    Some((x1 / x0, c1 / c0, (c1 / c0).ln() / (x1 / x0).ln()))
}

/// Where `b`'s cost crosses `a`'s along the dirty-fraction series
/// (log-log interpolation), as text.
fn crossover(a: &[(f64, f64)], b: &[(f64, f64)], names: (&str, &str)) -> Option<String> {
    let pairs: Vec<(f64, f64)> = a
        .iter()
        .filter_map(|&(x, ca)| {
            let &(_, cb) = b.iter().find(|(xb, _)| xb.to_bits() == x.to_bits())?;
            (ca > 0.0 && cb > 0.0).then(|| (x, (cb / ca).ln()))
        })
        .collect();
    let (first, last) = (pairs.first()?, pairs.last()?);
    for w in pairs.windows(2) {
        let ((x0, g0), (x1, g1)) = (w[0], w[1]);
        if g0 == 0.0 {
            return Some(format!("at {} %", x0 * 100.0));
        }
        if g0.signum() != g1.signum() {
            let lx = x0.ln() + (0.0 - g0) * (x1.ln() - x0.ln()) / (g1 - g0);
            return Some(format!(
                "near {:.3} % (between {} % and {} %)",
                lx.exp() * 100.0,
                x0 * 100.0,
                x1 * 100.0
            ));
        }
    }
    Some(format!(
        "none between {} % and {} %: {} costs {:.4}x to {:.4}x of {}",
        first.0 * 100.0,
        last.0 * 100.0,
        names.1,
        first.1.exp(),
        last.1.exp(),
        names.0
    ))
}

/// Lines for the end of a run: per implementation, cost growth along each
/// axis; then, per algorithm, where write-protect and hashing cross as the
/// dirty fraction grows at the base region.
pub fn claim_lines(rows: &[SummaryRow], base: &Point) -> Vec<String> {
    let mut names: Vec<&str> = Vec::new();
    for r in rows {
        if !names.contains(&r.implementation.as_str()) {
            names.push(&r.implementation);
        }
    }
    let mut lines = vec![format!(
        "claim check (cost = the tracker's step per cycle; k in cost ~ x^k: 1 proportional, 0 flat; region axis at {} % dirty, so dirty pages grow with the region there; dirty axis at {} MiB):",
        base.dirty_fraction * 100.0,
        base.region_mib
    )];
    for name in &names {
        let by_region = elasticity(&series(rows, name, true, base, cost));
        let by_dirty = elasticity(&series(rows, name, false, base, cost));
        let text = |e: Option<(f64, f64, f64)>, what: &str| {
            e.map_or_else(
                || format!("{what}: not measured"),
                |(xr, cr, k)| format!("{what} x{xr:.0} -> cost x{cr:.2} (k = {k:.2})"),
            )
        };
        lines.push(format!(
            "  {name}: {}; {}",
            text(by_region, "region"),
            text(by_dirty, "dirty pages")
        ));
    }
    for wp in ["uffd-wp", "uffd-wp-sync"] {
        if !names.contains(&wp) {
            continue;
        }
        for name in names.iter().filter(|n| n.starts_with("hashsync-")) {
            let step = crossover(
                &series(rows, name, false, base, cost),
                &series(rows, wp, false, base, cost),
                (name, wp),
            );
            let with_writes = crossover(
                &series(rows, name, false, base, total),
                &series(rows, wp, false, base, total),
                (name, wp),
            );
            if let (Some(step), Some(with_writes)) = (step, with_writes) {
                lines.push(format!(
                    "  crossover {wp} vs {name} at {} MiB: tracker step {step}; step + app writes {with_writes}",
                    base.region_mib
                ));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn row(implementation: &str, region: u64, dirty: f64, ms: f64) -> SummaryRow {
        SummaryRow {
            cell_id: format!("x/{implementation}/{region}/{dirty}"),
            scenario: "x".into(),
            implementation: implementation.into(),
            transport: None,
            emulation: "none".into(),
            params: BTreeMap::from([
                ("region_mib".to_owned(), serde_json::json!(region)),
                ("dirty_fraction".to_owned(), serde_json::json!(dirty)),
            ]),
            repetitions: 1,
            ok: 1,
            truncated: 0,
            skipped: 0,
            failed: 0,
            integrity: Some(true),
            reason: None,
            medians: BTreeMap::new(),
            other_medians: BTreeMap::from([
                ("precopy_cycle_ms".to_owned(), ms),
                ("write_ms".to_owned(), 0.0),
            ]),
        }
    }

    #[test]
    fn growth_exponents_and_the_crossover_come_from_the_rows() {
        let base = Point {
            region_mib: 1024,
            dirty_fraction: 0.01,
        };
        let rows = [
            // Hashing: proportional to the region, flat in dirty pages.
            row("hashsync-crc32", 64, 0.01, 10.0),
            row("hashsync-crc32", 1024, 0.01, 160.0),
            row("hashsync-crc32", 1024, 0.0001, 160.0),
            row("hashsync-crc32", 1024, 0.5, 160.0),
            // Write-protect: proportional to dirty pages.
            row("uffd-wp", 64, 0.01, 1.0),
            row("uffd-wp", 1024, 0.01, 16.0),
            row("uffd-wp", 1024, 0.0001, 0.16),
            row("uffd-wp", 1024, 0.5, 800.0),
        ];
        let lines = claim_lines(&rows, &base);
        assert!(
            lines[1].contains("hashsync-crc32: region x16 -> cost x16.00 (k = 1.00)"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("dirty pages x5000 -> cost x1.00 (k = 0.00)"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("uffd-wp: region x16 -> cost x16.00"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("dirty pages x5000 -> cost x5000.00 (k = 1.00)"),
            "{lines:?}"
        );
        // 16 ms at 1 %, 800 ms at 50 %: equal to 160 ms at 10 %.
        assert!(
            lines[3].contains("near 10.000 % (between 1 % and 50 %)"),
            "{lines:?}"
        );
        // Without a crossing, the ends are named.
        let flat = crossover(
            &[(0.1, 1.0), (0.5, 1.0)],
            &[(0.1, 0.5), (0.5, 0.25)],
            ("a", "b"),
        )
        .unwrap();
        assert_eq!(
            flat,
            "none between 10 % and 50 %: b costs 0.5000x to 0.2500x of a"
        );
    }
}
