//! The embedding handle's commands (`crate::handle`), run on the reactor's turn: a bounded
//! number per turn, so that a flood of them cannot starve the connections.

use log::warn;

use super::{Reactor, cluster, deliver, stats};
use crate::handle::{Command, Commands};

/// Handle commands run per turn before I/O gets its turn again.
const COMMAND_BUDGET: usize = 4096;

impl Reactor {
    pub(super) fn run_commands(&mut self) {
        self.commands_left = false;
        let Some(commands) = &self.commands else {
            return;
        };
        commands.rearm();
        for _ in 0..COMMAND_BUDGET {
            let Some(command) = self.commands.as_ref().and_then(Commands::next) else {
                return;
            };
            self.run_command(command);
        }
        self.commands_left = true;
    }

    fn run_command(&mut self, command: Command) {
        let (ctx, clients, frame) = (&mut self.ctx, &mut self.clients, &mut self.push.frames);
        match command {
            Command::Push { uids, uri, body } => {
                let nobody = |_| cluster::Waiting::Nobody;
                let sent = deliver::push(ctx, clients, frame, &uids, &uri, &body, false, nobody);
                if let Err(e) = sent {
                    ctx.counters.refused += 1;
                    warn!("handle: push to {uids:?} refused: {e}");
                }
            }
            Command::Broadcast { uri, body } => {
                match deliver::broadcast(ctx, clients, frame, &uri, &body) {
                    Err(e) => {
                        ctx.counters.refused += 1;
                        warn!("handle: broadcast refused: {e}");
                    }
                    Ok(_) => {
                        if let Some(cluster) = &mut ctx.cluster {
                            cluster.broadcast(&uri, &body);
                        }
                    }
                }
            }
            Command::Kick { uid, reply } => {
                let local = deliver::kick(ctx, clients, &uid);
                match &mut ctx.cluster {
                    Some(cluster) => {
                        let waiting = cluster::Waiting::Kick { reply, local };
                        if let Some(finished) = cluster.kick(&uid, waiting) {
                            self.finish(finished);
                        }
                    }
                    None => {
                        let _ = reply.send(local);
                    }
                }
            }
            Command::Online { uids, reply } => {
                let local: Vec<usize> = (uids.iter())
                    .map(|u| deliver::online(ctx, clients, u))
                    .collect();
                match &mut ctx.cluster {
                    Some(cluster) => {
                        let waiting = cluster::Waiting::Online { reply, local };
                        if let Some(finished) = cluster.online(uids, waiting) {
                            self.finish(finished);
                        }
                    }
                    None => {
                        let _ = reply.send(local);
                    }
                }
            }
            Command::Stats { reply } => {
                let _ = reply.send(stats(ctx, clients));
            }
            Command::CompleteAuth { ticket, uid } => {
                self.verdicts
                    .push((ticket.0, uid.ok_or("rejected by the auth function")));
            }
            Command::Shutdown => self.begin_shutdown(),
        }
    }
}
