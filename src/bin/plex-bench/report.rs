//! The figures of a run, the median of several runs, and how they print: a table with a row
//! for each side (limit, server) of every run, then the medians, so that every run shows.

use std::fmt;

use crate::proc::{CpuUse, Share};

/// Latency percentiles, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
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
            p90: at(0.90),
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
    /// Mean bytes of the frames that carried them, framing included (TLS records not).
    pub frame_bytes: Option<f64>,
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

/// One run: the limit (`push`, `broadcast`, `limit`) and the traffic through the server (all
/// but `limit`).
pub struct Run {
    pub limit: Option<Figures>,
    pub target: Option<Figures>,
}

impl Run {
    /// The server's rate as a fraction of the limit measured in the same run.
    pub fn fraction(&self) -> Option<f64> {
        Some(self.target.as_ref()?.rate / self.limit.as_ref()?.rate)
    }

    /// The run's rows of the table, labelled `label` (its number).
    pub fn rows(&self, label: &str) -> Vec<String> {
        rows(
            label,
            self.limit.as_ref(),
            self.target.as_ref(),
            self.fraction(),
        )
    }

    /// The median of each figure over `runs` (the fraction is the median of the per-run
    /// fractions, so it always compares figures of one run).
    pub fn median(runs: &[Run]) -> Summary {
        let limits: Vec<&Figures> = runs.iter().filter_map(|r| r.limit.as_ref()).collect();
        let targets: Vec<&Figures> = runs.iter().filter_map(|r| r.target.as_ref()).collect();
        Summary {
            limit: (!limits.is_empty()).then(|| median_figures(&limits)),
            target: (!targets.is_empty()).then(|| median_figures(&targets)),
            fraction: median(runs.iter().filter_map(Run::fraction)),
        }
    }
}

/// Medians of several runs.
pub struct Summary {
    limit: Option<Figures>,
    target: Option<Figures>,
    fraction: Option<f64>,
}

impl Summary {
    /// The rows of the medians, labelled `median`.
    pub fn rows(&self) -> Vec<String> {
        rows(
            "median",
            self.limit.as_ref(),
            self.target.as_ref(),
            self.fraction,
        )
    }
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
        frame_bytes: median(runs.iter().filter_map(|r| r.frame_bytes)),
        latency: (!latencies.is_empty()).then(|| Latency {
            p50: lat(|l| l.p50),
            p90: lat(|l| l.p90),
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

/// Which clock latency counts from, for the line above the figures.
pub fn latency_clock(at_rate: bool) -> &'static str {
    if at_rate {
        "latency: from the time each message was due (start + i / rate) to its arrival, so a \
         stall counts for every message due during it"
    } else {
        "latency: from the moment each message was written to its arrival (flat out there is \
         no schedule, and the latency is only the window over the rate)"
    }
}

/// The head of the table whose rows `Run::rows` and `Summary::rows` print.
pub fn table_head() -> String {
    line(
        [
            "run", "side", "msgs/s", "B/frame", "lost", "closed", "p50 ms", "p90 ms", "p99 ms",
            "p999 ms", "max ms",
        ],
        "cpu",
    )
}

/// One line of the table: the cells in their columns, then free text.
fn line(cells: [&str; 11], tail: &str) -> String {
    let [
        run,
        side,
        rate,
        bytes,
        lost,
        closed,
        p50,
        p90,
        p99,
        p999,
        max,
    ] = cells;
    format!(
        "{run:>6}  {side:<6}  {rate:>9}  {bytes:>7}  {lost:>7}  {closed:>6}  \
         {p50:>8}  {p90:>8}  {p99:>8}  {p999:>8}  {max:>9}  {tail}"
    )
}

/// The limit's row, the server's row (with the fraction), and the server's note if any.
fn rows(
    label: &str,
    limit: Option<&Figures>,
    target: Option<&Figures>,
    fraction: Option<f64>,
) -> Vec<String> {
    let mut rows = Vec::new();
    if let Some(limit) = limit {
        rows.push(row(label, "limit", limit, None));
    }
    if let Some(target) = target {
        rows.push(row(label, "server", target, fraction));
        if let Some(note) = &target.note {
            rows.push(format!("{:>8}{note}", ""));
        }
    }
    rows
}

fn row(label: &str, side: &str, f: &Figures, fraction: Option<f64>) -> String {
    let latency = |pick: fn(&Latency) -> u64| match &f.latency {
        Some(l) => format!("{:.3}", pick(l) as f64 / 1e6),
        None => "-".to_owned(),
    };
    let mut tail = format!("tool {}", f.cpu.tool);
    if let Some((label, share)) = f.cpu.other {
        tail.push_str(&format!(", {label} {share}"));
    }
    if let Some(fraction) = fraction {
        tail.push_str(&format!("; server/limit {fraction:.2}"));
    }
    line(
        [
            label,
            side,
            &thousands(f.rate),
            &f.frame_bytes.map_or("-".to_owned(), |b| format!("{b:.1}")),
            &f.lost().to_string(),
            &f.closed.to_string(),
            &latency(|l| l.p50),
            &latency(|l| l.p90),
            &latency(|l| l.p99),
            &latency(|l| l.p999),
            &latency(|l| l.max),
        ],
        &tail,
    )
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {}, p90 {}, p99 {}, p999 {}, max {}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        )
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

/// Nanoseconds as milliseconds with microsecond precision.
fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

/// A rate rounded to an integer, with thousands separators.
pub fn thousands(x: f64) -> String {
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
        assert_eq!(
            (l.p50, l.p90, l.p99, l.p999, l.max),
            (501, 900, 990, 999, 1000)
        );
        assert_eq!(Latency::of(&mut []), None);
    }

    fn figures(rate: f64, p99_ms: u64) -> Figures {
        Figures {
            expected: 100,
            received: 99,
            rate,
            frame_bytes: Some(rate / 10.0),
            latency: Some(Latency {
                p50: 100_000,
                p90: 200_000,
                p99: p99_ms * 1_000_000,
                p999: p99_ms * 2_000_000,
                max: p99_ms * 3_000_000,
            }),
            ..Figures::default()
        }
    }

    #[test]
    fn every_run_has_its_rows_then_the_medians_follow() {
        let runs = [(1000.0, 900.0, 5), (3000.0, 600.0, 1), (2000.0, 1400.0, 3)].map(
            |(limit, server, p99_ms)| Run {
                limit: Some(figures(limit, 0)),
                target: Some(figures(server, p99_ms)),
            },
        );
        let mut lines = vec![table_head()];
        for (i, run) in runs.iter().enumerate() {
            lines.extend(run.rows(&(i + 1).to_string()));
        }
        lines.extend(Run::median(&runs).rows());
        let cells = |line: &str| -> Vec<String> {
            let cut = line.find("tool").unwrap_or(line.len());
            line[..cut].split_whitespace().map(str::to_owned).collect()
        };
        let expect = [
            "run side msgs/s B/frame lost closed p50 ms p90 ms p99 ms p999 ms max ms cpu",
            "1 limit 1,000 100.0 1 0 0.100 0.200 0.000 0.000 0.000",
            "1 server 900 90.0 1 0 0.100 0.200 5.000 10.000 15.000",
            "2 limit 3,000 300.0 1 0 0.100 0.200 0.000 0.000 0.000",
            "2 server 600 60.0 1 0 0.100 0.200 1.000 2.000 3.000",
            "3 limit 2,000 200.0 1 0 0.100 0.200 0.000 0.000 0.000",
            "3 server 1,400 140.0 1 0 0.100 0.200 3.000 6.000 9.000",
            "median limit 2,000 200.0 1 0 0.100 0.200 0.000 0.000 0.000",
            "median server 900 90.0 1 0 0.100 0.200 3.000 6.000 9.000",
        ];
        assert_eq!(lines.len(), expect.len());
        for (line, expect) in lines.iter().zip(expect) {
            assert_eq!(cells(line).join(" "), expect, "{line}");
        }
        // A server row compares with the limit of its own run; the median row gives the
        // median of those fractions (0.9, 0.2, 0.7), not 900 / 2,000.
        assert!(lines[2].ends_with("; server/limit 0.90"), "{}", lines[2]);
        assert!(lines[4].ends_with("; server/limit 0.20"), "{}", lines[4]);
        assert!(lines[8].ends_with("; server/limit 0.70"), "{}", lines[8]);
        // The columns line up under the head.
        let cpu = lines[0].find("cpu").unwrap();
        assert!(lines[1..].iter().all(|l| l.find("tool") == Some(cpu)));
    }

    #[test]
    fn a_run_without_a_limit_or_a_server_has_only_the_other_row() {
        let limit_only = Run {
            limit: Some(figures(1000.0, 1)),
            target: None,
        };
        let rows = limit_only.rows("1");
        assert_eq!(rows.len(), 1);
        assert!(rows[0].contains("1  limit") && !rows[0].contains("server/limit"));
        let mut server = figures(500.0, 1);
        server.note = Some("HTTP: 99 answers 200".to_owned());
        let server_only = Run {
            limit: None,
            target: Some(server),
        };
        let rows = server_only.rows("2");
        assert_eq!(rows.len(), 2);
        assert!(rows[0].starts_with("     2  server"), "{}", rows[0]);
        assert_eq!(rows[1].trim(), "HTTP: 99 answers 200");
        // A note belongs to its run: the medians have none.
        let rows = Run::median(&[server_only]).rows();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].starts_with("median  server"), "{}", rows[0]);
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median(std::iter::empty::<u64>()), None);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
