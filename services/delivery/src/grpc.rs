//! `DeliveryService` over gRPC.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt as _};

use jack_proto::delivery::v1 as pb;
use jack_proto::delivery::v1::delivery_service_server::DeliveryService;
use jack_proto::tonic::{self, Request, Response, Status, Streaming};
use jack_runtime::CancellationToken;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::router::Router;

#[derive(Debug, Clone)]
pub struct DeliveryApi {
    router: Arc<Router>,
    edge_queue: usize,
    subscriber_queue: usize,
    shutdown: CancellationToken,
    /// Cancelled once a relay has opened a publish stream (or published) here: from then on
    /// the relay sends this replica every event, or a copy of it.
    relay_heard: CancellationToken,
}

/// How long a staff `Subscribe` waits for a relay to publish to this replica (one that just
/// started, or that the relay has not yet found) before it is refused.
pub const RELAY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl DeliveryApi {
    pub fn new(router: Arc<Router>, edge_queue: usize, subscriber_queue: usize, shutdown: CancellationToken) -> Self {
        Self { router, edge_queue, subscriber_queue, shutdown, relay_heard: CancellationToken::new() }
    }
}

/// Routes published events; every event needs a conversation and a kind. A copy (see
/// `PublishRequest.subscribers_only`) goes to staff subscriptions only.
fn route(router: &Router, request: pb::PublishRequest) -> Result<pb::PublishResponse, Status> {
    if request.events.iter().any(|e| e.conversation_id.is_empty() || e.kind.is_none()) {
        return Err(Status::invalid_argument("every event needs a conversation_id and a kind"));
    }
    if request.copies_lost {
        tracing::warn!("copies of events for this replica were lost; ending its staff subscriptions");
        router.end_subscriptions(&crate::router::copies_lost());
    }
    if request.subscribers_only {
        router.publish_to_subscribers(&request.events);
        return Ok(pb::PublishResponse { routed: 0 });
    }
    Ok(pb::PublishResponse { routed: router.publish(request.events) })
}

#[tonic::async_trait]
impl DeliveryService for DeliveryApi {
    type EdgeStreamStream = ReceiverStream<Result<pb::DeliveryMessage, Status>>;

    async fn edge_stream(
        &self,
        request: Request<Streaming<pb::EdgeMessage>>,
    ) -> Result<Response<Self::EdgeStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.edge_queue);
        // The router holds the only sender: when it drops the link (too slow, or shutdown)
        // the edge's stream ends and the edge reconnects.
        let link = self.router.add_edge(tx);
        let router = self.router.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.cancelled() => break,
                };
                let kind = match message {
                    Ok(Some(pb::EdgeMessage { kind: Some(kind) })) => kind,
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "edge stream broke");
                        break;
                    }
                };
                match kind {
                    pb::edge_message::Kind::Hello(hello) => {
                        tracing::info!(edge_id = %hello.edge_id, "edge connected");
                        router.name_edge(link, hello.edge_id);
                    }
                    pb::edge_message::Kind::Attach(attach) => {
                        if !router.attach(link, &attach.conversation_id, attach.token) {
                            break; // dropped as too slow
                        }
                    }
                    pb::edge_message::Kind::Detach(detach) => router.detach(link, &detach.conversation_id),
                    pb::edge_message::Kind::Event(event) => router.publish_to_subscribers(&[event]),
                }
            }
            router.remove_edge(link);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn publish(&self, request: Request<pb::PublishRequest>) -> Result<Response<pb::PublishResponse>, Status> {
        self.relay_heard.cancel();
        Ok(Response::new(route(&self.router, request.into_inner())?))
    }

    type PublishStreamStream = Pin<Box<dyn Stream<Item = Result<pb::PublishResponse, Status>> + Send>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.relay_heard.cancel();
        let router = self.router.clone();
        // Each request is routed and answered as the connection reads it: no task or queue of
        // its own. An error ends the stream; so does shutdown, between two requests.
        let answers = request.into_inner().map(move |request| route(&router, request?));
        Ok(Response::new(Box::pin(answers.take_until(self.shutdown.clone().cancelled_owned()))))
    }

    type SubscribeStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // A caller limited to some hotels subscribes to one of them.
        let hotel_id = jack_runtime::callers::scoped_hotel(&request, request.get_ref().hotel_id.as_deref())?;
        let mut filter = request.into_inner();
        filter.hotel_id = hotel_id;
        for (name, value) in [("hotel_id", &filter.hotel_id), ("conversation_id", &filter.conversation_id)] {
            if value.as_deref().is_some_and(|v| v.is_empty() || v.len() > 128) {
                return Err(Status::invalid_argument(format!(
                    "{name}, when given, must be 1 to 128 characters (leave it out for every one)"
                )));
            }
        }
        if !(filter.messages || filter.typing || filter.reads) {
            // Asking for nothing in particular means everything.
            filter.messages = true;
            filter.typing = true;
            filter.reads = true;
        }
        // A subscription is complete from the moment it is answered only once the relay sends
        // this replica what it publishes: a replica that just started, or that the relay has
        // not found yet, holds the answer until it does.
        if tokio::time::timeout(RELAY_WAIT, self.relay_heard.cancelled()).await.is_err() {
            return Err(Status::unavailable(
                "no relay publishes to this delivery replica yet; try again, or another replica",
            ));
        }
        // One slot more than the queue: the last carries why the stream ends, if it falls behind.
        let (tx, rx) = mpsc::channel(self.subscriber_queue + 1);
        self.router.add_subscriber(filter, tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
