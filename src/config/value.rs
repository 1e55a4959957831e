//! The field reader under `load.rs`: walks the merged `config::Value` tree, converts leaves to
//! typed values and records every problem with its full key path instead of stopping at the first.
//!
//! Also owns the human duration and size syntax, both ways (parse for the file, format for
//! `check-config`), so the two can never drift apart.

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use config::{Map, Value, ValueKind};

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
}

impl Report {
    /// A report for the file named `source`.
    pub(crate) fn new(source: String) -> Self {
        Report {
            source,
            errors: Vec::new(),
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
            line.push_str(&format!(" (set by {})", env_var_name(&node.path)));
        }
        self.errors.push(line);
    }
}

/// The `WS_SIDECAR__…` variable that addresses `path`; paths reached by env are plain keys.
fn env_var_name(path: &str) -> String {
    let mut name = String::from("WS_SIDECAR");
    for part in path.split('.') {
        name.push_str("__");
        name.push_str(&part.trim_matches('"').to_ascii_uppercase());
    }
    name
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
        let mut unknown: Vec<(&String, &Value)> = self
            .map
            .iter()
            .filter(|(key, _)| !self.used.contains(*key))
            .collect();
        unknown.sort_by(|a, b| a.0.cmp(b.0));
        for (key, value) in unknown {
            r.at(&self.node.child(key, value), "unknown key");
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

/// A human duration string such as `"1m30s"`.
pub(crate) fn duration(v: &Value) -> Result<Duration, String> {
    match &v.kind {
        ValueKind::String(s) => parse_duration(s).ok_or_else(|| format!("invalid duration {s:?}")),
        other => Err(format!(
            "expected a duration string such as \"20s\", found {}",
            kind_name(other)
        )),
    }
}

/// A size: a `"16MiB"`-style string, or an integer (or numeric string) of bytes.
pub(crate) fn size(v: &Value) -> Result<usize, String> {
    match &v.kind {
        ValueKind::String(s) => parse_size(s).ok_or_else(|| format!("invalid size {s:?}")),
        ValueKind::Float(_) => Err("expected a size such as \"16MiB\", found a float".into()),
        _ => integer(v),
    }
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses `"500ms"`, `"1m30s"`, `"1.5s"`, `"1h 30m"` or `"0"`; units ns, us (µs), ms, s, m, h, d.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let (number, after) = split_number(rest)?;
        let unit_len = after
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3_600 * NANOS_PER_SEC,
            "d" => 86_400 * NANOS_PER_SEC,
            _ => return None,
        };
        nanos = nanos.checked_add(scale_decimal(number, scale)?)?;
        rest = tail.trim_start();
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    // The remainder is below 10^9, so it fits.
    Some(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

/// Parses `"16MiB"`, `"64 KiB"`, `"1MB"` (10^6), `"512B"` or `"1048576"`; units are
/// case-insensitive, fractions round down to whole bytes.
pub(crate) fn parse_size(text: &str) -> Option<usize> {
    let (number, unit) = split_number(text.trim())?;
    let scale: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    usize::try_from(scale_decimal(number, scale)?).ok()
}

/// Splits a leading unsigned decimal (`"1.5"`) from the rest; `None` if there is none.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, rest) = s.split_at(end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let dots = number.len() - digits;
    (digits > 0 && dots <= 1).then_some((number, rest))
}

/// `number × scale` in integers, so `"0.1s"` is exactly 100ms; digits beyond 18 decimals are
/// dropped (they are far below a nanosecond or a byte).
fn scale_decimal(number: &str, scale: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let frac = &frac[..frac.len().min(18)];
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int.checked_mul(scale)?;
    if !frac.is_empty() {
        let frac_value: u128 = frac.parse().ok()?;
        let denominator = 10u128.pow(frac.len() as u32);
        total = total.checked_add(frac_value.checked_mul(scale)? / denominator)?;
    }
    Some(total)
}

/// Formats a duration in the syntax `parse_duration` reads, exactly (`"1m30s"`, `"500ms"`).
pub(crate) fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let mut nanos = d.as_nanos();
    let mut out = String::new();
    for (unit, scale) in [
        ("d", 86_400 * NANOS_PER_SEC),
        ("h", 3_600 * NANOS_PER_SEC),
        ("m", 60 * NANOS_PER_SEC),
        ("s", NANOS_PER_SEC),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        if nanos >= scale {
            out.push_str(&format!("{}{unit}", nanos / scale));
            nanos %= scale;
        }
    }
    out
}

/// Formats a size in the syntax `parse_size` reads, exactly (`"16MiB"`, `"1MB"`, `"1500B"`).
pub(crate) fn format_size(bytes: usize) -> String {
    let n = bytes as u128;
    for (unit, scale) in [
        ("TiB", 1u128 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("kB", 1_000),
    ] {
        if n >= scale && n.is_multiple_of(scale) {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(ms(500)));
        assert_eq!(parse_duration("20s"), Some(ms(20_000)));
        assert_eq!(parse_duration("5m"), Some(ms(300_000)));
        assert_eq!(parse_duration("1h"), Some(ms(3_600_000)));
        assert_eq!(parse_duration("1m30s"), Some(ms(90_000)));
        assert_eq!(parse_duration("1h 30m"), Some(ms(5_400_000)));
        assert_eq!(parse_duration("1.5s"), Some(ms(1_500)));
        assert_eq!(parse_duration("0.1s"), Some(ms(100)));
        assert_eq!(parse_duration("2d"), Some(ms(172_800_000)));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_duration(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in [
            "",
            "10",
            "ten seconds",
            "s",
            "1.2.3s",
            "-1s",
            "5 sec",
            "1x",
            "1s2",
            "99999999999999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("1MB"), Some(1_000_000));
        assert_eq!(parse_size("1 kib"), Some(1024));
        assert_eq!(parse_size("1.5KiB"), Some(1536));
        assert_eq!(parse_size("1048576"), Some(1_048_576));
        for bad in ["", "MiB", "16 MiBs", "-1", "1.2.3B", "16Mi"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for d in [ms(500), ms(90_000), ms(1_500), ms(3_600_000), ms(1)] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
        assert_eq!(format_duration(ms(90_000)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for n in [16 << 20, 1_000_000, 1500, 1, 64 << 10] {
            assert_eq!(parse_size(&format_size(n)), Some(n));
        }
        assert_eq!(format_size(16 << 20), "16MiB");
        assert_eq!(format_size(1_000_000), "1MB");
        assert_eq!(format_size(1500), "1500B");
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
                "c.toml: heartbeat.ping_interval: invalid duration \"soon\"",
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
