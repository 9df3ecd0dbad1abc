//! The subscriber thread: holds a connection subscribed to this node's channel and the
//! broadcast channel, and turns what arrives into events for the reactor. It wakes every
//! [`POLL`] when quiet, to notice a stop or an overdue probe (a subscription that went silent
//! without closing, as after a failover), and resubscribes with backoff after any failure.

use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use redis::{Client, Msg, RedisError};

use super::schema::Schema;
use super::shared::Shared;
use super::wire::{self, NodeMessage};
use super::{ClusterConfig, Event, unix_ms};
use crate::client::Backoff;

/// How long a quiet subscription waits before checking for a stop or an overdue probe.
const POLL: Duration = Duration::from_millis(200);

pub(super) struct Subscriber {
    shared: Arc<Shared>,
    client: Client,
    node_id: String,
    own_channel: String,
    broadcast_channel: String,
    timeout: Duration,
}

impl Subscriber {
    pub fn new(
        shared: Arc<Shared>,
        client: Client,
        schema: &Schema,
        config: &ClusterConfig,
    ) -> Self {
        Subscriber {
            shared,
            client,
            node_id: config.node_id.clone(),
            own_channel: schema.own_channel.clone(),
            broadcast_channel: schema.broadcast_channel.clone(),
            timeout: config.timeout,
        }
    }

    pub fn run(self) {
        let mut backoff = Backoff::new();
        while let Err(reason) = self.listen(&mut backoff) {
            self.shared.subscription_failed(&reason);
            let delay = backoff.next_delay();
            debug!("cluster: no subscription ({reason}); next try in {delay:?}");
            if self.shared.sleep(delay) {
                return;
            }
        }
    }

    /// Subscribes and forwards messages until stopped (`Ok`) or the subscription fails (why).
    fn listen(&self, backoff: &mut Backoff) -> Result<(), String> {
        let why = |e: RedisError| e.to_string();
        let mut conn = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(why)?;
        conn.set_read_timeout(Some(self.timeout)).map_err(why)?;
        conn.set_write_timeout(Some(self.timeout)).map_err(why)?;
        let mut pubsub = conn.as_pubsub();
        pubsub
            .subscribe(&[&self.own_channel, &self.broadcast_channel][..])
            .map_err(why)?;
        pubsub.set_read_timeout(Some(POLL)).map_err(why)?;
        self.shared.probe_clear();
        self.shared.subscription_ok();
        backoff.reset();
        info!("cluster: subscribed to {}", self.own_channel);
        let reason = loop {
            match pubsub.get_message() {
                Ok(msg) => self.forward(&msg),
                Err(e) if e.is_timeout() => {}
                Err(e) => break e.to_string(),
            }
            if self.shared.stopping() {
                return Ok(());
            }
            if self.shared.probe_overdue(unix_ms()) {
                break "subscription silent: the probe did not come back".into();
            }
        };
        warn!("cluster: subscription lost ({reason}); resubscribing");
        Err(reason)
    }

    fn forward(&self, msg: &Msg) {
        let channel = msg.get_channel_name();
        let payload = msg.get_payload_bytes();
        if channel == self.own_channel {
            match wire::decode_node(payload) {
                Ok(NodeMessage::Probe) => self.shared.probe_clear(),
                Ok(NodeMessage::Events(events)) => self.shared.emit(events),
                Err(_) => warn!("cluster: malformed message on {channel} dropped"),
            }
        } else {
            match wire::decode_broadcast(payload) {
                Ok((sender, _, _)) if sender == self.node_id => {}
                Ok((_, uri, body)) => self.shared.emit([Event::Broadcast { uri, body }]),
                Err(_) => warn!("cluster: malformed broadcast dropped"),
            }
        }
    }
}
