//! What `/proc` tells about a process: its resident memory (`VmRSS`) and the CPU time it has
//! used, to compute RSS per connection and to see which side of a run was the bottleneck.

use std::fs;
use std::io;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// `VmRSS` of process `pid`, in bytes.
pub fn vm_rss_bytes(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| io::Error::new(e.kind(), format!("/proc/{pid}/status: {e}")))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc status"))
}

/// User plus system CPU time of process `pid` (all its threads).
fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = stat
        .rsplit_once(')')
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))?
        .1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .into_iter()
        .flatten()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// CPU use of this tool and of one other process (server or `limit` writer) over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuUse {
    /// Fraction of one core used by the tool.
    pub tool: f64,
    /// The other process's label and fraction of one core, when its pid is known.
    pub other: Option<(&'static str, f64)>,
}

pub struct CpuMeter {
    started: Instant,
    tool: Duration,
    other: Option<(&'static str, u32, Duration)>,
}

impl CpuMeter {
    pub fn start(other: Option<(&'static str, u32)>) -> io::Result<CpuMeter> {
        Ok(CpuMeter {
            started: Instant::now(),
            tool: cpu_time(std::process::id())?,
            other: match other {
                Some((label, pid)) => Some((label, pid, cpu_time(pid)?)),
                None => None,
            },
        })
    }

    pub fn stop(&self) -> io::Result<CpuUse> {
        let wall = self.started.elapsed().as_secs_f64();
        let share = |before: Duration, after: Duration| (after - before).as_secs_f64() / wall;
        Ok(CpuUse {
            tool: share(self.tool, cpu_time(std::process::id())?),
            other: match self.other {
                Some((label, pid, before)) => Some((label, share(before, cpu_time(pid)?))),
                None => None,
            },
        })
    }
}
