//! What the commands write to stdout and stderr, for readers that may go away.
//!
//! Rust ignores SIGPIPE, so writing into a pipe whose reader left (`ws-sidecar tail x | head -1`)
//! fails with EPIPE, and `println!`/`eprintln!` turn that into a panic (exit 101) in the middle
//! of the command's work. Here a reader that left is an ordinary end of output: the command
//! stops printing, finishes its work (`send` still publishes every line) and exits with the code
//! it would have had. Any other write error (a full disk) is reported once on stderr and turns
//! an exit code of 0 into [`IOERR`].

use std::fmt::{self, Display};
use std::io::{self, Write};

/// sysexits' EX_IOERR: the command did its work but could not write its output.
pub const IOERR: u8 = 74;

/// A command's standard output.
#[derive(Debug, Default)]
pub struct Stdout {
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Open,
    /// The reader went away (EPIPE): nothing more to say, and nothing wrong.
    ReaderGone,
    /// Writing failed otherwise; already reported on stderr.
    Failed,
}

impl Stdout {
    /// Standard output, open until a write fails.
    pub fn new() -> Stdout {
        Stdout::default()
    }

    /// Writes `text` and a newline. False once nothing more can be written (the reader left or
    /// writing failed); from then on nothing is written.
    pub fn line(&mut self, text: impl Display) -> bool {
        self.write(format_args!("{text}\n"))
    }

    /// Writes `text` as it is.
    pub fn text(&mut self, text: &str) -> bool {
        self.write(format_args!("{text}"))
    }

    /// Writes `bytes` exactly as they are (a payload that is no text).
    pub fn bytes(&mut self, bytes: &[u8]) -> bool {
        if self.state != State::Open {
            return false;
        }
        let mut out = io::stdout().lock();
        match out.write_all(bytes).and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    /// Whether output is still being written.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The exit code of a command that would exit with `code`: a failed write turns success
    /// into [`IOERR`]; a reader that left changes nothing.
    pub fn exit_code(&self, code: u8) -> u8 {
        if code == 0 && self.state == State::Failed {
            IOERR
        } else {
            code
        }
    }

    fn write(&mut self, args: fmt::Arguments<'_>) -> bool {
        if self.state != State::Open {
            return false;
        }
        let mut out = io::stdout().lock();
        // Flushed line by line so a reader sees each line as it is made, and a failure shows up
        // at the line that caused it rather than at exit.
        match out.write_fmt(args).and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&mut self, e: &io::Error) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            self.state = State::ReaderGone;
        } else {
            stderr_line(format_args!("ws-sidecar: cannot write to stdout: {e}"));
            self.state = State::Failed;
        }
    }

    /// Records the outcome of output written by someone else (clap's help, say).
    pub fn record(&mut self, result: io::Result<()>) {
        if let Err(e) = result {
            self.failed(&e);
        }
    }
}

/// Writes one line on stderr, like `eprintln!` but without its panic: a stderr nobody reads
/// loses the message and nothing else. When stderr is the journal (a command systemd runs, such
/// as `check-config` in `ExecStartPre=`), the line gets a syslog priority prefix, so
/// `journalctl -p warning` shows why a start or a reload failed: `<4>` for a line that starts
/// with `warning: `, `<3>` for every other (errors are what a command says on stderr).
pub fn stderr_line(args: fmt::Arguments<'_>) {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let journal = *JOURNAL.get_or_init(crate::logging::stderr_is_journal);
    let text = args.to_string();
    let prefix = match journal {
        false => "",
        true if text.starts_with("warning: ") => "<4>",
        true => "<3>",
    };
    // The journal reads each line as its own entry: every line carries the priority.
    let mut err = io::stderr().lock();
    for line in text.split('\n') {
        let _ = err.write_fmt(format_args!("{prefix}{line}\n"));
    }
}
