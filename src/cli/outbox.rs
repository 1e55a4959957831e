//! `outbox`: what waits in an endpoint's outbox, and clearing it after a confirmation.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use super::{refused, TargetArg};
use crate::exit;
use ws_sidecar::output::Stdout;
use ws_sidecar::proto;

/// `outbox`'s arguments.
#[derive(clap::Args)]
pub struct OutboxArgs {
    /// The endpoint's name in the config.
    endpoint: String,
    /// Drop the waiting messages for good (they are never sent); asks first on a terminal.
    /// Only the messages shown are dropped, not ones published after.
    #[arg(long)]
    clear: bool,
    /// With --clear: do not ask (needed when stdin is not a terminal).
    #[arg(long, requires = "clear")]
    yes: bool,
    #[command(flatten)]
    target: TargetArg,
}

/// `outbox NAME`: prints `NAME depth=N bytes=B oldest_age=D …`; with `--clear`, then drops
/// those messages once confirmed (`cleared=N bytes=B`).
pub async fn outbox(args: OutboxArgs) -> u8 {
    // Refused before anything is asked of the daemon: a script must say --yes.
    let ask = args.clear && !args.yes;
    if ask && !std::io::stdin().is_terminal() {
        report!("ws-sidecar: --clear asks for confirmation on a terminal; stdin is not a terminal, so pass --yes to clear without asking");
        return exit::USAGE;
    }
    let mut c = match args.target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let info = match c
        .get_outbox(proto::GetOutboxRequest {
            endpoint: args.endpoint.clone(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return refused(&s),
    };
    let mut out = Stdout::new();
    let age = if info.depth > 0 {
        ws_sidecar::fmt::duration(Duration::from_micros(info.oldest_age_micros))
    } else {
        "-".to_owned()
    };
    out.line(format_args!(
        "{} depth={} bytes={} oldest_age={} durable={} expired={}",
        info.endpoint,
        info.depth,
        info.bytes,
        age,
        if info.durable { "yes" } else { "no" },
        info.expired
    ));
    if !args.clear {
        return out.exit_code(0);
    }
    if info.depth == 0 {
        out.line(format_args!("{}: nothing to clear", info.endpoint));
        return out.exit_code(0);
    }
    if ask {
        match confirm(&info) {
            Ok(true) => {}
            Ok(false) => {
                report!("ws-sidecar: not cleared");
                return exit::REFUSED;
            }
            Err(e) => {
                report!("ws-sidecar: reading the answer: {e}");
                return exit::IOERR;
            }
        }
    }
    match c
        .clear_outbox(proto::ClearOutboxRequest {
            endpoint: args.endpoint,
            up_to_id: Some(info.newest_id),
        })
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            out.line(format_args!(
                "{} cleared={} bytes={}",
                info.endpoint, r.cleared, r.bytes
            ));
            out.exit_code(0)
        }
        Err(s) => refused(&s),
    }
}

/// Asks on the terminal whether to drop the messages; only `y` or `yes` does.
fn confirm(info: &proto::OutboxInfo) -> std::io::Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(
        err,
        "drop {} message(s) ({} bytes) waiting in {}'s outbox? They will never be sent. [y/N] ",
        info.depth, info.bytes, info.endpoint
    )?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
