//! `send`: publishes MESSAGE or every stdin line to an endpoint's outbox and prints what the
//! daemon answered for each.

use base64::Engine as _;

use super::{refused, TargetArg};
use crate::exit;
use ws_sidecar::output::Stdout;
use ws_sidecar::proto;

/// `send`'s arguments.
#[derive(clap::Args)]
pub struct SendArgs {
    /// The endpoint's name in the config.
    endpoint: String,
    /// The message; without it, every line of stdin is one message (empty lines skipped, see
    /// --keep-empty).
    message: Option<String>,
    /// Send binary frames: MESSAGE and every stdin line are base64 (as `tail --raw` prints
    /// binary payloads), decoded before sending; a line that is not base64 is named and skipped.
    #[arg(long)]
    binary: bool,
    /// Return only once each message was written to the upstream socket.
    #[arg(long)]
    wait_sent: bool,
    /// Give up on a message whose answer takes longer than this (e.g. 5s, 1m; it may still be
    /// sent) and exit 124 [default: wait as long as it takes].
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Send empty stdin lines as empty messages instead of skipping them.
    #[arg(long)]
    keep_empty: bool,
    #[command(flatten)]
    target: TargetArg,
}

/// One line of stdin: its text, or its bytes when they are not UTF-8 (a text frame cannot carry
/// them).
type InputLine = std::io::Result<Result<String, Vec<u8>>>;

/// Stdin split as `BufRead::lines` splits it (without `\n` or `\r\n`), except that a line that
/// is not UTF-8 is handed over as such instead of ending the input.
fn stdin_lines() -> impl Iterator<Item = InputLine> {
    use std::io::BufRead;
    let mut stdin = std::io::stdin().lock();
    std::iter::from_fn(move || {
        let mut line = Vec::new();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.ends_with(b"\n") {
                    line.pop();
                    if line.ends_with(b"\r") {
                        line.pop();
                    }
                }
                Some(Ok(String::from_utf8(line).map_err(|e| e.into_bytes())))
            }
            Err(e) => Some(Err(e)),
        }
    })
}

/// `send`: publishes MESSAGE or every stdin line, printing one labelled line per message
/// (`stored outbox_id=N`, or `sent outbox_id=N` with --wait-sent). Output nobody reads stops
/// nothing: the messages are the work, the lines a courtesy.
pub async fn send(args: SendArgs) -> u8 {
    let timeout = match args.timeout.as_deref().map(super::parse_duration) {
        None => None,
        Some(Ok(d)) if d.is_zero() => {
            report!("ws-sidecar: --timeout must be more than 0");
            return exit::USAGE;
        }
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            report!("ws-sidecar: --timeout: {e}");
            return exit::USAGE;
        }
    };
    let mut c = match args.target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (wait, label) = if args.wait_sent {
        (proto::Wait::Sent, "sent")
    } else {
        (proto::Wait::Stored, "stored")
    };
    let kind = if args.binary {
        proto::Kind::Binary
    } else {
        proto::Kind::Text
    };
    let from_stdin = args.message.is_none();
    let messages: Box<dyn Iterator<Item = InputLine>> = match args.message {
        Some(m) => Box::new(std::iter::once(Ok(Ok(m)))),
        None => Box::new(stdin_lines()),
    };
    let mut out = Stdout::new();
    let mut code = 0;
    for (index, m) in messages.enumerate() {
        let what = if from_stdin {
            format!("stdin line {}", index + 1)
        } else {
            "the message".to_owned()
        };
        let m = match m {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => {
                // One bad line costs only itself; the exit code tells the script.
                report!("ws-sidecar: {what} is not UTF-8, not sent");
                code = exit::DATAERR;
                continue;
            }
            Err(e) => {
                report!("ws-sidecar: reading stdin: {e}");
                return exit::IOERR;
            }
        };
        if from_stdin && m.is_empty() && !args.keep_empty {
            continue;
        }
        let data = if args.binary {
            match base64::engine::general_purpose::STANDARD.decode(m.trim()) {
                Ok(d) => d,
                Err(e) => {
                    report!("ws-sidecar: {what} is not base64 ({e}), not sent");
                    code = exit::DATAERR;
                    continue;
                }
            }
        } else {
            m.into_bytes()
        };
        let call = c.publish(proto::PublishRequest {
            endpoint: args.endpoint.clone(),
            data: data.into(),
            kind: kind as i32,
            idempotency_key: String::new(),
            wait: wait as i32,
        });
        // A deadline too far to represent is no deadline.
        let deadline = timeout.and_then(|t| Some((t, tokio::time::Instant::now().checked_add(t)?)));
        let answer = match deadline {
            None => call.await,
            Some((t, at)) => match tokio::time::timeout_at(at, call).await {
                Ok(a) => a,
                Err(_) => {
                    report!(
                        "ws-sidecar: {what}: no answer within {}; it may still be sent",
                        ws_sidecar::fmt::duration(t)
                    );
                    return exit::TIMEOUT;
                }
            },
        };
        match answer {
            Ok(r) => {
                out.line(format_args!(
                    "{label} outbox_id={}",
                    r.into_inner().outbox_id
                ));
            }
            Err(s) => return refused(&s),
        }
    }
    out.exit_code(code)
}
