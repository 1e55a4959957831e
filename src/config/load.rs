//! Reads the config file and its `WS_SIDECAR__…` environment overrides into a validated
//! [`Config`], reporting every problem at once (SPEC §4).
//!
//! The `config` crate parses the TOML and merges the environment into one tree; this module then
//! walks that tree with the reader in `value.rs` instead of deriving `Deserialize`, because serde
//! stops at the first error and a file with three mistakes must report all three.
//!
//! What `config` 0.15 does to key case (read in its source, 0.15.27):
//! - file keys keep their case, and keys below the top level are taken verbatim, so
//!   `[endpoints."eu.prices"]` and `[endpoints.Prices]` arrive as written;
//! - the environment source lowercases the whole variable name before turning `__` into `.`, so an
//!   override always lands on a lowercase key. By itself `WS_SIDECAR__ENDPOINTS__PRICES__URL` would
//!   create a second endpoint `prices` next to the file's `Prices`; [`fold_env_case`] merges such
//!   environment-only keys into the one file key that differs only in case (or in `-` written as
//!   `_`), which makes overrides work for mixed-case endpoint and header names. A name containing `.` cannot be reached from
//!   the environment at all (the dot separates path segments there).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Value, ValueKind};

use super::endpoint::read_endpoint;
use super::listeners::{mode, optional, read_grpc, read_stream, tcp_addr};
use super::value::{closest, integer, only_from_env, size, string, Node, Report, Table};
use super::{Config, HttpConfig, LimitsConfig, LogConfig, LogFormat, SocketsConfig, StoreConfig};
use crate::paths::{process_env, Dirs};

/// Every problem found in a config file, one `<file>: <key.path>: <what is wrong>` line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The lines, in the order the loader met the problems.
    pub errors: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.errors.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

/// Reads `path` and the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        errors: vec![format!("{}: cannot read file: {e}", path.display())],
    })?;
    // Variables that are not Unicode cannot be config overrides; skipping them beats refusing to
    // start over an unrelated variable.
    load_str(&text, path, &process_env())
}

/// Loads `text` as if read from `source`, with `env` standing in for the process environment
/// (overrides and `$RUNTIME_DIRECTORY`/`$STATE_DIRECTORY`).
pub fn load_str(
    text: &str,
    source: &Path,
    env: &HashMap<String, String>,
) -> Result<Config, ConfigError> {
    let mut r = Report::new(source.display().to_string());
    match walk(&mut r, text, source, env) {
        Some(config) if r.errors.is_empty() => Ok(config),
        _ => Err(ConfigError { errors: r.errors }),
    }
}

/// What `check-config` needs besides the verdict: the errors, and whatever could be read
/// despite them, so warnings about the rest of the file are not hidden behind one typo.
#[derive(Debug)]
pub struct Lenient {
    /// Every problem, as [`ConfigError`] lists them; empty when the file is valid.
    pub errors: Vec<String>,
    /// The config, complete when `errors` is empty; otherwise the parts that were valid (an
    /// endpoint with a fatal problem left out, a bad value at its default). `None` when the file
    /// could not be read or parsed at all.
    pub config: Option<Config>,
}

/// Reads `path` like [`load`], keeping what was valid even when something was not.
pub fn load_lenient(path: &Path) -> Lenient {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Lenient {
                errors: vec![format!("{}: cannot read file: {e}", path.display())],
                config: None,
            }
        }
    };
    let env = process_env();
    let mut r = Report::new(path.display().to_string());
    let config = walk(&mut r, &text, path, &env);
    Lenient {
        errors: r.errors,
        config,
    }
}

pub(super) fn walk(
    r: &mut Report,
    text: &str,
    source: &Path,
    env: &HashMap<String, String>,
) -> Option<Config> {
    merged_tree(r, text, env).and_then(|mut tree| {
        fold_env_case(&mut tree);
        if !r.placeholders_ok {
            super::placeholder::check(r, &Node::root(&tree));
        }
        read_config(
            r,
            &tree,
            source,
            &Dirs::resolve(env, crate::paths::system_places()),
        )
    })
}

fn merged_tree(r: &mut Report, text: &str, env: &HashMap<String, String>) -> Option<Value> {
    let vars: config::Map<String, String> =
        env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        // No try_parsing: values stay strings, and only keys that want a number convert them.
        .add_source(
            config::Environment::with_prefix("WS_SIDECAR")
                .prefix_separator("__")
                .separator("__")
                .source(Some(vars)),
        )
        .build();
    match built {
        Ok(c) => Some(c.cache),
        Err(e) => {
            let numbers = super::numbers::unrepresentable(text);
            if numbers.is_empty() {
                r.file_error(one_line(&e.to_string()));
            }
            for n in numbers {
                r.file_error(n);
            }
            None
        }
    }
}

/// The TOML parser's message is a multi-line snippet with a caret; keep the position and the
/// explanation on one line, as every other error is.
fn one_line(message: &str) -> String {
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid TOML");
    let position = first
        .strip_prefix("TOML parse error at ")
        .map(|pos| format!("TOML syntax error at {pos}"));
    // Snippet lines all contain the `|` gutter; what follows them is the explanation.
    let explanation: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .skip(1)
        .filter(|l| !l.contains('|'))
        .collect();
    match position {
        Some(pos) if !explanation.is_empty() => format!("{pos}: {}", explanation.join(" ")),
        Some(pos) => pos,
        None => std::iter::once(first)
            .chain(lines)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// True when `node` is a table holding `key`.
fn has_key(node: &Node<'_>, key: &str) -> bool {
    matches!(&node.value.kind, ValueKind::Table(map) if map.contains_key(key))
}

/// Merges each environment-only key into the one sibling whose [`env_form`] it is (see the module
/// doc for why the environment's keys are lowercase).
fn fold_env_case(value: &mut Value) {
    let ValueKind::Table(map) = &mut value.kind else {
        return;
    };
    let env_only: Vec<String> = map
        .iter()
        .filter(|(_, v)| only_from_env(v))
        .map(|(k, _)| k.clone())
        .collect();
    for key in env_only {
        let targets: Vec<&String> = map
            .iter()
            .filter(|(k, v)| **k != key && env_form(k) == key && !only_from_env(v))
            .map(|(k, _)| k)
            .collect();
        if let [target] = targets.as_slice() {
            let target = (*target).clone();
            if let (Some(src), Some(dst)) = (map.remove(&key), map.get_mut(&target)) {
                merge(dst, src);
            }
        }
    }
    for child in map.values_mut() {
        fold_env_case(child);
    }
}

/// How `key` looks after a trip through an environment variable name: lowercase, and `-` written
/// as `_` because shells and systemd's `Environment=` do not allow `-` in names.
fn env_form(key: &str) -> String {
    key.to_ascii_lowercase().replace('-', "_")
}

/// Merges `src` over `dst`: tables key by key, anything else replaced.
pub(super) fn merge(dst: &mut Value, src: Value) {
    if let (ValueKind::Table(d), ValueKind::Table(s)) = (&mut dst.kind, &src.kind) {
        for (k, v) in s {
            match d.get_mut(k) {
                Some(slot) => merge(slot, v.clone()),
                None => {
                    d.insert(k.clone(), v.clone());
                }
            }
        }
        return;
    }
    *dst = src;
}

fn read_config(r: &mut Report, tree: &Value, source: &Path, d: &Dirs) -> Option<Config> {
    let mut top = Table::open(r, &Node::root(tree))?;
    let t = top.section(r, "log");
    let log = read_log(r, t);
    let t = top.section(r, "grpc");
    let grpc = read_grpc(r, t, d);
    let t = top.section(r, "stream");
    let stream = read_stream(r, t, d, &grpc);
    let mut t = top.section(r, "sockets");
    let sockets = SocketsConfig {
        mode: t.or(r, "mode", mode, 0o660),
        group: t.opt(r, "group", non_empty),
    };
    t.finish(r);
    let mut t = top.section(r, "http");
    let default_http = SocketAddr::from((Ipv4Addr::LOCALHOST, 9750));
    let http = HttpConfig {
        listen: t.or(r, "listen", optional(tcp_addr), Some(default_http)),
    };
    t.finish(r);
    let mut t = top.section(r, "store");
    let store = StoreConfig {
        path: t.or(
            r,
            "path",
            |v| non_empty(v).map(PathBuf::from),
            d.state.join("store"),
        ),
    };
    t.finish(r);
    let mut t = top.section(r, "limits");
    let limits = LimitsConfig {
        max_subscribers: t.or(r, "max_subscribers", at_least(1), 1024),
    };
    t.finish(r);
    let cluster_node = top.get("cluster");
    let cluster = cluster_node
        .as_ref()
        .and_then(|n| super::cluster::read_cluster(r, n));

    let mut endpoints = BTreeMap::new();
    let node = top.get("endpoints");
    if node.is_none() {
        r.at(
            &top.path_of("endpoints"),
            "at least one endpoint is required",
        );
    }
    if let Some(mut t) = node.as_ref().and_then(|n| Table::open(r, n)) {
        let entries = t.entries();
        if entries.is_empty() {
            r.at(t.node(), "at least one endpoint is required");
        }
        let in_file: Vec<String> = entries
            .iter()
            .filter(|(_, n)| !n.is_from_env())
            .map(|(name, _)| name.clone())
            .collect();
        for (name, node) in entries {
            if node.is_from_env() && !has_key(&node, "url") {
                // Most likely a misspelt endpoint name in a variable: say so rather than
                // starting to validate an endpoint nobody meant.
                let hint = closest(&name, in_file.iter().map(String::as_str))
                    .map(|k| format!(", did you mean `{k}`?"))
                    .unwrap_or_default();
                r.at(
                    &node,
                    format!("no endpoint of that name in the file, and the environment sets no url for it{hint}"),
                );
                continue;
            }
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                r.at(
                    &node,
                    "invalid endpoint name: use letters, digits, '_', '.' and '-'",
                );
            }
            super::cluster::check_endpoint(r, &node, cluster_node.is_some());
            if let Some(endpoint) = read_endpoint(r, &node) {
                endpoints.insert(name, endpoint);
            }
        }
    }
    top.finish(r);

    Some(Config {
        source: source.to_path_buf(),
        log,
        grpc,
        stream,
        sockets,
        http,
        store,
        limits,
        cluster,
        endpoints,
    })
}

fn read_log(r: &mut Report, mut t: Table<'_>) -> LogConfig {
    let log = LogConfig {
        level: t.or(r, "level", log_level, "info".into()),
        format: t.or(
            r,
            "format",
            |v| {
                one_of(
                    v,
                    &[
                        ("text", LogFormat::Text),
                        ("json", LogFormat::Json),
                        ("journald", LogFormat::Journald),
                    ],
                )
            },
            LogFormat::Text,
        ),
    };
    t.finish(r);
    log
}

/// The levels of an `EnvFilter` directive (tracing-subscriber's `LevelFilter` names).
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A level (`"warn"`) or an `EnvFilter` directive list (`"info,ws_sidecar::upstream=debug"`).
/// `EnvFilter` takes a bare word for a target enabled at every level, so a misspelt level
/// (`"warnign"`) would silently turn the daemon's own log off: a bare word must be a level.
fn log_level(v: &Value) -> Result<String, String> {
    let level = string(v)?;
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[']);
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) {
            let typo = directive.to_ascii_lowercase();
            // Level names are short: a typed-on tail ("warnign") counts as close too.
            let hint = super::value::closest(&typo, LEVELS)
                .or_else(|| LEVELS.into_iter().find(|l| typo.starts_with(l)))
                .map(|l| format!(", did you mean `{l}`?"))
                .unwrap_or_default();
            return Err(format!(
                "invalid log level {directive:?}: expected one of {}, or TARGET=LEVEL \
                 directives separated by commas{hint}",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(&level)
        .map(|_| level.clone())
        .map_err(|e| format!("invalid log level {level:?}: {e}"))
}

/// A string that must not be empty.
pub(crate) fn non_empty(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s)
}

/// An integer of at least `min`.
pub(crate) fn at_least<T>(min: T) -> impl Fn(&Value) -> Result<T, String>
where
    T: TryFrom<i128> + PartialOrd + fmt::Display + Copy,
{
    move |v| {
        let n: T = integer(v)?;
        if n < min {
            return Err(format!("must be at least {min}"));
        }
        Ok(n)
    }
}

/// A size of at least `min` bytes.
pub(crate) fn size_at_least(min: usize) -> impl Fn(&Value) -> Result<usize, String> {
    move |v| {
        let n = size(v)?;
        if n < min {
            return Err(format!(
                "must be at least {}",
                super::units::format_size(min)
            ));
        }
        Ok(n)
    }
}

/// A duration greater than zero.
pub(crate) fn positive(v: &Value) -> Result<Duration, String> {
    let d = super::value::duration(v)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// One of a fixed set of lowercase words.
pub(crate) fn one_of<T: Copy>(v: &Value, choices: &[(&str, T)]) -> Result<T, String> {
    let s = string(v)?;
    if let Some((_, value)) = choices.iter().find(|(name, _)| *name == s) {
        return Ok(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    Err(format!(
        "invalid value {s:?}, expected one of {}",
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(tree: &Value, path: &[&str]) -> Vec<String> {
        let mut node = tree;
        for key in path {
            match &node.kind {
                ValueKind::Table(map) => node = &map[*key],
                _ => panic!("{key} is not under a table"),
            }
        }
        let ValueKind::Table(map) = &node.kind else {
            panic!("not a table");
        };
        let mut keys: Vec<String> = map.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn tree(text: &str, vars: &[(&str, &str)]) -> Value {
        let env = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut r = Report::new("c.toml".into());
        let tree = merged_tree(&mut r, text, &env).expect("valid TOML");
        assert!(r.errors.is_empty());
        tree
    }

    /// Guards the `config` crate behaviour the module doc describes, in case an upgrade changes it.
    #[test]
    fn config_crate_keeps_file_case_and_lowercases_env() {
        let text = "[endpoints.Prices]\nurl = 'ws://f'\n[endpoints.\"eu.x\"]\nurl = 'ws://g'\n";
        let vars = [("WS_SIDECAR__ENDPOINTS__MixedCase__URL", "ws://e")];
        let tree = tree(text, &vars);
        assert_eq!(keys(&tree, &["endpoints"]), ["Prices", "eu.x", "mixedcase"]);
        let ValueKind::Table(map) = &tree.kind else {
            panic!("root is a table");
        };
        let url = &map["endpoints"];
        assert!(
            !only_from_env(url),
            "file values must not look like env values"
        );
    }

    #[test]
    fn env_keys_fold_into_their_unique_file_spelling() {
        let text = "[endpoints.Feed-A]\nurl = 'ws://f'\nheaders = { X-Key = 'file' }\n";
        let vars = [
            ("WS_SIDECAR__ENDPOINTS__FEED_A__HEADERS__X_KEY", "env"),
            ("WS_SIDECAR__ENDPOINTS__FEED_A__URL", "ws://e"),
        ];
        let mut tree = tree(text, &vars);
        fold_env_case(&mut tree);
        assert_eq!(keys(&tree, &["endpoints"]), ["Feed-A"]);
        assert_eq!(keys(&tree, &["endpoints", "Feed-A", "headers"]), ["X-Key"]);
    }

    #[test]
    fn ambiguous_env_keys_are_left_alone() {
        let text = "[endpoints.Feed]\nurl = 'ws://f'\n[endpoints.FEED]\nurl = 'ws://g'\n";
        let mut tree = tree(text, &[("WS_SIDECAR__ENDPOINTS__FEED__URL", "ws://e")]);
        fold_env_case(&mut tree);
        assert_eq!(keys(&tree, &["endpoints"]), ["FEED", "Feed", "feed"]);
    }

    /// Found by the `config` fuzz target: `config` named neither key nor line for these.
    #[test]
    fn numbers_out_of_range_name_their_key() {
        let text = "[endpoints.x]\nurl = 'ws://h'\nconnect_timeout = 99999999999999999999\n\
                    drop = [{ pointer = '/a', equals = 1e999 }]\n";
        let err = load_str(text, Path::new("c.toml"), &HashMap::new()).expect_err("invalid");
        assert_eq!(
            err.errors,
            [
                "c.toml: endpoints.x.connect_timeout: integer out of range: TOML integers are \
                 64-bit (at most 9223372036854775807)",
                "c.toml: endpoints.x.drop[0].equals: float out of range: 1e999 overflows a \
                 64-bit float",
            ]
        );
    }

    #[test]
    fn parser_messages_become_one_line() {
        let raw = "TOML parse error at line 2, column 7\n  |\n2 | url = wss://x\n  |       ^\n\
                   string values must be quoted, expected literal string\n";
        assert_eq!(
            one_line(raw),
            "TOML syntax error at line 2, column 7: string values must be quoted, expected \
             literal string"
        );
        assert_eq!(one_line("something\nelse"), "something else");
    }
}
