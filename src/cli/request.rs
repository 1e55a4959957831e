//! `request`: one JSON request through an endpoint's shared connection, its replies printed as
//! JSON lines, and the exit codes that tell a script how it ended.

use std::borrow::Cow;
use std::io::Read;

use tokio::signal::unix::{signal, SignalKind};
use tonic::Code;

use super::{refused, TargetArg};
use crate::exit;
use ws_sidecar::output::Stdout;
use ws_sidecar::proto;

/// The largest request read from stdin: the daemon accepts no larger gRPC message.
const MAX_REQUEST: u64 = 16 * 1024 * 1024;

/// `request`: sends `json` (stdin for `-`) and prints the reply, or with `stream` every reply
/// until the last. Ctrl-C drops the call, which makes the daemon forget the request and cancel
/// a stream upstream.
pub async fn request(target: &TargetArg, endpoint: &str, json: String, stream: bool) -> u8 {
    let data = match request_data(json) {
        Ok(d) => d,
        Err(code) => return code,
    };
    // Installed before the call starts: from then on Ctrl-C must not kill the process before
    // it has dropped the call.
    let mut interrupt = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            report!("ws-sidecar: cannot handle SIGINT: {e}");
            return exit::OSERR;
        }
    };
    let mut c = match target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let req = proto::UpstreamRequest {
        endpoint: endpoint.into(),
        data: data.into(),
    };
    let mut out = Stdout::new();
    if !stream {
        let answer = tokio::select! {
            a = c.request(req) => a,
            _ = interrupt.recv() => return exit::INTERRUPTED,
        };
        return match answer {
            Ok(r) => {
                let reply = r.into_inner();
                match print_reply(&mut out, &reply.data) {
                    Ok(_) => out.exit_code(if reply.error { exit::UPSTREAM_ERROR } else { 0 }),
                    Err(code) => code,
                }
            }
            Err(s) => call_refused(&s),
        };
    }
    let opened = tokio::select! {
        o = c.request_stream(req) => o,
        _ = interrupt.recv() => return exit::INTERRUPTED,
    };
    let mut replies = match opened {
        Ok(r) => r.into_inner(),
        Err(s) => return call_refused(&s),
    };
    let mut code = 0;
    loop {
        let next = tokio::select! {
            n = replies.message() => n,
            _ = interrupt.recv() => return exit::INTERRUPTED,
        };
        match next {
            Ok(Some(reply)) => {
                if reply.error {
                    code = exit::UPSTREAM_ERROR;
                }
                match print_reply(&mut out, &reply.data) {
                    // Nobody reads on: the stream is dropped, and with it cancelled upstream.
                    Ok(false) => break,
                    Ok(true) if reply.end => break,
                    Ok(true) => {}
                    Err(code) => return code,
                }
            }
            Ok(None) => break,
            Err(s) => return call_refused(&s),
        }
    }
    out.exit_code(code)
}

/// The request's bytes, from the argument or stdin, once they are a JSON object or array (what
/// the daemon accepts). A bad one is reported without its text: it may hold a credential.
fn request_data(json: String) -> Result<Vec<u8>, u8> {
    let data = if json == "-" {
        let mut buf = Vec::new();
        let read = std::io::stdin()
            .lock()
            .take(MAX_REQUEST + 1)
            .read_to_end(&mut buf);
        match read {
            Ok(n) if n as u64 > MAX_REQUEST => {
                report!("ws-sidecar: the request on stdin is over 16 MiB");
                return Err(exit::DATAERR);
            }
            Ok(_) => buf,
            Err(e) => {
                report!("ws-sidecar: reading stdin: {e}");
                return Err(exit::IOERR);
            }
        }
    } else {
        json.into_bytes()
    };
    match serde_json::from_slice::<serde_json::Value>(&data) {
        Ok(v) if v.is_object() || v.is_array() => Ok(data),
        Ok(_) => {
            report!("ws-sidecar: the request must be a JSON object or array");
            Err(exit::DATAERR)
        }
        Err(e) => {
            report!("ws-sidecar: the request is not JSON: {e}");
            Err(exit::DATAERR)
        }
    }
}

/// Prints one reply as one line: whether output goes on, or the exit code when the reply is
/// not JSON.
fn print_reply(out: &mut Stdout, data: &[u8]) -> Result<bool, u8> {
    match one_line(data) {
        Ok(line) => Ok(out.line(line)),
        Err(e) => {
            report!("ws-sidecar: the daemon sent a reply that is not JSON: {e}");
            Err(exit::PROTOCOL)
        }
    }
}

/// `data` as one line of JSON. The daemon passes a stream's later messages through as the
/// upstream wrote them, and an upstream may indent its JSON over several lines.
fn one_line(data: &[u8]) -> Result<Cow<'_, str>, serde_json::Error> {
    if let Ok(text) = std::str::from_utf8(data) {
        if !text.contains(['\n', '\r']) {
            return Ok(Cow::Borrowed(text));
        }
    }
    let v: serde_json::Value = serde_json::from_slice(data)?;
    Ok(Cow::Owned(v.to_string()))
}

/// Ends a `request` or `tail --key` whose call failed: one line on stderr, and the exit code
/// telling a script what happened (see `crate::exit`).
pub fn call_refused(status: &tonic::Status) -> u8 {
    // A status tonic made from a transport failure is the daemon going away: `refused` says so.
    if std::error::Error::source(status).is_some() {
        return refused(status);
    }
    let code = match status.code() {
        Code::DeadlineExceeded => exit::TIMEOUT,
        Code::Unavailable => exit::TEMPFAIL,
        Code::FailedPrecondition => exit::UNCONFIGURED,
        _ => return refused(status),
    };
    // One line, whatever the daemon quoted.
    let message = status.message().replace(['\n', '\r'], " ");
    report!("ws-sidecar: {message}");
    code
}
