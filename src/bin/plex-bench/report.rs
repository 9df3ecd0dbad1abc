//! The figures of a run, how they print, and the median of several runs.

use std::fmt;

use crate::proc::{CpuUse, Share};

/// Latency percentiles, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    /// The percentiles of `samples` (sorted in place); `None` when there are none.
    pub fn of(samples: &mut [u64]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Some(Latency {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
        })
    }
}

/// What one side of a run (the limit, or the traffic through the server) achieved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// Deliveries expected and received.
    pub expected: u64,
    pub received: u64,
    /// Deliveries per second, from the first send to the last receive.
    pub rate: f64,
    pub latency: Option<Latency>,
    /// User connections the other end closed during the run.
    pub closed: usize,
    pub cpu: CpuUse,
    /// What the sender learnt on its side (HTTP answers), if anything.
    pub note: Option<String>,
}

impl Figures {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }
}

/// One run: the limit and, except for the `limit` command, the same traffic through the server.
pub struct Run {
    pub limit: Figures,
    pub target: Option<Figures>,
}

impl Run {
    /// The server's rate as a fraction of the limit measured in the same run.
    pub fn fraction(&self) -> Option<f64> {
        self.target.as_ref().map(|t| t.rate / self.limit.rate)
    }

    /// The median of each figure over `runs` (the fraction is the median of the per-run
    /// fractions, so it always compares figures of one run).
    pub fn median(runs: &[Run]) -> Summary {
        let limits: Vec<&Figures> = runs.iter().map(|r| &r.limit).collect();
        let targets: Vec<&Figures> = runs.iter().filter_map(|r| r.target.as_ref()).collect();
        Summary {
            limit: median_figures(&limits),
            target: (!targets.is_empty()).then(|| median_figures(&targets)),
            fraction: median(runs.iter().filter_map(Run::fraction)),
        }
    }
}

/// Medians of several runs.
pub struct Summary {
    limit: Figures,
    target: Option<Figures>,
    fraction: Option<f64>,
}

fn median<T: PartialOrd + Copy>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut values: Vec<T> = values.collect();
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values.get(values.len() / 2).copied()
}

fn median_figures(runs: &[&Figures]) -> Figures {
    let m = |f: fn(&Figures) -> u64| median(runs.iter().map(|r| f(r))).unwrap_or(0);
    let latencies: Vec<Latency> = runs.iter().filter_map(|r| r.latency).collect();
    let lat = |f: fn(&Latency) -> u64| median(latencies.iter().map(f)).unwrap_or(0);
    let share = |f: fn(&CpuUse) -> Option<Share>| {
        let shares: Vec<Share> = runs.iter().filter_map(|r| f(&r.cpu)).collect();
        Some(Share {
            busy: median(shares.iter().map(|s| s.busy))?,
            preempted: median(shares.iter().map(|s| s.preempted))?,
        })
    };
    Figures {
        expected: m(|f| f.expected),
        received: m(|f| f.received),
        rate: median(runs.iter().map(|r| r.rate)).unwrap_or(0.0),
        latency: (!latencies.is_empty()).then(|| Latency {
            p50: lat(|l| l.p50),
            p99: lat(|l| l.p99),
            p999: lat(|l| l.p999),
            max: lat(|l| l.max),
        }),
        closed: m(|f| f.closed as u64) as usize,
        cpu: CpuUse {
            tool: share(|c| Some(c.tool)).unwrap_or_default(),
            other: runs[0]
                .cpu
                .other
                .and_then(|(label, _)| Some((label, share(|c| c.other.map(|o| o.1))?))),
        },
        note: None,
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} msgs/s, lost {}", thousands(self.rate), self.lost())?;
        if self.closed > 0 {
            write!(f, " ({} users closed)", self.closed)?;
        }
        if let Some(l) = self.latency {
            write!(
                f,
                ", latency p50 {} p99 {} p999 {} max {}",
                ms(l.p50),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            )?;
        }
        write!(f, "; cpu tool {}", self.cpu.tool)?;
        if let Some((label, share)) = self.cpu.other {
            write!(f, ", {label} {share}")?;
        }
        if let Some(note) = &self.note {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0}% (preempted {}x)",
            self.busy * 100.0,
            self.preempted
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\n  limit:  {}", self.limit)?;
        if let Some(target) = &self.target {
            write!(f, "\n  server: {target}")?;
        }
        if let Some(fraction) = self.fraction {
            write!(f, "\n  server/limit: {fraction:.2}")?;
        }
        Ok(())
    }
}

/// Nanoseconds as milliseconds with microsecond precision.
fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

/// A rate rounded to an integer, with thousands separators.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_thousand_samples() {
        let mut samples: Vec<u64> = (1..=1000).rev().collect();
        let l = Latency::of(&mut samples).unwrap();
        assert_eq!((l.p50, l.p99, l.p999, l.max), (501, 990, 999, 1000));
        assert_eq!(Latency::of(&mut []), None);
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median(std::iter::empty::<u64>()), None);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
