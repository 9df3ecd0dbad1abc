//! What `/proc` tells about a process: its resident memory (`VmRSS`), the CPU time it has used
//! and how often it was preempted: RSS per connection, which side of a run was the
//! bottleneck, and whether other processes on the machine got in the way of a latency figure.

use std::fs;
use std::io;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// `VmRSS` of process `pid`, in bytes.
pub fn vm_rss_bytes(pid: u32) -> io::Result<u64> {
    status_field(pid, "VmRSS:")?
        .strip_suffix("kB")
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "VmRSS is not in kB"))
}

/// Times process `pid` was switched out while it could still run: preempted.
fn preemptions(pid: u32) -> io::Result<u64> {
    status_field(pid, "nonvoluntary_ctxt_switches:")?
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad context switch count"))
}

/// The value of one `Name: value` line of `/proc/<pid>/status`.
fn status_field(pid: u32, name: &str) -> io::Result<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| io::Error::new(e.kind(), format!("/proc/{pid}/status: {e}")))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().to_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {name} in status")))
}

/// The fields of `/proc/<pid>/stat` after the command name: the state first.
fn stat_fields(pid: u32) -> io::Result<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain words.
    let after_name = stat
        .rsplit_once(')')
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))?
        .1;
    Ok(after_name.split_whitespace().map(str::to_owned).collect())
}

/// Whether process `pid` still runs: it exists and is not a zombie waiting to be reaped.
pub fn is_running(pid: u32) -> bool {
    stat_fields(pid).is_ok_and(|fields| fields.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// User plus system CPU time of process `pid` (all its threads).
fn cpu_time(pid: u32) -> io::Result<Duration> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .into_iter()
        .flatten()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// How a process used the CPU over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Share {
    /// Fraction of one core.
    pub busy: f64,
    /// Times it was preempted.
    pub preempted: u64,
}

/// CPU use of this tool and of one other process (server or `limit` writer) over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuUse {
    pub tool: Share,
    /// The other process's label and share, when its pid is known and it has not vanished.
    pub other: Option<(&'static str, Share)>,
}

/// CPU time and preemptions of a process at the start of a run.
struct Mark {
    pid: u32,
    cpu: Duration,
    preempted: u64,
}

impl Mark {
    fn now(pid: u32) -> io::Result<Mark> {
        Ok(Mark {
            pid,
            cpu: cpu_time(pid)?,
            preempted: preemptions(pid)?,
        })
    }

    fn share_since(&self, wall: f64) -> io::Result<Share> {
        Ok(Share {
            busy: (cpu_time(self.pid)? - self.cpu).as_secs_f64() / wall,
            preempted: preemptions(self.pid)? - self.preempted,
        })
    }
}

pub struct CpuMeter {
    started: Instant,
    tool: Mark,
    other: Option<(&'static str, Mark)>,
}

impl CpuMeter {
    pub fn start(other: Option<(&'static str, u32)>) -> io::Result<CpuMeter> {
        Ok(CpuMeter {
            started: Instant::now(),
            tool: Mark::now(std::process::id())?,
            other: match other {
                Some((label, pid)) => Some((label, Mark::now(pid)?)),
                None => None,
            },
        })
    }

    pub fn stop(&self) -> io::Result<CpuUse> {
        let wall = self.started.elapsed().as_secs_f64();
        Ok(CpuUse {
            tool: self.tool.share_since(wall)?,
            // A server that died and was reaped has no share to tell; `chaos` reports its exit.
            other: self
                .other
                .as_ref()
                .and_then(|(label, mark)| Some((*label, mark.share_since(wall).ok()?))),
        })
    }
}
