//! Log output on stderr (SPEC §4 `log.format`): `text`, `json`, or `journald`.
//!
//! `journald` is the text format without timestamps (the journal stamps each line itself) and
//! with a syslog priority prefix on every line (`<3>` error, `<4>` warning, `<6>` info, `<7>`
//! debug), which systemd's stream reader turns into the entry's priority. It is chosen by
//! `log.format = "journald"`, or automatically for `text` when stderr is the journal
//! (`$JOURNAL_STREAM` names stderr's device and inode). Writing to stderr rather than to the
//! journal's native socket needs no extra crate and no socket access from a sandboxed service;
//! the cost is that span fields are in the message text instead of separate journal fields.
//! Lines reach stderr through a bounded queue ([`queue`]), never from a runtime thread.
//!
//! The `text` format is coloured only when stderr is a terminal and `NO_COLOR` is unset or
//! empty (<https://no-color.org>): in a file, a pipe or the journal, escape codes are noise.

mod queue;

pub use queue::{dropped_lines, flush};

use std::ffi::OsStr;
use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogConfig, LogFormat};

/// Replaces the filter of the subscriber [`init`] installed; set once, by `init`.
type Reload = Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>;
static RELOAD: std::sync::OnceLock<Reload> = std::sync::OnceLock::new();

/// Sets up tracing from `[log]`; `RUST_LOG` wins over `log.level`. The level can be changed
/// later with [`set_level`] (a reload).
pub fn init(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let filter = crate::redact::cap_leaky_targets(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(queue::QueueWriter::start());
    let format = effective_format(
        cfg.format,
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stderr_id(),
    );
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    // Each format is its own subscriber type, and so is the handle that reloads its filter.
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                let _ = RELOAD.set(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }};
    }
    match format {
        LogFormat::Json => install!(builder.with_ansi(false).json()),
        LogFormat::Journald => install!(builder
            .with_ansi(false)
            .event_format(Journald(journald_lines()))),
        // tracing-subscriber colours by default wherever the output goes.
        LogFormat::Text => install!(builder.with_ansi(colour)),
    }
}

/// Why [`set_level`] left the level as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    /// `RUST_LOG` is set, and wins over `log.level` at any time.
    #[error("RUST_LOG is set, and wins over log.level")]
    RustLogWins,
    /// The directives do not parse (the config loader checks them first, so rare).
    #[error("invalid log level: {0}")]
    Invalid(String),
    /// This process did not set up logging with [`init`] (a test, say).
    #[error("logging was not set up by this process")]
    NotInitialised,
    /// The subscriber is gone.
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

/// Applies a new `log.level` to the running subscriber (a reload): from the next line on,
/// the new directives filter what is logged.
pub fn set_level(level: &str) -> Result<(), LevelError> {
    if std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty()) {
        return Err(LevelError::RustLogWins);
    }
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| LevelError::Invalid(e.to_string()))?;
    let reload = RELOAD.get().ok_or(LevelError::NotInitialised)?;
    reload(crate::redact::cap_leaky_targets(filter)).map_err(LevelError::Reload)
}

/// Whether the text format is coloured: only on a terminal, and not when `NO_COLOR` (the
/// variable's value) is set to anything but the empty string.
pub fn use_colour(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The format to use: `text` becomes `journald` when `journal_stream` (`$JOURNAL_STREAM`,
/// `DEVICE:INODE`) names stderr.
pub fn effective_format(
    configured: LogFormat,
    journal_stream: Option<&str>,
    stderr: Option<(u64, u64)>,
) -> LogFormat {
    if configured != LogFormat::Text {
        return configured;
    }
    let named = journal_stream.and_then(|v| {
        let (dev, ino) = v.trim().split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    match (named, stderr) {
        (Some(j), Some(e)) if j == e => LogFormat::Journald,
        _ => LogFormat::Text,
    }
}

/// Whether stderr is the journal (`$JOURNAL_STREAM` names it): a command run by systemd
/// (`ExecStartPre=`, `ExecReload=`) whose stderr lines want a `<N>` priority prefix.
pub fn stderr_is_journal() -> bool {
    let stream = std::env::var("JOURNAL_STREAM").ok();
    effective_format(LogFormat::Text, stream.as_deref(), stderr_id()) == LogFormat::Journald
}

/// Device and inode of stderr, from a duplicate of its descriptor (no `unsafe` needed).
fn stderr_id() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The syslog priority systemd reads from a `<N>` line prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// The line format under [`Journald`]: no timestamp (the journal stamps each entry) and no level
/// word (the `<N>` prefix becomes the entry's `PRIORITY=`, and `journalctl` shows that, so a
/// word would only repeat it, padded, at the start of every `MESSAGE=`).
pub fn journald_lines() -> format::Format<format::Full, ()> {
    format::format()
        .without_time()
        .with_level(false)
        .with_ansi(false)
}

/// Wraps an event format so every output line starts with the event's `<N>` priority.
pub struct Journald<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut buf = String::new();
        self.0.format_event(ctx, Writer::new(&mut buf), event)?;
        let prio = priority(event.metadata().level());
        // A multi-line message (an error chain, say) keeps its priority on every line.
        for line in buf.lines() {
            writeln!(writer, "<{prio}>{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn journald_when_journal_stream_is_stderr() {
        let text = LogFormat::Text;
        let j = Some("8:1234");
        assert_eq!(
            effective_format(text, j, Some((8, 1234))),
            LogFormat::Journald
        );
        assert_eq!(effective_format(text, j, Some((8, 99))), LogFormat::Text);
        assert_eq!(
            effective_format(text, None, Some((8, 1234))),
            LogFormat::Text
        );
        assert_eq!(
            effective_format(text, Some("junk"), Some((8, 1234))),
            LogFormat::Text
        );
        assert_eq!(
            effective_format(LogFormat::Json, j, Some((8, 1234))),
            LogFormat::Json
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = |v: &'static str| Some(OsStr::new(v));
        assert!(use_colour(true, None));
        assert!(use_colour(true, set("")), "an empty NO_COLOR is unset");
        assert!(!use_colour(true, set("1")));
        assert!(!use_colour(true, set("false")), "any non-empty value");
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, set("")));
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_gets_its_priority_and_spans_show() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .event_format(Journald(journald_lines()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("endpoint", endpoint = "prices");
            let _g = span.enter();
            tracing::warn!("first\nsecond");
            tracing::error!(code = 7, "bad");
        });
        let text = String::from_utf8(buf.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("<4>"), "{text}");
        assert!(lines[0].contains("endpoint{endpoint=\"prices\"}"), "{text}");
        assert_eq!(lines[1], "<4>second");
        for line in &lines {
            let message = &line[3..];
            assert!(
                !["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                    .iter()
                    .any(|w| message.trim_start().starts_with(w)),
                "the priority prefix carries the level; MESSAGE= must not repeat it: {line}"
            );
        }
        assert!(
            lines[2].starts_with("<3>") && lines[2].contains("code=7"),
            "{text}"
        );
    }
}
