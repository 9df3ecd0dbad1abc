//! `soak`: hours of a day in minutes. N users stay online while a share of them drop their
//! connection and come back every second (same uids, new sockets), pushes flow through an
//! inner connection at a steady rate, and the server's RSS is sampled all along. A server
//! that leaks (in its slab, registry, timer wheel or buffers) shows RSS that keeps climbing;
//! a sound one levels off once its tables have grown to the working set.

use std::io;
use std::time::{Duration, Instant};

use crate::fleet::{Driver, Fleet};
use crate::{Options, proc};

pub fn run(o: &Options) -> io::Result<()> {
    let pid = o.server_pid.expect("checked when parsing");
    let rate = o.rate.unwrap_or(1000.0);
    let duration = Duration::from_secs(o.minutes * 60);
    let churn = o.churn.unwrap_or(o.conns / 100);
    let before = proc::vm_rss_bytes(pid)?;
    let (mut fleet, _) = Fleet::connect(o.fleet())?;
    let total = (rate * duration.as_secs_f64()) as u64;
    let mut pusher = o.steady_pusher(rate, total, fleet.registry())?;
    println!(
        "soak: {} users for {} min, {} reconnecting every second, {rate} pushes/s; \
         server VmRSS before the users: {} KiB",
        o.conns,
        o.minutes,
        churn,
        before / 1024
    );
    println!("  time    VmRSS KiB   ready   reconnected   pushes sent   received");

    let start = Instant::now();
    let (mut next_churn, mut next_sample) = (start, start);
    let mut reconnected = 0;
    let mut samples = Vec::new();
    loop {
        let now = Instant::now();
        if now >= next_sample {
            let rss = proc::vm_rss_bytes(pid)?;
            samples.push(rss);
            println!(
                "{:>5.0} s   {:>9}   {:>5}   {:>11}   {:>11}   {:>8}",
                now.duration_since(start).as_secs_f64(),
                rss / 1024,
                fleet.ready(),
                reconnected,
                pusher.sent(),
                fleet.received()
            );
            next_sample += o.sample.unwrap_or(Duration::from_secs(30));
        }
        if now.duration_since(start) >= duration {
            break;
        }
        if now >= next_churn {
            reconnected += fleet.churn(churn)?;
            next_churn += Duration::from_secs(1);
        }
        fleet.step(&mut pusher, next_churn.min(next_sample))?;
    }

    // Level off: compare the second half's growth with the first half's.
    let quarter = |q: usize| samples[(samples.len() - 1) * q / 4] / 1024;
    let (q1, q2, q4) = (quarter(1), quarter(2), quarter(4));
    println!(
        "VmRSS KiB at 25% {q1}, 50% {q2}, 100% {}; second half {:+} KiB ({:+.2}%)",
        q4,
        q4 as i64 - q2 as i64,
        (q4 as f64 - q2 as f64) * 100.0 / q2 as f64
    );
    println!(
        "{reconnected} reconnections, {} pushes, {} received; {} users closed by the server",
        pusher.sent(),
        fleet.received(),
        fleet.closed_by_server()
    );
    Ok(())
}
