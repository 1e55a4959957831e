//! The HTTP endpoint (SPEC §14), served with hyper on a listener handed in by the caller:
//! `GET /metrics` (Prometheus text), `/healthz` (the daemon answers), `/readyz` (every endpoint
//! connected), `/status` (the JSON of `ws-sidecar status --json`), and the status page: `/` and
//! its feed `/events` (`super::status_page`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::endpoint::State;
use crate::health::Liveness;
use crate::registry::Registry;
use crate::status::EndpointStatus;

use super::status_page::{self, Viewers};

/// How long `/healthz` waits for the liveness probe.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);
/// A client must send its request headers within this (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(1);

/// A response body: whole, or streamed (`/events`).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every request handler reads.
#[derive(Clone)]
struct Ctx {
    registry: Arc<Registry>,
    liveness: Liveness,
    /// Open status page feeds; ends them at shutdown.
    viewers: Viewers,
    shutdown: CancellationToken,
}

/// Serves `listener` until `shutdown`, then lets in-flight requests finish briefly.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    liveness: Liveness,
    shutdown: CancellationToken,
) {
    let ctx = Ctx {
        registry,
        liveness,
        viewers: Viewers::default(),
        shutdown: shutdown.clone(),
    };
    let conns = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on accept.
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(&ctx, &req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
        });
    }
    conns.close();
    let _ = tokio::time::timeout(DRAIN, conns.wait()).await;
}

async fn route(ctx: &Ctx, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/" => status_page::page(),
        "/events" => status_page::events(
            Arc::clone(&ctx.registry),
            &ctx.viewers,
            ctx.shutdown.clone(),
            req.method() == Method::HEAD,
        ),
        "/metrics" => {
            let body = crate::metrics::render(&ctx.registry);
            with_type(StatusCode::OK, crate::metrics::CONTENT_TYPE, body)
        }
        "/healthz" => match ctx.liveness.check(HEALTH_DEADLINE).await {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {why}\n"),
            ),
        },
        "/readyz" => readyz(&ctx.registry),
        "/status" => {
            let eps: Vec<EndpointStatus> = ctx
                .registry
                .all()
                .iter()
                .map(|ep| EndpointStatus::of(ep))
                .collect();
            match serde_json::to_string_pretty(&eps) {
                Ok(mut body) => {
                    body.push('\n');
                    with_type(StatusCode::OK, "application/json", body)
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /, /events, /metrics, /healthz, /readyz or /status\n".into(),
        ),
    }
}

/// 200 when every endpoint is connected; else 503 naming the others and their states.
fn readyz(registry: &Registry) -> Response<Body> {
    let waiting: Vec<String> = registry
        .all()
        .iter()
        .filter_map(|ep| {
            let st = ep.state().state;
            (st != State::Connected).then(|| format!("{} ({})", ep.name, st.as_str()))
        })
        .collect();
    if waiting.is_empty() {
        text(StatusCode::OK, "ready\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        )
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}
