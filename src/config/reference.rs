//! Keeps `config/reference.toml` honest: every key the loader reads is listed there, and every
//! value it shows as a default is the one the loader uses when the key is left out.
//!
//! The file's grammar (its header says the same to readers): `# [section]` and `# key = value`
//! lines are the keys, commented out; a key line without a trailing comment shows the default,
//! one with a trailing comment (`# example`, `# required`, …) shows a value for a key whose
//! default is none or depends on the environment. Lines indented after the `#`
//! (`#   key = value`) show other forms a key takes. Everything else is prose.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::load::walk;
use super::value::{join_key, Report};
use super::{Config, ConfigError};

const REFERENCE: &str = include_str!("../../config/reference.toml");

/// Every key path the loader asks for while reading `text` (array indexes as written), and its
/// errors: the reference file's test checks that each of them is documented.
fn keys_asked(text: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut r = Report::new("reference.toml".into());
    r.asked = Some(BTreeSet::new());
    r.placeholders_ok = true;
    let _ = walk(&mut r, text, Path::new("reference.toml"), &HashMap::new());
    (r.asked.take().unwrap_or_default(), r.errors)
}

/// [`super::load_str`] for the reference file's examples, which use the placeholders.
fn load_with_placeholders(text: &str) -> Result<Config, ConfigError> {
    let mut r = Report::new("reference.toml".into());
    r.placeholders_ok = true;
    match walk(&mut r, text, Path::new("reference.toml"), &HashMap::new()) {
        Some(config) if r.errors.is_empty() => Ok(config),
        _ => Err(ConfigError { errors: r.errors }),
    }
}

/// One `# key = value` line, uncommented.
struct KeyLine {
    /// Index in [`Parsed::lines`].
    at: usize,
    /// The section it is under, e.g. `endpoints.prices.heartbeat` (empty at the top).
    section: String,
    /// The key as written (`ping_interval`, `captures.seq`).
    key: String,
    /// True when the line shows the default (it has no trailing comment).
    default: bool,
}

/// An indented `#   key = value` line: another form of a key.
struct Alternative {
    section: String,
    key: String,
    /// The line, uncommented.
    text: String,
}

struct Parsed {
    /// The file with every key and section uncommented, prose dropped.
    lines: Vec<String>,
    keys: Vec<KeyLine>,
    alternatives: Vec<Alternative>,
}

fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once(" = ")?;
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'));
    plain.then_some(key)
}

fn parse(text: &str) -> Parsed {
    let mut p = Parsed {
        lines: Vec::new(),
        keys: Vec::new(),
        alternatives: Vec::new(),
    };
    let mut section = String::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            assert!(
                line.is_empty() || line.starts_with('#'),
                "reference.toml: every key is commented out, found {line:?}"
            );
            continue;
        };
        if let Some(header) = rest.strip_prefix('[') {
            let name = header.split(']').next().unwrap_or_default();
            section = name.to_owned();
            p.lines.push(format!("[{name}]"));
        } else if let Some(key) = key_of(rest) {
            p.keys.push(KeyLine {
                at: p.lines.len(),
                section: section.clone(),
                key: key.to_owned(),
                default: !rest.contains("  #"),
            });
            p.lines.push(rest.to_owned());
        } else if let Some(key) = rest
            .strip_prefix("  ")
            .and_then(|alt| key_of(alt.trim_start()))
        {
            p.alternatives.push(Alternative {
                section: section.clone(),
                key: key.to_owned(),
                text: rest.trim_start().to_owned(),
            });
        }
    }
    p
}

fn load(text: &str) -> Result<super::Config, Vec<String>> {
    load_with_placeholders(text).map_err(|e| e.errors)
}

/// Every key path in a TOML text, array indexes written `[]`.
fn paths_in(text: &str, prefix: &str, out: &mut BTreeSet<String>) {
    use config::{Value, ValueKind};
    let tree = match config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
    {
        Ok(c) => c.cache,
        Err(e) => panic!("reference.toml does not parse once uncommented: {e}\n{text}"),
    };
    fn walk(path: &str, v: &Value, out: &mut BTreeSet<String>) {
        match &v.kind {
            ValueKind::Table(t) => {
                for (k, v) in t {
                    let p = join_key(path, k);
                    out.insert(p.clone());
                    walk(&p, v, out);
                }
            }
            ValueKind::Array(items) => {
                for item in items {
                    let p = format!("{path}[]");
                    out.insert(p.clone());
                    walk(&p, item, out);
                }
            }
            _ => {}
        }
    }
    walk(prefix, &tree, out);
}

/// A key path with array indexes written `[]` and names the user chooses (endpoints, captures,
/// headers) written `*`, so an example's names need not match another's.
fn normalized(path: &str) -> String {
    let path = without_indexes(path);
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('.') {
        let named = matches!(out.last(), Some(&("endpoints" | "captures" | "headers")));
        out.push(if named { "*" } else { part });
    }
    out.join(".")
}

/// `a.b[3].c` → `a.b[].c`.
fn without_indexes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

#[test]
fn reference_loads_once_uncommented() {
    let p = parse(REFERENCE);
    if let Err(errors) = load(&p.lines.join("\n")) {
        panic!(
            "reference.toml, uncommented, is refused:\n{}",
            errors.join("\n")
        );
    }
}

#[test]
fn every_default_shown_is_the_loaders() {
    let p = parse(REFERENCE);
    let all = load(&p.lines.join("\n")).expect("loads (see the other test)");
    let mut wrong = Vec::new();
    for k in p.keys.iter().filter(|k| k.default) {
        let mut lines = p.lines.clone();
        lines.remove(k.at);
        match load(&lines.join("\n")) {
            Ok(without) if without == all => {}
            Ok(_) => wrong.push(format!(
                "{}: {}",
                join_key(&k.section, &k.key),
                p.lines[k.at]
            )),
            Err(e) => wrong.push(format!(
                "{}: refused without it: {}",
                join_key(&k.section, &k.key),
                e.join("; ")
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "reference.toml shows values that are not the defaults (mark an example with a \
         trailing comment):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_key_the_loader_reads_is_listed() {
    let p = parse(REFERENCE);
    let mut listed = BTreeSet::new();
    paths_in(&p.lines.join("\n"), "", &mut listed);
    for alt in &p.alternatives {
        paths_in(&alt.text, &alt.section, &mut listed);
    }
    let listed: BTreeSet<String> = listed.iter().map(|k| normalized(k)).collect();
    // The uncommented file, and the file with each other form swapped in, so the loader walks
    // the tables only those forms open (an OAuth2 token, a discovered URL, a step table…).
    let mut texts = vec![p.lines.join("\n")];
    for alt in &p.alternatives {
        let mut lines = p.lines.clone();
        let same = p
            .keys
            .iter()
            .find(|k| k.section == alt.section && k.key == alt.key);
        match same {
            Some(k) => lines[k.at] = alt.text.clone(),
            None => {
                let header = format!("[{}]", alt.section);
                let at = lines.iter().position(|l| *l == header).map_or(0, |i| i + 1);
                lines.insert(at, alt.text.clone());
            }
        }
        texts.push(lines.join("\n"));
    }
    let mut missing = BTreeSet::new();
    for text in &texts {
        let (asked, errors) = keys_asked(text);
        let unknown: Vec<&String> = errors
            .iter()
            .filter(|e| e.contains("unknown key"))
            .collect();
        assert!(
            unknown.is_empty(),
            "reference.toml shows a key the loader does not know: {unknown:?}"
        );
        for key in asked {
            let key = normalized(&key);
            // The forms of a secret reference and of a condition are explained once, at the
            // top; what matters is that the key holding one is listed.
            let explained_once = ["env", "file", "command", "pointer", "equals", "text"]
                .iter()
                .any(|f| {
                    key.strip_suffix(&format!(".{f}"))
                        .is_some_and(|parent| listed.contains(parent))
                });
            if !listed.contains(&key) && !explained_once {
                missing.insert(key);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys the loader reads that reference.toml does not list:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_grammar_is_read_as_documented() {
    let p = parse(
        "# Prose, even with = in it.\n# [s]\n# a = 1\n# b = \"x\"  # example\n#   b = { env = \"B\" }\n",
    );
    assert_eq!(p.lines, ["[s]", "a = 1", "b = \"x\"  # example"]);
    let keys: Vec<(&str, bool)> = p.keys.iter().map(|k| (k.key.as_str(), k.default)).collect();
    assert_eq!(keys, [("a", true), ("b", false)]);
    assert_eq!(p.alternatives.len(), 1);
    assert_eq!(
        normalized("endpoints.p.on_connect[12].expect"),
        "endpoints.*.on_connect[].expect"
    );
    assert_eq!(
        normalized("endpoints.p.headers.X-A"),
        "endpoints.*.headers.*"
    );
}
