//! One colour and one marker per implementation, transport, backend...
//!
//! The table is keyed by name, so `uffd` is the same blue circle in every
//! figure of every run. Names not in the table get a colour and marker
//! derived from the name itself (stable across figures and runs, though
//! not chosen by hand). Series named by a numeric parameter (RTT 10 ms,
//! 4 workers) are an ordered quantity, not identities, and use an ordered
//! ramp instead ([`ordinal`]).

/// Marker shapes; all are closed polygons, so each can be drawn filled
/// (first measure of a series) or hollow (second measure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Square,
    TriangleUp,
    TriangleDown,
    Diamond,
    Pentagon,
    Hexagon,
    Star,
}

const ALL_MARKERS: [Marker; 8] = [
    Marker::Circle,
    Marker::Square,
    Marker::TriangleUp,
    Marker::Diamond,
    Marker::TriangleDown,
    Marker::Pentagon,
    Marker::Hexagon,
    Marker::Star,
];

impl Marker {
    /// The outline around (0, 0), in pixels, for a marker of radius `r`.
    pub fn outline(self, r: f64) -> Vec<(i32, i32)> {
        let regular = |n: usize, rot: f64, radius: f64| -> Vec<(f64, f64)> {
            (0..n)
                .map(|i| {
                    let a = rot + i as f64 * std::f64::consts::TAU / n as f64;
                    (radius * a.cos(), radius * a.sin())
                })
                .collect()
        };
        let up = -std::f64::consts::FRAC_PI_2;
        let pts: Vec<(f64, f64)> = match self {
            Marker::Circle => regular(20, 0.0, r),
            Marker::Square => {
                let s = r * 0.85;
                vec![(-s, -s), (s, -s), (s, s), (-s, s)]
            }
            Marker::TriangleUp => regular(3, up, r * 1.2)
                .into_iter()
                .map(|(x, y)| (x, y + r * 0.2))
                .collect(),
            Marker::TriangleDown => regular(3, -up, r * 1.2)
                .into_iter()
                .map(|(x, y)| (x, y - r * 0.2))
                .collect(),
            Marker::Diamond => vec![(0.0, -r * 1.2), (r, 0.0), (0.0, r * 1.2), (-r, 0.0)],
            Marker::Pentagon => regular(5, up, r * 1.05),
            Marker::Hexagon => regular(6, 0.0, r * 1.05),
            Marker::Star => (0..10)
                .map(|i| {
                    let radius = if i % 2 == 0 { r * 1.3 } else { r * 0.55 };
                    let a = up + i as f64 * std::f64::consts::TAU / 10.0;
                    (radius * a.cos(), radius * a.sin())
                })
                .collect(),
        };
        pts.into_iter()
            .map(|(x, y)| (x.round() as i32, y.round() as i32))
            .collect()
    }
}

/// How one named thing is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub rgb: (u8, u8, u8),
    pub marker: Marker,
}

/// (name, colour, marker). Families (implementations, transports,
/// backends, heuristics, emulators) never share a figure, but their
/// colours are kept apart where it was cheap to.
const TABLE: &[(&str, (u8, u8, u8), Marker)] = &[
    // Implementations.
    ("baseline", (0x33, 0x33, 0x33), Marker::Square),
    ("uffd", (0x1f, 0x77, 0xb4), Marker::Circle),
    ("uffd-wp", (0x17, 0xa2, 0xb8), Marker::TriangleDown),
    ("hashsync", (0x8c, 0x56, 0x4b), Marker::Hexagon),
    ("fuse", (0xe3, 0x77, 0xc2), Marker::Pentagon),
    ("nbd-direct", (0x9a, 0x9b, 0x1a), Marker::Square),
    ("mount-direct", (0xff, 0x7f, 0x0e), Marker::TriangleUp),
    ("mount-managed", (0x2c, 0xa0, 0x2c), Marker::Diamond),
    ("migration", (0xd6, 0x27, 0x28), Marker::Star),
    ("stop-and-copy", (0x7f, 0x7f, 0x7f), Marker::TriangleDown),
    ("precopy-iterative", (0x94, 0x67, 0xbd), Marker::Pentagon),
    // Transports.
    ("jsonl", (0xd6, 0x27, 0x28), Marker::Square),
    ("grpc", (0x2c, 0xa0, 0x2c), Marker::TriangleUp),
    ("frpc", (0x1f, 0x77, 0xb4), Marker::Circle),
    ("tarpc", (0x94, 0x67, 0xbd), Marker::Diamond),
    // Link emulators.
    ("userspace-link", (0x1f, 0x77, 0xb4), Marker::Circle),
    ("kernel-netem", (0xff, 0x7f, 0x0e), Marker::Square),
    ("inproc", (0x2c, 0xa0, 0x2c), Marker::Diamond),
    ("per-call", (0x8c, 0x56, 0x4b), Marker::TriangleUp),
    // Backends.
    ("memory", (0x33, 0x33, 0x33), Marker::Square),
    ("file", (0x8c, 0x56, 0x4b), Marker::Circle),
    ("directory", (0xbc, 0x80, 0x00), Marker::TriangleUp),
    ("redis", (0xd6, 0x27, 0x28), Marker::Diamond),
    ("s3", (0x17, 0xa2, 0xb8), Marker::Pentagon),
    // Pull heuristics and chunking sides.
    ("right", (0x2c, 0xa0, 0x2c), Marker::Circle),
    ("inverted", (0xd6, 0x27, 0x28), Marker::Square),
    ("client", (0xff, 0x7f, 0x0e), Marker::TriangleUp),
    ("server", (0x1f, 0x77, 0xb4), Marker::Circle),
];

/// Colours for names not in the table, picked by a hash of the name.
const FALLBACK: &[(u8, u8, u8)] = &[
    (0x00, 0x72, 0xb2),
    (0xe6, 0x9f, 0x00),
    (0x00, 0x9e, 0x73),
    (0xcc, 0x79, 0xa7),
    (0x56, 0xb4, 0xe9),
    (0xd5, 0x5e, 0x00),
    (0x6a, 0x3d, 0x9a),
    (0x66, 0x66, 0x66),
];

/// FNV-1a: stable across runs and Rust versions, unlike `DefaultHasher`.
fn stable_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The style of a named implementation, transport, backend, ...
pub fn style_for(name: &str) -> Style {
    if let Some((_, rgb, marker)) = TABLE.iter().find(|(n, _, _)| *n == name) {
        return Style {
            rgb: *rgb,
            marker: *marker,
        };
    }
    let h = stable_hash(name);
    Style {
        rgb: FALLBACK[(h % FALLBACK.len() as u64) as usize],
        marker: ALL_MARKERS[((h / 7) % ALL_MARKERS.len() as u64) as usize],
    }
}

/// The style of the `index`-th of `count` values of an ordered parameter:
/// light to dark blue-green-yellow, so order reads off the colour.
pub fn ordinal(index: usize, count: usize) -> Style {
    // A viridis-like ramp, sampled; dark enough at the yellow end to read
    // on white.
    const RAMP: &[(u8, u8, u8)] = &[
        (0x44, 0x01, 0x54),
        (0x3b, 0x52, 0x8b),
        (0x21, 0x90, 0x8d),
        (0x5d, 0xc8, 0x63),
        (0xb5, 0xa3, 0x00),
    ];
    let t = if count <= 1 {
        0.0
    } else {
        index as f64 / (count - 1) as f64
    };
    let pos = t * (RAMP.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    let a = RAMP[i.min(RAMP.len() - 1)];
    let b = RAMP[(i + 1).min(RAMP.len() - 1)];
    let mix = |x: u8, y: u8| (f64::from(x) + (f64::from(y) - f64::from(x)) * frac).round() as u8;
    Style {
        rgb: (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2)),
        marker: ALL_MARKERS[index % ALL_MARKERS.len()],
    }
}

/// How a series drawn as a horizontal reference line (it has no value on
/// the figure's x axis) is labelled.
pub fn reference_label(name: &str, x_param: &str) -> String {
    match name {
        "baseline" => "baseline (local memory)".into(),
        other => format!("{other} (no {x_param} axis)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_keep_their_table_style() {
        assert_eq!(
            style_for("uffd"),
            Style {
                rgb: (0x1f, 0x77, 0xb4),
                marker: Marker::Circle
            }
        );
        assert_eq!(style_for("baseline").marker, Marker::Square);
    }

    #[test]
    fn implementations_are_distinct() {
        let names = [
            "baseline",
            "uffd",
            "uffd-wp",
            "hashsync",
            "fuse",
            "nbd-direct",
            "mount-direct",
            "mount-managed",
            "migration",
            "stop-and-copy",
            "precopy-iterative",
        ];
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(style_for(a), style_for(b), "{a} and {b} look alike");
            }
        }
    }

    #[test]
    fn unknown_names_are_stable() {
        assert_eq!(style_for("blake3"), style_for("blake3"));
    }

    #[test]
    fn markers_are_closed_polygons_of_sensible_size() {
        for m in ALL_MARKERS {
            let o = m.outline(5.0);
            assert!(o.len() >= 3, "{m:?}");
            assert!(
                o.iter().all(|(x, y)| x.abs() <= 7 && y.abs() <= 7),
                "{m:?}: {o:?}"
            );
        }
    }

    #[test]
    fn ordinal_ramp_runs_from_first_to_last_colour() {
        assert_eq!(ordinal(0, 3).rgb, (0x44, 0x01, 0x54));
        assert_eq!(ordinal(2, 3).rgb, (0xb5, 0xa3, 0x00));
        assert_eq!(ordinal(0, 1).rgb, (0x44, 0x01, 0x54));
    }
}
