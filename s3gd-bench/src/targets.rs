//! The issues' performance targets and the reference figures they are set against (the paper's
//! PyTorch + CUDA code and SpikingJelly, measured on the same H200; hand-written PyTorch on the
//! 2-core CPU), printed beside a run's own figures with the ratio and whether each target is met.

/// One measured figure with what it is compared against.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub what: String,
    /// Our figure, in `unit`.
    pub ours: f64,
    pub unit: &'static str,
    /// The reference figure as a range (low, high; equal for a single figure) and what it is.
    pub anchor: Option<(f64, f64, &'static str)>,
    /// The target: at most this many `unit`.
    pub at_most: Option<f64>,
}

impl Check {
    pub fn new(what: impl Into<String>, ours: f64, unit: &'static str) -> Self {
        Self {
            what: what.into(),
            ours,
            unit,
            anchor: None,
            at_most: None,
        }
    }

    /// A single reference figure.
    pub fn against(self, value: f64, source: &'static str) -> Self {
        self.against_range(value, value, source)
    }

    /// A reference given as a range of figures (from several runs).
    pub fn against_range(mut self, low: f64, high: f64, source: &'static str) -> Self {
        self.anchor = Some((low, high, source));
        self
    }

    pub fn at_most(mut self, target: f64) -> Self {
        self.at_most = Some(target);
        self
    }

    /// How many times faster (or smaller) ours is than the reference's low end.
    pub fn ratio(&self) -> Option<f64> {
        self.anchor.map(|(low, _, _)| low / self.ours)
    }

    pub fn met(&self) -> Option<bool> {
        self.at_most.map(|target| self.ours <= target)
    }
}

fn figure(value: f64, unit: &str) -> String {
    let digits = if value >= 100.0 {
        1
    } else if value >= 1.0 {
        2
    } else {
        3
    };
    format!("{value:.digits$} {unit}")
}

/// The checks as a markdown table.
pub fn table(title: &str, checks: &[Check]) -> String {
    let mut out = format!(
        "{title}\n| measure | s3gd | reference | reference / s3gd | target | |\n|---|---|---|---|---|---|\n"
    );
    for c in checks {
        // Reference figures and targets are the issues' own numbers, printed as written.
        let anchor = c.anchor.map_or("-".to_string(), |(low, high, source)| {
            if low == high {
                format!("{low} {} ({source})", c.unit)
            } else {
                format!("{low}-{high} {} ({source})", c.unit)
            }
        });
        let ratio = c.ratio().map_or("-".to_string(), |r| format!("{r:.1}x"));
        let target = c
            .at_most
            .map_or("-".to_string(), |t| format!("<= {t} {}", c.unit));
        let met = match c.met() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {anchor} | {ratio} | {target} | {met} |\n",
            c.what,
            figure(c.ours, c.unit)
        ));
    }
    out
}

/// The paper's code on the H200 (issue 4), Fashion-MNIST shape, N = 200, batch 256, T = 100.
pub const PAPER: &str = "paper's code, H200";
/// SpikingJelly's fused CuPy LIF on the H200, Linear + LIF, B = 16, T = 500, fp32.
pub const SPIKINGJELLY: &str = "SpikingJelly, H200, fp32";
/// The same network written by hand in PyTorch on the 2-core development machine (issue 2).
pub const PYTORCH_CPU: &str = "PyTorch by hand, 2 cores";

/// Issue 4's Linear + LIF targets: (N, fp32 dense, fp32 sparse, TF32 dense, TF32 sparse) in ms.
pub const HARNESS_TARGETS: [(usize, f64, f64, f64, f64); 2] = [
    (4096, 11.5, 6.0, 2.0, 1.2),
    (16384, 175.0, 90.0, 25.0, 13.0),
];

/// SpikingJelly's time for Linear + LIF at width `hidden`, where measured.
pub fn spikingjelly_ms(hidden: usize) -> Option<f64> {
    match hidden {
        4096 => Some(12.1),
        16384 => Some(166.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_verdicts() {
        let met = Check::new("layer-2 sparse backward", 0.08, "ms")
            .against(3.12, PAPER)
            .at_most(0.10);
        assert!((met.ratio().unwrap() - 39.0).abs() < 1e-9);
        assert_eq!(met.met(), Some(true));
        let missed = Check::new("x", 2.7, "ms").at_most(1.0);
        assert_eq!(missed.met(), Some(false));
        assert_eq!(missed.ratio(), None);
        let text = table("t", &[met, missed]);
        assert!(text.contains("| layer-2 sparse backward | 0.080 ms | 3.12 ms (paper's code, H200) | 39.0x | <= 0.1 ms | met |"));
        assert!(text.contains("| x | 2.70 ms | - | - | <= 1 ms | MISSED |"));
        let range = Check::new("epoch", 0.3, "s").against_range(25.0, 28.0, PAPER);
        assert!(table("t", &[range]).contains("25-28 s (paper's code, H200)"));
    }
}
