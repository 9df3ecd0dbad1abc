//! `chaos`: the service good users get while others misbehave. N good users, read by the one
//! poll loop as in every other mode, receive pushes at a fixed rate over one inner connection,
//! their latency counted from when each push was due; meanwhile the attackers (see `attack`)
//! churn, reset, half-close, stall, send oversized headers and garbage, and flood heartbeats
//! without reading, against the same server. A server that dies or drops the good users is a
//! result, not a hang: the run ends, and the report says what was lost and that it exited.

use std::io;
use std::time::{Duration, Instant};

use mio::event::Event;

use crate::attack::{Attack, Kind, Tally, Target};
use crate::fleet::{Driver, Fleet, STALL};
use crate::pusher::Pusher;
use crate::report::{self, Run};
use crate::{Options, proc};

/// How often the server's pid is looked up to notice that it exited.
const EXIT_CHECK: Duration = Duration::from_millis(100);
/// After the server exited, how long the users may take to read what it had sent them; and
/// after it closed every good connection, how long it may take to exit (a panicking server
/// closes its sockets while it unwinds, and only then exits).
const DRAIN: Duration = Duration::from_secs(1);

pub fn run(o: &Options) -> io::Result<()> {
    let rate = o.rate.expect("chaos has a default rate");
    println!(
        "chaos: {} good users, {rate} pushes/s round-robin over one inner connection for {} s, \
         {}-byte bodies",
        o.conns, o.seconds, o.body_bytes
    );
    println!("good users speak {} to {}", o.speech(), o.users());
    println!("attackers, each kind on its own thread: {}", o.attack);
    println!("{}", report::latency_clock(true));
    let mut runs = Vec::new();
    for i in 1..=o.runs {
        if o.runs > 1 {
            println!("run {i}:");
        }
        let (figures, exited) = one_run(o, rate)?;
        runs.push(Run {
            limit: None,
            target: Some(figures),
        });
        if exited {
            if i < o.runs {
                println!("the server exited: no further runs");
            }
            break;
        }
    }
    println!("good pushes, every run:\n{}", report::table_head());
    for (i, run) in runs.iter().enumerate() {
        for row in run.rows(&(i + 1).to_string()) {
            println!("{row}");
        }
    }
    if runs.len() > 1 {
        for row in Run::median(&runs).rows() {
            println!("{row}");
        }
    }
    Ok(())
}

/// One run; returns the good pushes' figures and whether the server exited.
fn one_run(o: &Options, rate: f64) -> io::Result<(report::Figures, bool)> {
    let pid = o.server_pid;
    let rss = || pid.and_then(|pid| proc::vm_rss_bytes(pid).ok());
    let rss_before = rss();
    let (mut fleet, _) = Fleet::connect(o.fleet())?;
    let rss_users = rss();
    let total = (rate * o.seconds as f64) as u64;
    let mut pusher = Guarded {
        pusher: o.steady_pusher(rate, total, fleet.registry())?,
        failure: None,
    };
    let target = Target {
        address: o.server(),
        order: o.order,
        max_frame: o.max_frame,
    };
    fleet.expect(total);
    let cpu = proc::CpuMeter::start(pid.map(|pid| ("server", pid)))?;
    let attack = Attack::start(target, &o.attack)?;
    println!("  time   VmRSS KiB   users open   pushes sent    received   attack ops   heartbeats");

    let start = Instant::now();
    let sample = o.sample.unwrap_or(Duration::from_secs(5));
    let (mut next_sample, mut next_check) = (start, start);
    let mut rss_max = rss_users;
    let mut exited: Option<Duration> = None;
    let mut progress = ((0, 0), start);
    loop {
        let now = Instant::now();
        if now >= next_check {
            if let Some(pid) = pid.filter(|_| exited.is_none())
                && !proc::is_running(pid)
            {
                let at = now - start;
                exited = Some(at);
                println!(
                    "{:>6.1} s   the server exited (pid {pid})",
                    at.as_secs_f64()
                );
            }
            next_check = now + EXIT_CHECK;
        }
        if now >= next_sample {
            let rss = rss();
            rss_max = rss_max.max(rss);
            let tallies = attack.tallies();
            let sum = |flood: bool| -> u64 {
                let of_kind = |t: &&Tally| (t.kind == Kind::Flood) == flood;
                tallies.iter().filter(of_kind).map(|t| t.done).sum()
            };
            println!(
                "{:>4.0} s   {:>9}   {:>10}   {:>11}   {:>9}   {:>10}   {:>10}",
                now.duration_since(start).as_secs_f64(),
                rss.map_or("-".to_owned(), |b| (b / 1024).to_string()),
                o.conns.saturating_sub(fleet.closed_by_server()),
                pusher.sent(),
                fleet.received(),
                sum(false),
                sum(true)
            );
            next_sample += sample;
        }
        let state = (fleet.received(), pusher.sent());
        if state != progress.0 {
            progress = (state, now);
        }
        // Nothing more can arrive once the server and every good user are gone.
        let all_gone =
            (exited.is_some() || pusher.failure.is_some()) && fleet.closed_by_server() == o.conns;
        if fleet.received() >= total
            || all_gone
            || exited.is_some_and(|at| now - start > at + DRAIN)
            || now - progress.1 > STALL
        {
            break;
        }
        fleet.step(&mut pusher, next_sample.min(next_check))?;
    }
    let took = start.elapsed();
    if let Some(pid) = pid.filter(|_| exited.is_none() && fleet.closed_by_server() == o.conns) {
        let deadline = Instant::now() + DRAIN;
        while proc::is_running(pid) && Instant::now() < deadline {
            std::thread::sleep(EXIT_CHECK / 10);
        }
        if !proc::is_running(pid) {
            exited = Some(start.elapsed());
        }
    }
    let tallies = attack.stop();
    let rss_end = rss();
    let mut figures = fleet.figures(total);
    figures.cpu = cpu.stop()?;

    println!(
        "good pushes: {} due, {} sent, {} received, {} lost; {} of {} good users closed by the \
         server; {:.1} s",
        total,
        pusher.sent(),
        figures.received,
        figures.lost(),
        fleet.closed_by_server(),
        o.conns,
        took.as_secs_f64()
    );
    match figures.latency {
        Some(latency) => println!("latency of good pushes, from when each was due: {latency}"),
        None => println!("latency of good pushes: none arrived"),
    }
    if let Some((at, e)) = &pusher.failure {
        println!(
            "push connection lost at {:.1} s: {e}",
            at.duration_since(start).as_secs_f64()
        );
    }
    match (pid, exited) {
        (Some(pid), Some(at)) => println!(
            "server: EXITED (pid {pid} gone {:.1} s into the run)",
            at.as_secs_f64()
        ),
        (Some(_), None) => {
            let kib = |b: Option<u64>| b.map_or("-".to_owned(), |b| (b / 1024).to_string());
            let cpu = figures
                .cpu
                .other
                .map_or("-".to_owned(), |(_, s)| s.to_string());
            println!(
                "server: cpu {cpu}; VmRSS KiB {} before the good users, {} with them, {} at \
                 most (sampled), {} at the end",
                kib(rss_before),
                kib(rss_users),
                kib(rss_max),
                kib(rss_end)
            );
        }
        (None, _) if fleet.closed_by_server() == o.conns => {
            println!("server: closed every good user (exited?); give --server-pid to tell")
        }
        (None, _) => {}
    }
    println!("tool: cpu {} (attackers included)", figures.cpu.tool);
    println!(
        "attackers:{}",
        if tallies.is_empty() { " none" } else { "" }
    );
    for tally in &tallies {
        println!("  {tally}");
    }
    Ok((figures, exited.is_some()))
}

/// The pusher, with its first error kept rather than raised: under attack the server may drop
/// the push connection or die, and the run must go on to report it.
struct Guarded {
    pusher: Pusher,
    failure: Option<(Instant, io::Error)>,
}

impl Guarded {
    fn keep(&mut self, result: io::Result<()>) {
        if let Err(e) = result {
            self.failure = Some((Instant::now(), e));
        }
    }
}

impl Driver for Guarded {
    fn on_event(&mut self, event: &Event) -> io::Result<()> {
        if self.failure.is_none() {
            let result = self.pusher.on_event(event);
            self.keep(result);
        }
        Ok(())
    }

    fn pump(&mut self, received: u64) -> io::Result<Option<Instant>> {
        if self.failure.is_some() {
            return Ok(None);
        }
        match self.pusher.pump(received) {
            Ok(wake) => Ok(wake),
            Err(e) => {
                self.keep(Err(e));
                Ok(None)
            }
        }
    }

    fn sent(&self) -> u64 {
        self.pusher.sent()
    }

    fn settled(&self) -> bool {
        true
    }
}
