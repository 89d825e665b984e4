//! The routing table: edge streams by conversation, and staff subscriptions.
//!
//! A slow consumer is never allowed to hold up the others: when an edge's or a subscriber's
//! queue is full its channel is dropped, which ends its stream. An edge then reconnects and
//! catches up from conversation, so nothing is lost. A staff subscription's last queue slot is
//! kept for the reason it ends (`RESOURCE_EXHAUSTED`, with how to catch up), so a dashboard
//! can tell a dropped stream from a finished one.
//!
//! With several delivery replicas, conversation's relay sends each batch to one of them for
//! the edges and a copy to each of the others for their subscriptions, and a new relay
//! leader resends from its stored cursor: [`Seen`] lets each message reach a subscription
//! once, whichever way it came.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jack_proto::delivery::v1 as pb;
use jack_proto::tonic::Status;
use tokio::sync::mpsc;

pub type EdgeSender = mpsc::Sender<Result<pb::DeliveryMessage, Status>>;
pub type SubscriberSender = mpsc::Sender<Result<pb::Event, Status>>;

#[derive(Debug, Default)]
pub struct Router {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    edges: HashMap<u64, EdgeLink>,
    /// conversation → edge link ids serving it. (Its keys share their text with the edges'
    /// `conversations`: a routed conversation's id is stored once.)
    by_conversation: HashMap<Arc<str>, Vec<u64>>,
    subscribers: HashMap<u64, Subscriber>,
    seen: Seen,
}

/// The message positions offered to subscriptions lately: a sliding window of [`SEEN_WINDOW`]
/// positions behind the highest one, a bit each (a fixed few KiB). A position further
/// behind than that counts as seen: a resend is never that far behind what went before.
#[derive(Debug, Default)]
struct Seen {
    highest: i64,
    bits: Vec<u64>,
}

const SEEN_WINDOW: i64 = 1 << 16;

impl Seen {
    /// Whether `position` is offered for the first time (and notes it). Events without a
    /// position (typing, reads) always are.
    fn first(&mut self, position: i64) -> bool {
        if position <= 0 {
            return true;
        }
        if self.bits.is_empty() {
            self.bits = vec![0; (SEEN_WINDOW / 64) as usize];
        }
        if position <= self.highest - SEEN_WINDOW {
            return false;
        }
        let slot = |p: i64| ((p.rem_euclid(SEEN_WINDOW) / 64) as usize, 1u64 << (p % 64));
        if position > self.highest {
            // The window slides forward: the slots it takes over are for new positions.
            if position - self.highest >= SEEN_WINDOW {
                self.bits.fill(0);
            } else {
                for p in self.highest + 1..=position {
                    let (word, bit) = slot(p);
                    self.bits[word] &= !bit;
                }
            }
            self.highest = position;
        }
        let (word, bit) = slot(position);
        let first = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        first
    }
}

#[derive(Debug)]
struct EdgeLink {
    edge_id: String,
    tx: EdgeSender,
    /// conversation → number of sessions of this edge attached to it.
    conversations: HashMap<Arc<str>, u32>,
}

#[derive(Debug)]
struct Subscriber {
    filter: pb::SubscribeRequest,
    tx: SubscriberSender,
}

impl Subscriber {
    fn wants(&self, event: &pb::Event) -> bool {
        let f = &self.filter;
        let kind_ok = match &event.kind {
            Some(pb::event::Kind::Message(_)) => f.messages,
            Some(pb::event::Kind::Typing(_)) => f.typing,
            Some(pb::event::Kind::Read(_)) => f.reads,
            None => false,
        };
        kind_ok
            && f.hotel_id.as_deref().is_none_or(|h| h == event.hotel_id)
            && f.conversation_id.as_deref().is_none_or(|c| c == event.conversation_id)
    }
}

impl Router {
    pub fn add_edge(&self, tx: EdgeSender) -> u64 {
        let mut s = self.state.lock().expect("router lock");
        s.next_id += 1;
        let id = s.next_id;
        s.edges.insert(id, EdgeLink { edge_id: String::new(), tx, conversations: HashMap::new() });
        id
    }

    pub fn name_edge(&self, link: u64, edge_id: String) {
        if let Some(edge) = self.state.lock().expect("router lock").edges.get_mut(&link) {
            edge.edge_id = edge_id;
        }
    }

    /// Routes the conversation's events to this edge link, then acknowledges with `token` on
    /// the link's stream. Returns false if the link is gone (or was just dropped as too slow).
    pub fn attach(&self, link: u64, conversation_id: &str, token: u64) -> bool {
        let mut s = self.state.lock().expect("router lock");
        let Some(edge) = s.edges.get_mut(&link) else { return false };
        let first = match edge.conversations.get_mut(conversation_id) {
            Some(count) => {
                *count += 1;
                None
            }
            None => {
                let key: Arc<str> = conversation_id.into();
                edge.conversations.insert(key.clone(), 1);
                Some(key)
            }
        };
        let ack = pb::DeliveryMessage { kind: Some(pb::delivery_message::Kind::Attached(pb::Attached { token })) };
        let acked = edge.tx.try_send(Ok(ack)).is_ok();
        if let Some(key) = first {
            // Most conversations are served by one edge: room for one (a Vec's first growth makes four).
            s.by_conversation.entry(key).or_insert_with(|| Vec::with_capacity(1)).push(link);
        }
        if !acked {
            remove_edge_locked(&mut s, link);
        }
        acked
    }

    pub fn detach(&self, link: u64, conversation_id: &str) {
        let mut s = self.state.lock().expect("router lock");
        let Some(edge) = s.edges.get_mut(&link) else { return };
        let Some(count) = edge.conversations.get_mut(conversation_id) else { return };
        *count -= 1;
        if *count == 0 {
            edge.conversations.remove(conversation_id);
            unroute(&mut s.by_conversation, conversation_id, link);
        }
    }

    pub fn remove_edge(&self, link: u64) {
        let mut s = self.state.lock().expect("router lock");
        remove_edge_locked(&mut s, link);
    }

    pub fn add_subscriber(&self, filter: pb::SubscribeRequest, tx: SubscriberSender) {
        let mut s = self.state.lock().expect("router lock");
        s.next_id += 1;
        let id = s.next_id;
        s.subscribers.insert(id, Subscriber { filter, tx });
    }

    /// Routes events to the edges that serve their conversations and to matching staff
    /// subscriptions. Returns how many events reached at least one edge.
    pub fn publish(&self, events: Vec<pb::Event>) -> u32 {
        let mut s = self.state.lock().expect("router lock");
        let mut per_edge: HashMap<u64, Vec<pb::Event>> = HashMap::new();
        let mut routed = 0;
        for event in &events {
            if let Some(links) = s.by_conversation.get(event.conversation_id.as_str()) {
                routed += 1;
                for link in links {
                    per_edge.entry(*link).or_default().push(event.clone());
                }
            }
        }
        let mut slow = Vec::new();
        for (link, batch) in per_edge {
            if let Some(edge) = s.edges.get(&link) {
                let message = pb::DeliveryMessage {
                    kind: Some(pb::delivery_message::Kind::Events(pb::EventBatch { events: batch })),
                };
                if edge.tx.try_send(Ok(message)).is_err() {
                    slow.push(link);
                }
            }
        }
        for link in slow {
            if let Some(edge) = s.edges.get(&link) {
                tracing::warn!(edge_id = %edge.edge_id, "edge stream too slow or gone; closing it");
            }
            remove_edge_locked(&mut s, link);
        }
        fan_out_to_subscribers(&mut s, &events);
        routed
    }

    /// Events for staff subscriptions only: guest-side events from an edge (typing), and the
    /// copies of what the relay published to another delivery replica.
    pub fn publish_to_subscribers(&self, events: &[pb::Event]) {
        let mut s = self.state.lock().expect("router lock");
        fan_out_to_subscribers(&mut s, events);
    }

    /// Ends every staff subscription with `status` (events meant for them were lost).
    pub fn end_subscriptions(&self, status: &Status) {
        let mut s = self.state.lock().expect("router lock");
        for (_, sub) in s.subscribers.drain() {
            let _ = sub.tx.try_send(Err(status.clone()));
        }
    }

    /// Drops every stream, ending them (on shutdown).
    pub fn clear(&self) {
        let mut s = self.state.lock().expect("router lock");
        *s = State::default();
    }
}

fn unroute(by_conversation: &mut HashMap<Arc<str>, Vec<u64>>, conversation_id: &str, link: u64) {
    if let Some(links) = by_conversation.get_mut(conversation_id) {
        links.retain(|l| *l != link);
        if links.is_empty() {
            by_conversation.remove(conversation_id);
        }
    }
}

fn remove_edge_locked(s: &mut State, link: u64) {
    if let Some(edge) = s.edges.remove(&link) {
        for conversation_id in edge.conversations.keys() {
            unroute(&mut s.by_conversation, conversation_id, link);
        }
    }
}

/// How a subscription that fell behind ends.
pub fn fell_behind() -> Status {
    Status::resource_exhausted(
        "this subscription fell behind (its queue, DELIVERY_SUBSCRIBER_QUEUE, filled up) and was closed; \
         subscribe again, and catch up on what was missed with ConversationService.ListMessages \
         (or WatchMessages from a stored cursor)",
    )
}

/// How subscriptions end when copies meant for this replica were lost.
pub fn copies_lost() -> Status {
    Status::resource_exhausted(
        "events for this subscription were lost on their way to this delivery replica (it was unreachable or \
         too slow); subscribe again, and catch up from the last event's position with \
         ConversationService.WatchMessages (or ListMessages)",
    )
}

fn fan_out_to_subscribers(s: &mut State, events: &[pb::Event]) {
    if s.subscribers.is_empty() {
        return;
    }
    let seen = &mut s.seen;
    let fresh: Vec<&pb::Event> = events.iter().filter(|e| seen.first(e.position)).collect();
    s.subscribers.retain(|_, sub| {
        for event in fresh.iter().copied().filter(|e| sub.wants(e)) {
            if sub.tx.capacity() <= 1 {
                // The last slot carries why the stream ends (the channel has one more slot
                // than the subscription's queue).
                tracing::warn!("staff subscription too slow; closing it");
                let _ = sub.tx.try_send(Err(fell_behind()));
                return false;
            }
            if sub.tx.try_send(Ok(event.clone())).is_err() {
                return false; // the subscriber is gone
            }
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_position_is_first_once_across_resends_and_a_sliding_window() {
        let mut seen = Seen::default();
        assert!((1..=100).all(|p| seen.first(p)));
        // A new leader resends from its stored cursor; a copy arrives after a resend.
        assert!((60..=100).all(|p| !seen.first(p)));
        assert!(seen.first(150) && !seen.first(150));
        assert!((101..150).all(|p| seen.first(p)), "a gap filled later is new");
        // The window slides: far ahead, then positions from before it count as seen.
        assert!(seen.first(150 + SEEN_WINDOW));
        assert!(!seen.first(150), "behind the window");
        assert!(seen.first(151 + SEEN_WINDOW / 2) && seen.first(152 + SEEN_WINDOW / 2));
        // A jump of more than a window clears it.
        assert!(seen.first(10 * SEEN_WINDOW) && !seen.first(10 * SEEN_WINDOW));
        assert!(seen.first(10 * SEEN_WINDOW - 5));
        assert!(seen.first(0) && seen.first(0), "typing and reads have no position");
    }
}
