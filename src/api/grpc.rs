//! The gRPC API (`ws_sidecar.v1.Sidecar`, SPEC §12) with grpc.health.v1 and reflection, served
//! on Unix sockets and TCP listeners handed in by the caller.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::call::Call;
use super::subscription::{SubEvent, SubscribeError, Subscription};
use super::wire::EventFrame;
use super::PublishError;
use crate::access::{self, Op, Peer};
use crate::endpoint::State;
use crate::filter;
use crate::listen::GrpcListener;
use crate::log::{GapReason, Item, Kind};
use crate::proto::sidecar_server::{Sidecar, SidecarServer};
use crate::proto::{self, event};
use crate::registry::Registry;
use crate::reload::Reloader;
use crate::share::KeyState;
use crate::status::{proto_state, EndpointStatus};

/// The `Sidecar` service.
#[derive(Clone)]
pub struct SidecarService {
    registry: Arc<Registry>,
    /// What `Reload` runs: the SIGHUP code path.
    reloader: Reloader,
}

impl SidecarService {
    /// A service over the daemon's endpoints.
    pub fn new(registry: Arc<Registry>, reloader: Reloader) -> Self {
        SidecarService { registry, reloader }
    }
}

/// Serves one listener until `shutdown`, then finishes in-flight calls. `max_request` is the
/// largest request message decoded, in bytes ([`super::limits::RequestLimits::grpc_request`]).
pub async fn serve(
    listener: GrpcListener,
    max_request: usize,
    registry: Arc<Registry>,
    reloader: Reloader,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let health_service = health_service(health);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha();
    let sidecar = SidecarServer::new(SidecarService::new(registry, reloader))
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(usize::MAX);
    let mut builder = tonic::transport::Server::builder()
        // Loopback and Unix sockets: fixed large windows beat adaptive ones.
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)));
    let router = builder
        .add_service(sidecar)
        .add_service(health_service)
        .add_service(reflection_v1?)
        .add_service(reflection_v1alpha?);
    let stop = shutdown.cancelled_owned();
    match listener {
        GrpcListener::Unix(l, _) => {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(l), stop)
                .await?
        }
        GrpcListener::Tcp(l) => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), stop)
                .await?
        }
    }
    Ok(())
}

fn health_service(
    reporter: tonic_health::server::HealthReporter,
) -> tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService> {
    tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(reporter),
    )
}

/// Keeps grpc.health.v1 in step with endpoint states: the overall service is SERVING while the
/// daemon runs; each endpoint (service name = endpoint name) is SERVING while connected.
pub async fn run_health(
    registry: Arc<Registry>,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    use tonic_health::ServingStatus;
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("ws_sidecar.v1.Sidecar", ServingStatus::Serving)
        .await;
    let mut tasks = tokio::task::JoinSet::new();
    // Which endpoint object each name is watched for: a reload may add, remove or re-add one.
    let mut watched: std::collections::HashMap<String, Arc<crate::endpoint::Endpoint>> =
        std::collections::HashMap::new();
    loop {
        let changed = registry.changes().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let current = registry.all();
        watched.retain(|name, _| current.iter().any(|e| &e.name == name));
        for ep in current {
            if watched.get(&ep.name).is_some_and(|w| Arc::ptr_eq(w, &ep)) {
                continue;
            }
            watched.insert(ep.name.clone(), Arc::clone(&ep));
            tasks.spawn(watch_endpoint(
                ep,
                Arc::clone(&registry),
                reporter.clone(),
                shutdown.clone(),
            ));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut changed => {}
        }
    }
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    tasks.shutdown().await;
}

/// Keeps one endpoint's health status in step with its state until it is removed.
async fn watch_endpoint(
    ep: Arc<crate::endpoint::Endpoint>,
    registry: Arc<Registry>,
    mut reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    use tonic_health::ServingStatus;
    let mut events = ep.state_events();
    let mut current = ep.state().state;
    loop {
        let removed = current == State::Closed
            && !registry.get(&ep.name).is_some_and(|e| Arc::ptr_eq(&e, &ep));
        if removed {
            reporter.clear_service_status(&ep.name).await;
            return;
        }
        let status = if current == State::Connected {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status(&ep.name, status).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => match ev {
                Ok(ev) => current = ev.state,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => current = ep.state().state,
                Err(_) => return,
            }
        }
    }
}

/// The `Subscribe` response stream: subscription events rendered as proto `Event`s.
pub struct EventStream {
    sub: Subscription,
    failed: bool,
}

impl Stream for EventStream {
    type Item = Result<EventFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let ev = match Pin::new(&mut self.sub).poll_next(cx) {
            Poll::Ready(Some(ev)) => ev,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let endpoint = || self.sub.endpoint.to_string();
        let out = match ev {
            SubEvent::Item(Item::Message(m)) => {
                let sub = &self.sub;
                return Poll::Ready(Some(Ok(EventFrame::message(
                    &sub.endpoint().log,
                    &sub.endpoint,
                    m,
                ))));
            }
            SubEvent::State(s) => event::Event::State(proto::StateChange {
                endpoint: endpoint(),
                state: proto_state(s.state) as i32,
                reason: s.reason,
                at_unix_nanos: s.at,
            }),
            SubEvent::Item(Item::Gap { from, to, reason }) => event::Event::Gap(proto::Gap {
                endpoint: endpoint(),
                from_seq: from,
                to_seq: to,
                reason: proto_gap(reason) as i32,
            }),
            SubEvent::Key(k) => event::Event::Key(proto::KeyChange {
                endpoint: endpoint(),
                key: k.key.to_string(),
                state: match &k.state {
                    KeyState::Pending => proto::KeyState::Pending,
                    KeyState::Subscribed => proto::KeyState::Subscribed,
                    KeyState::Refused(_) => proto::KeyState::Refused,
                } as i32,
                reason: match k.state {
                    KeyState::Refused(r) => r,
                    _ => String::new(),
                },
            }),
            SubEvent::Lagged(l) => {
                self.failed = true;
                return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                    "slow subscriber disconnected: {l}"
                )))));
            }
        };
        Poll::Ready(Some(Ok(EventFrame::event(proto::Event {
            event: Some(out),
        }))))
    }
}

fn proto_gap(r: GapReason) -> proto::GapReason {
    match r {
        GapReason::ReplayExpired => proto::GapReason::ReplayExpired,
        GapReason::SlowSubscriber => proto::GapReason::SlowSubscriber,
        GapReason::UpstreamGap => proto::GapReason::UpstreamGap,
        GapReason::DaemonRestart => proto::GapReason::DaemonRestart,
        GapReason::UpstreamReset => proto::GapReason::UpstreamReset,
    }
}

#[tonic::async_trait]
impl Sidecar for SidecarService {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let peer = peer(&request);
        let req = request.into_inner();
        let specs = req.filters.into_iter();
        let specs = specs.map(|f| {
            let equals = filter::equals_text(&f.equals);
            (f.pointer, serde_json::Value::String(equals))
        });
        let filters =
            filter::for_subscriber(specs).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sub = Subscription::open(&self.registry, &req.endpoint, req.from_seq, filters, peer)
            .map_err(subscribe_status)?;
        Ok(Response::new(EventStream { sub, failed: false }))
    }

    type AttachStream = EventStream;

    async fn attach(
        &self,
        request: Request<proto::AttachRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let peer = peer(&request);
        let req = request.into_inner();
        let params =
            match req.params.trim() {
                "" => None,
                text => Some(serde_json::from_str(text).map_err(|e| {
                    Status::invalid_argument(format!("params is not JSON text: {e}"))
                })?),
            };
        let sub = Subscription::attach(
            &self.registry,
            &req.endpoint,
            req.keys,
            params,
            req.from_seq,
            peer,
        )
        .map_err(subscribe_status)?;
        Ok(Response::new(EventStream { sub, failed: false }))
    }

    async fn request(
        &self,
        request: Request<proto::UpstreamRequest>,
    ) -> Result<Response<proto::UpstreamReply>, Status> {
        let peer = peer(&request);
        let req = request.into_inner();
        let mut call = Call::start(&self.registry, &req.endpoint, &req.data, false, peer)
            .map_err(|e| e.status())?;
        match call.next().await {
            Some(Ok(reply)) => Ok(Response::new(upstream_reply(&call, reply))),
            Some(Err(e)) => Err(e.status()),
            None => Err(Status::unavailable("the request ended without a reply")),
        }
    }

    type RequestStreamStream =
        futures_util::stream::BoxStream<'static, Result<proto::UpstreamReply, Status>>;

    async fn request_stream(
        &self,
        request: Request<proto::UpstreamRequest>,
    ) -> Result<Response<Self::RequestStreamStream>, Status> {
        let peer = peer(&request);
        let req = request.into_inner();
        let call = Call::start(&self.registry, &req.endpoint, &req.data, true, peer)
            .map_err(|e| e.status())?;
        // Ends after the last reply or the first error; dropped by tonic when the app cancels,
        // which forgets the request and cancels the stream upstream.
        let replies = futures_util::stream::unfold(Some(call), |call| async move {
            let mut call = call?;
            match call.next().await? {
                Ok(reply) => {
                    let end = reply.end;
                    let out = upstream_reply(&call, reply);
                    Some((Ok(out), (!end).then_some(call)))
                }
                Err(e) => Some((Err(e.status()), None)),
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishResponse>, Status> {
        let peer = peer(&request);
        let req = request.into_inner();
        let kind = match proto::Kind::try_from(req.kind) {
            Ok(proto::Kind::Binary) => Kind::Binary,
            Ok(proto::Kind::Text) => Kind::Text,
            Err(_) => return Err(Status::invalid_argument("unknown kind")),
        };
        let wait_sent = matches!(proto::Wait::try_from(req.wait), Ok(proto::Wait::Sent));
        let key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key.as_str());
        if matches!(proto::Wait::try_from(req.wait), Ok(proto::Wait::Confirmed)) {
            if key.is_some() {
                return Err(Status::invalid_argument(
                    "idempotency_key is not supported with wait CONFIRMED",
                ));
            }
            let data = Bytes::copy_from_slice(&req.data);
            let id = super::publish_confirmed(&self.registry, &req.endpoint, peer, kind, data)
                .await
                .map_err(publish_status)?;
            return Ok(Response::new(proto::PublishResponse { outbox_id: id }));
        }
        let id = super::publish(
            &self.registry,
            &req.endpoint,
            peer,
            kind,
            // prost decodes `data` as a slice of the request's receive buffer (8 KiB or more):
            // queued as is, each small publish would keep that whole buffer alive (measured:
            // 100,000 queued 1 KiB publishes held 564 MiB). A copy keeps only the payload.
            Bytes::copy_from_slice(&req.data),
            key,
            wait_sent,
        )
        .await
        .map_err(publish_status)?;
        Ok(Response::new(proto::PublishResponse { outbox_id: id }))
    }

    async fn get_status(
        &self,
        request: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        let req = request.into_inner();
        let endpoints = match req.endpoint {
            Some(name) => {
                let ep = self
                    .registry
                    .lookup(&name)
                    .map_err(|e| Status::not_found(e.to_string()))?;
                vec![EndpointStatus::of(&ep).into()]
            }
            None => self
                .registry
                .all()
                .iter()
                .map(|ep| EndpointStatus::of(ep).into())
                .collect(),
        };
        Ok(Response::new(proto::GetStatusResponse {
            endpoints,
            reload_refused: self.registry.reload_refused(),
        }))
    }

    async fn reconnect(
        &self,
        request: Request<proto::ReconnectRequest>,
    ) -> Result<Response<proto::ReconnectResponse>, Status> {
        let peer = peer(&request);
        let ep = self.operable(&request.into_inner().endpoint, Op::Reconnect, peer)?;
        ep.request_reconnect();
        Ok(Response::new(proto::ReconnectResponse {}))
    }

    async fn reload(
        &self,
        request: Request<proto::ReloadRequest>,
    ) -> Result<Response<proto::ReloadResponse>, Status> {
        let peer = peer(&request);
        if !access::may_signal(peer) {
            for ep in self.registry.all() {
                access::check(&ep.config().access, &ep.name, Op::Reload, peer)
                    .map_err(|e| Status::permission_denied(e.to_string()))?;
            }
        }
        let outcome = self.reloader.reload_file().await;
        Ok(Response::new(reload_response(outcome)))
    }

    async fn reset_resume(
        &self,
        request: Request<proto::ResetResumeRequest>,
    ) -> Result<Response<proto::ResetResumeResponse>, Status> {
        let peer = peer(&request);
        let name = request.into_inner().endpoint;
        let ep = self.operable(&name, Op::ResetResume, peer)?;
        match ep.config().resume.as_ref().map(|r| r.scope) {
            Some(crate::config::IdScope::Global | crate::config::IdScope::Session) => {}
            Some(crate::config::IdScope::Connection) => {
                return Err(Status::failed_precondition(format!(
                    "endpoint {name:?} compares upstream ids within one connection (resume.scope = \"connection\"): no position is kept"
                )))
            }
            None => {
                return Err(Status::failed_precondition(format!(
                    "endpoint {name:?} has no resume configured: there is no position to forget"
                )))
            }
        }
        // The upstream task answers between connections; a connect attempt in progress is
        // abandoned for it, so this is prompt unless the task is stuck.
        match tokio::time::timeout(RESET_WAIT, ep.reset_resume()).await {
            Ok(Ok(previous)) => Ok(Response::new(proto::ResetResumeResponse {
                previous_id: previous.unwrap_or_default(),
            })),
            Ok(Err(e)) => Err(Status::unavailable(e)),
            Err(_) => Err(Status::unavailable(format!(
                "endpoint {name:?} did not carry out the reset within {}",
                crate::fmt::duration(RESET_WAIT)
            ))),
        }
    }

    async fn get_outbox(
        &self,
        request: Request<proto::GetOutboxRequest>,
    ) -> Result<Response<proto::OutboxInfo>, Status> {
        let name = request.into_inner().endpoint;
        let ep = self
            .registry
            .lookup(&name)
            .map_err(|e| Status::not_found(e.to_string()))?;
        let s = ep.outbox.snapshot();
        Ok(Response::new(proto::OutboxInfo {
            endpoint: ep.name.to_string(),
            depth: s.depth as u64,
            bytes: s.bytes as u64,
            oldest_age_micros: u64::try_from(s.oldest_age.as_micros()).unwrap_or(u64::MAX),
            oldest_id: s.oldest_id,
            newest_id: s.newest_id,
            durable: s.durable,
            expired: ep.outbox.expired(),
        }))
    }

    async fn clear_outbox(
        &self,
        request: Request<proto::ClearOutboxRequest>,
    ) -> Result<Response<proto::ClearOutboxResponse>, Status> {
        let peer = peer(&request);
        let req = request.into_inner();
        let ep = self.operable(&req.endpoint, Op::ClearOutbox, peer)?;
        let cleared = ep.outbox.clear(req.up_to_id).await.map_err(|e| {
            Status::unavailable(format!(
                "{e}; the messages are gone from memory but may be sent after a restart"
            ))
        })?;
        Ok(Response::new(proto::ClearOutboxResponse {
            cleared: cleared.messages as u64,
            bytes: cleared.bytes as u64,
        }))
    }
}

/// A reload's outcome on the wire.
fn reload_response(o: crate::reload::ReloadOutcome) -> proto::ReloadResponse {
    proto::ReloadResponse {
        accepted: o.accepted,
        errors: o.errors,
        warnings: o.warnings,
        added: o.report.added,
        changed: o.report.changed,
        removed: o.report.removed,
        unchanged: o.report.unchanged,
        need_restart: o.report.need_restart,
        applied: o.report.applied,
        config: o.config.display().to_string(),
    }
}

/// How long `ResetResume` waits for the endpoint's task.
const RESET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl SidecarService {
    /// The endpoint `name`, if `peer` may do `op` on it: NOT_FOUND or PERMISSION_DENIED otherwise.
    fn operable(
        &self,
        name: &str,
        op: Op,
        peer: Peer,
    ) -> Result<Arc<crate::endpoint::Endpoint>, Status> {
        let ep = self
            .registry
            .lookup(name)
            .map_err(|e| Status::not_found(e.to_string()))?;
        access::check(&ep.config().access, &ep.name, op, peer)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        Ok(ep)
    }
}

fn upstream_reply(call: &Call, reply: crate::share::Reply) -> proto::UpstreamReply {
    proto::UpstreamReply {
        endpoint: call.endpoint.to_string(),
        data: reply.data,
        error: reply.error,
        end: reply.end,
        received_at_unix_nanos: crate::endpoint::unix_nanos(),
    }
}

fn subscribe_status(e: SubscribeError) -> Status {
    match e {
        SubscribeError::NotFound(_) => Status::not_found(e.to_string()),
        SubscribeError::TooMany(_) | SubscribeError::Share(_) => {
            Status::resource_exhausted(e.to_string())
        }
        SubscribeError::Denied(_) => Status::permission_denied(e.to_string()),
        SubscribeError::NotShared(_) => Status::failed_precondition(e.to_string()),
        SubscribeError::BadKey(_) => Status::invalid_argument(e.to_string()),
    }
}

fn publish_status(e: PublishError) -> Status {
    let msg = e.to_string();
    match e.code() {
        "not_found" => Status::not_found(msg),
        "failed_precondition" => Status::failed_precondition(msg),
        "invalid_argument" => Status::invalid_argument(msg),
        "resource_exhausted" => Status::resource_exhausted(msg),
        "deadline_exceeded" => Status::deadline_exceeded(msg),
        "permission_denied" => Status::permission_denied(msg),
        "aborted" => Status::aborted(msg),
        _ => Status::unavailable(msg),
    }
}

/// The caller's credentials: tonic puts the connection's info in the request extensions.
fn peer<T>(request: &Request<T>) -> Peer {
    use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
    if let Some(uds) = request.extensions().get::<UdsConnectInfo>() {
        return uds.peer_cred.map_or(Peer::Unknown, Peer::from);
    }
    if request.extensions().get::<TcpConnectInfo>().is_some() {
        return Peer::Tcp;
    }
    Peer::Unknown
}
