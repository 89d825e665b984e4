//! The routing table: edge streams by conversation, and staff subscriptions.
//!
//! A slow consumer is never allowed to hold up the others: when an edge's or a subscriber's
//! queue is full its channel is dropped, which ends its stream. An edge then reconnects and
//! catches up from conversation, so nothing is lost. A staff subscription's last queue slot is
//! kept for the reason it ends (`RESOURCE_EXHAUSTED`, with how to catch up), so a dashboard
//! can tell a dropped stream from a finished one.

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
                let message = pb::DeliveryMessage { kind: Some(pb::delivery_message::Kind::Events(pb::EventBatch { events: batch })) };
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

    /// Guest-side events from an edge (typing) go to staff subscriptions only.
    pub fn publish_to_subscribers(&self, events: &[pb::Event]) {
        let mut s = self.state.lock().expect("router lock");
        fan_out_to_subscribers(&mut s, events);
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

fn fan_out_to_subscribers(s: &mut State, events: &[pb::Event]) {
    if s.subscribers.is_empty() {
        return;
    }
    s.subscribers.retain(|_, sub| {
        for event in events.iter().filter(|e| sub.wants(e)) {
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
