//! The field reader under `load.rs`: walks the merged `config::Value` tree, converts leaves to
//! typed values and records every problem with its full key path instead of stopping at the first.

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use config::{Map, Value, ValueKind};

use super::units::{parse_duration, parse_size};

/// `origin()` of every value the `config` crate took from the environment.
const ENV_ORIGIN: &str = "the environment";

/// Stands in for an absent key or section, so absent and present take the same code path.
static NIL: LazyLock<Value> = LazyLock::new(|| Value::new(None, ValueKind::Nil));
static EMPTY: LazyLock<Value> = LazyLock::new(|| Value::new(None, Map::<String, Value>::new()));
static EMPTY_MAP: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

/// Every problem found so far, already formatted as `<file>: <key.path>: <what is wrong>`.
pub(crate) struct Report {
    /// The config path as the user gave it.
    source: String,
    /// One line per problem, in the order the walk met them.
    pub(crate) errors: Vec<String>,
    /// Every key path the walk asked for, when recording (the reference file's test uses it to
    /// list the keys the loader accepts).
    pub(crate) asked: Option<std::collections::BTreeSet<String>>,
    /// Accepts config/example.toml's placeholders (for the reference file's test, whose
    /// examples use them too).
    pub(crate) placeholders_ok: bool,
}

impl Report {
    /// A report for the file named `source`.
    pub(crate) fn new(source: String) -> Self {
        Report {
            source,
            errors: Vec::new(),
            asked: None,
            placeholders_ok: false,
        }
    }

    /// Records a problem with the file as a whole (syntax, I/O).
    pub(crate) fn file_error(&mut self, msg: impl fmt::Display) {
        self.errors.push(format!("{}: {msg}", self.source));
    }

    /// Records a problem at `node`, naming the environment variable when the value came from one:
    /// otherwise the user would look for it in the file.
    pub(crate) fn at(&mut self, node: &Node<'_>, msg: impl fmt::Display) {
        let mut line = format!("{}: {}: {msg}", self.source, node.path);
        if node.is_from_env() {
            line.push_str(&format!(" (set by {})", env_vars(node).join(", ")));
        }
        self.errors.push(line);
    }
}

/// The `WS_SIDECAR__…` variable that addresses `path`; paths reached by env are plain keys.
pub(crate) fn env_var_name(path: &str) -> String {
    let mut name = String::from("WS_SIDECAR");
    for part in path.split('.') {
        name.push_str("__");
        name.push_str(&part.trim_matches('"').to_ascii_uppercase());
    }
    name
}

/// The variables that set `node`: its own name for a value, every leaf's for a table (a typo
/// in a section name, `WS_SIDECAR__LOGG__LEVEL`, makes a table only the environment set).
fn env_vars(node: &Node<'_>) -> Vec<String> {
    match &node.value.kind {
        ValueKind::Table(map) if !map.is_empty() => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            keys.into_iter()
                .flat_map(|k| env_vars(&node.child(k, &map[k])))
                .collect()
        }
        _ => vec![env_var_name(&node.path)],
    }
}

/// The known key closest to `typo`, when one is close enough to be a slip of the keyboard
/// rather than a different word (case and `-`/`_` do not count: the environment loses both).
pub(crate) fn closest<'a>(typo: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let typo_norm = norm(typo);
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(&typo_norm, &norm(k)), k))
        .filter(|(d, k)| *d <= (k.chars().count().max(typo.chars().count()) / 3).max(1))
        .min()
        .map(|(_, k)| k)
}

/// One value of the tree together with its full key path, for error messages.
#[derive(Clone)]
pub(crate) struct Node<'v> {
    /// Dotted key path, e.g. `endpoints.prices.drop[0].pointer`.
    pub(crate) path: String,
    pub(crate) value: &'v Value,
}

impl<'v> Node<'v> {
    /// The root of the tree; its children have paths without a leading dot.
    pub(crate) fn root(value: &'v Value) -> Self {
        Node {
            path: String::new(),
            value,
        }
    }

    /// The child `key` of this node (which must be a table for the path to make sense).
    pub(crate) fn child(&self, key: &str, value: &'v Value) -> Node<'v> {
        Node {
            path: join_key(&self.path, key),
            value,
        }
    }

    /// True when every leaf under this node came from an environment variable.
    pub(crate) fn is_from_env(&self) -> bool {
        only_from_env(self.value)
    }

    /// Converts the value, recording `conv`'s complaint at this key path.
    pub(crate) fn to<T>(
        &self,
        r: &mut Report,
        conv: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<T> {
        conv(self.value).map_err(|e| r.at(self, e)).ok()
    }

    /// The elements of an array value, each with an indexed path; an error if not an array.
    /// An environment variable cannot hold an array, so a string from one is a one-element list.
    pub(crate) fn items(&self, r: &mut Report) -> Vec<Node<'v>> {
        match &self.value.kind {
            ValueKind::String(_) if self.is_from_env() => vec![self.clone()],
            ValueKind::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, value)| Node {
                    path: format!("{}[{i}]", self.path),
                    value,
                })
                .collect(),
            other => {
                r.at(
                    self,
                    format!("expected an array, found {}", kind_name(other)),
                );
                Vec::new()
            }
        }
    }

    /// Each element of an array converted with `conv`; bad elements are reported and skipped.
    pub(crate) fn list<T>(
        &self,
        r: &mut Report,
        conv: impl Fn(&Value) -> Result<T, String>,
    ) -> Vec<T> {
        self.items(r)
            .iter()
            .filter_map(|item| item.to(r, &conv))
            .collect()
    }
}

pub(crate) fn only_from_env(value: &Value) -> bool {
    match &value.kind {
        ValueKind::Table(map) => !map.is_empty() && map.values().all(only_from_env),
        ValueKind::Array(items) => !items.is_empty() && items.iter().all(only_from_env),
        _ => value.origin() == Some(ENV_ORIGIN),
    }
}

/// Keys that are not plain identifiers (an endpoint named `eu.prices`) are quoted as TOML would.
pub(crate) fn join_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if plain {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// A table being read. Keys never asked for are reported by `finish` as unknown, which is how
/// "unknown keys are errors" holds at every level without a list of valid keys to keep in sync.
pub(crate) struct Table<'v> {
    node: Node<'v>,
    map: &'v Map<String, Value>,
    used: HashSet<String>,
}

impl<'v> Table<'v> {
    /// Opens `node` as a table; reports and returns `None` if it is anything else.
    pub(crate) fn open(r: &mut Report, node: &Node<'v>) -> Option<Self> {
        match &node.value.kind {
            ValueKind::Table(map) => Some(Table {
                node: node.clone(),
                map,
                used: HashSet::new(),
            }),
            other => {
                r.at(
                    node,
                    format!("expected a table, found {}", kind_name(other)),
                );
                None
            }
        }
    }

    /// The table's own node, to report a problem that involves several of its keys.
    pub(crate) fn node(&self) -> &Node<'v> {
        &self.node
    }

    /// The node a key would have, present or not, for errors about a missing or conflicting key.
    pub(crate) fn path_of(&self, key: &str) -> Node<'v> {
        Node {
            path: join_key(&self.node.path, key),
            value: self.map.get(key).unwrap_or(&NIL),
        }
    }

    /// True when `key` is present (without marking it as read).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The value under `key`; reports its absence.
    pub(crate) fn need(&mut self, r: &mut Report, key: &str) -> Option<Node<'v>> {
        let node = self.get(key);
        if node.is_none() {
            r.at(&self.path_of(key), "required key is missing");
        }
        node
    }

    /// The sub-table `key`, or an empty one when absent (so its defaults apply) or not a table
    /// (reported).
    pub(crate) fn section(&mut self, r: &mut Report, key: &str) -> Table<'v> {
        let node = self.get(key).unwrap_or_else(|| Node {
            path: join_key(&self.node.path, key),
            value: &EMPTY,
        });
        Table::open(r, &node).unwrap_or(Table {
            node,
            map: &EMPTY_MAP,
            used: HashSet::new(),
        })
    }

    /// The value under `key`, if present; marks the key as known.
    pub(crate) fn get(&mut self, key: &str) -> Option<Node<'v>> {
        self.used.insert(key.to_owned());
        self.map.get(key).map(|value| self.node.child(key, value))
    }

    /// `key` converted with `conv`; `None` when absent or invalid (the latter reported).
    pub(crate) fn opt<T>(
        &mut self,
        r: &mut Report,
        key: &str,
        conv: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<T> {
        self.get(key).and_then(|node| node.to(r, conv))
    }

    /// `key` converted with `conv`, or `default` when absent or invalid.
    pub(crate) fn or<T>(
        &mut self,
        r: &mut Report,
        key: &str,
        conv: impl Fn(&Value) -> Result<T, String>,
        default: T,
    ) -> T {
        self.opt(r, key, conv).unwrap_or(default)
    }

    /// `key` converted with `conv`; reports its absence.
    pub(crate) fn required<T>(
        &mut self,
        r: &mut Report,
        key: &str,
        conv: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<T> {
        self.need(r, key).and_then(|node| node.to(r, conv))
    }

    /// Every entry, sorted by key, for tables whose keys are names chosen by the user.
    pub(crate) fn entries(&mut self) -> Vec<(String, Node<'v>)> {
        let mut keys: Vec<&String> = self.map.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|key| {
                self.used.insert(key.clone());
                (key.clone(), self.node.child(key, &self.map[key]))
            })
            .collect()
    }

    /// Reports every key nobody asked for.
    pub(crate) fn finish(self, r: &mut Report) {
        if let Some(asked) = &mut r.asked {
            asked.extend(self.used.iter().map(|k| join_key(&self.node.path, k)));
        }
        let mut unknown: Vec<(&String, &Value)> = self
            .map
            .iter()
            .filter(|(key, _)| !self.used.contains(*key))
            .collect();
        unknown.sort_by(|a, b| a.0.cmp(b.0));
        let mut known: Vec<&str> = self.used.iter().map(String::as_str).collect();
        // Sorted, so a tie between two equally close keys always suggests the same one.
        known.sort_unstable();
        for (key, value) in unknown {
            let node = self.node.child(key, value);
            let hint = match closest(key, known.iter().copied()) {
                // The variable to set instead, since that is where the typo is.
                Some(k) if node.is_from_env() => format!(
                    ", did you mean `{k}` ({})?",
                    env_var_name(&join_key(&self.node.path, k))
                ),
                Some(k) => format!(", did you mean `{k}`?"),
                None => String::new(),
            };
            r.at(&node, format!("unknown key{hint}"));
        }
    }
}

/// A type name for messages. Values themselves are never echoed in type errors: the value might
/// be a secret written where a table was expected.
pub(crate) fn kind_name(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

/// A string exactly as written; other types are refused, never converted.
pub(crate) fn string(v: &Value) -> Result<String, String> {
    match &v.kind {
        ValueKind::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, found {}", kind_name(other))),
    }
}

/// A boolean, or a string `true`/`false` (environment values are always strings).
pub(crate) fn boolean(v: &Value) -> Result<bool, String> {
    match &v.kind {
        ValueKind::Boolean(b) => Ok(*b),
        ValueKind::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        ValueKind::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        ValueKind::String(s) => Err(format!("invalid boolean {s:?}, expected true or false")),
        other => Err(format!("expected a boolean, found {}", kind_name(other))),
    }
}

fn int128(v: &Value) -> Result<i128, String> {
    match &v.kind {
        ValueKind::I64(n) => Ok(i128::from(*n)),
        ValueKind::I128(n) => Ok(*n),
        ValueKind::U64(n) => Ok(i128::from(*n)),
        ValueKind::U128(n) => i128::try_from(*n).map_err(|_| format!("{n} is out of range")),
        ValueKind::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("invalid integer {s:?}")),
        other => Err(format!("expected an integer, found {}", kind_name(other))),
    }
}

/// An integer (or a string holding one) that fits `T`.
pub(crate) fn integer<T: TryFrom<i128>>(v: &Value) -> Result<T, String> {
    let n = int128(v)?;
    T::try_from(n).map_err(|_| format!("{n} is out of range"))
}

/// A finite number (integer, float, or a string holding one).
pub(crate) fn number(v: &Value) -> Result<f64, String> {
    let x = match &v.kind {
        ValueKind::Float(x) => *x,
        ValueKind::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("invalid number {s:?}"))?,
        // Precision loss above 2^53 is irrelevant for the multipliers this reads.
        _ => int128(v)? as f64,
    };
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("{x} is not a finite number"))
    }
}

/// What a duration error shows, so the fix is in the message.
pub(crate) const DURATION_EXAMPLES: &str =
    "expected a duration like \"500ms\", \"30s\", \"5m\", \"1h30m\" (units ns, us, ms, s, m, h, d)";

/// What a size error shows.
pub(crate) const SIZE_EXAMPLES: &str =
    "expected a size like \"512B\", \"64KiB\", \"16MiB\", \"1GiB\", \"1MB\" or a number of bytes";

/// A human duration string such as `"1m30s"`.
pub(crate) fn duration(v: &Value) -> Result<Duration, String> {
    match &v.kind {
        ValueKind::String(s) => {
            parse_duration(s).ok_or_else(|| format!("invalid duration {s:?}: {DURATION_EXAMPLES}"))
        }
        other => Err(format!("{DURATION_EXAMPLES}, found {}", kind_name(other))),
    }
}

/// A size: a `"16MiB"`-style string, or an integer (or numeric string) of bytes.
pub(crate) fn size(v: &Value) -> Result<usize, String> {
    match &v.kind {
        ValueKind::String(s) => {
            parse_size(s).ok_or_else(|| format!("invalid size {s:?}: {SIZE_EXAMPLES}"))
        }
        ValueKind::Float(_) => Err(format!("{SIZE_EXAMPLES}, found a float")),
        _ => integer(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn val(kind: impl Into<ValueKind>) -> Value {
        Value::new(None, kind)
    }

    #[test]
    fn scalars_accept_strings_that_parse() {
        assert_eq!(integer::<u32>(&val("42")), Ok(42));
        assert_eq!(integer::<u32>(&val(42i64)), Ok(42));
        assert!(integer::<u32>(&val(-1i64)).is_err());
        assert!(integer::<u32>(&val("4x")).is_err());
        assert_eq!(boolean(&val("TRUE")), Ok(true));
        assert!(boolean(&val("yes")).is_err());
        assert_eq!(number(&val("1.5")), Ok(1.5));
        assert_eq!(number(&val(2i64)), Ok(2.0));
        assert!(number(&val(f64::NAN)).is_err());
        assert_eq!(size(&val(1024i64)), Ok(1024));
        assert_eq!(size(&val("2KiB")), Ok(2048));
    }

    #[test]
    fn strings_are_never_converted() {
        assert_eq!(string(&val("00123")), Ok("00123".to_owned()));
        let err = string(&val(123i64)).unwrap_err();
        assert_eq!(err, "expected a string, found an integer");
        assert!(!err.contains("123"), "type errors must not echo the value");
    }

    fn table(entries: &[(&str, Value)]) -> Value {
        let map: Map<String, Value> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        val(map)
    }

    #[test]
    fn reader_reports_every_problem_with_its_path() {
        let inner = table(&[("ping_interval", val("soon")), ("pingg", val(1i64))]);
        let root = table(&[("heartbeat", inner), ("eu.prices", val(true))]);
        let mut r = Report::new("c.toml".into());
        let mut top = Table::open(&mut r, &Node::root(&root)).expect("a table");
        let hb_node = top.get("heartbeat").expect("present");
        let mut hb = Table::open(&mut r, &hb_node).expect("a table");
        assert_eq!(hb.or(&mut r, "ping_interval", duration, ms(1)), ms(1));
        assert_eq!(hb.opt(&mut r, "pong_timeout", duration), None);
        assert_eq!(hb.required(&mut r, "idle", duration), None);
        hb.finish(&mut r);
        top.finish(&mut r);
        assert_eq!(
            r.errors,
            [
                "c.toml: heartbeat.ping_interval: invalid duration \"soon\": expected a duration \
                 like \"500ms\", \"30s\", \"5m\", \"1h30m\" (units ns, us, ms, s, m, h, d)",
                "c.toml: heartbeat.idle: required key is missing",
                "c.toml: heartbeat.pingg: unknown key",
                "c.toml: \"eu.prices\": unknown key",
            ]
        );
    }

    #[test]
    fn env_values_name_their_variable() {
        let env = String::from(ENV_ORIGIN);
        let log = table(&[
            ("level", Value::new(Some(&env), "loud")),
            ("format", val("loud")),
        ]);
        let root = table(&[("log", log)]);
        let mut r = Report::new("c.toml".into());
        let mut top = Table::open(&mut r, &Node::root(&root)).expect("a table");
        let log = top.section(&mut r, "log");
        assert!(!log.node().is_from_env(), "mixed origins");
        let mut log = log;
        assert_eq!(log.opt(&mut r, "level", boolean), None);
        assert_eq!(log.opt(&mut r, "format", boolean), None);
        assert_eq!(
            r.errors,
            [
                "c.toml: log.level: invalid boolean \"loud\", expected true or false \
                 (set by WS_SIDECAR__LOG__LEVEL)",
                "c.toml: log.format: invalid boolean \"loud\", expected true or false",
            ]
        );
    }

    #[test]
    fn absent_section_reads_as_empty_table() {
        let root = table(&[("grpc", val(3i64))]);
        let mut r = Report::new("c.toml".into());
        let mut top = Table::open(&mut r, &Node::root(&root)).expect("a table");
        let mut log = top.section(&mut r, "log");
        assert!(log.opt(&mut r, "level", string).is_none());
        let _ = top.section(&mut r, "grpc");
        assert_eq!(
            r.errors,
            ["c.toml: grpc: expected a table, found an integer"]
        );
    }

    #[test]
    fn env_string_stands_for_a_one_element_list() {
        let env = String::from(ENV_ORIGIN);
        let from_env = Value::new(Some(&env), "unix:/a");
        let from_file = val("unix:/a");
        let mut r = Report::new("c.toml".into());
        let node = Node::root(&from_env).child("listen", &from_env);
        assert_eq!(node.list(&mut r, string), ["unix:/a"]);
        let node = Node::root(&from_file).child("listen", &from_file);
        assert!(node.list(&mut r, string).is_empty());
        assert_eq!(
            r.errors,
            ["c.toml: listen: expected an array, found a string"]
        );
    }
}
