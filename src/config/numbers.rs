//! Finds the TOML numbers the `config` crate cannot hold (integers beyond 64 bits, floats that
//! overflow), each with its key path: `config` rejects them with a bare "number too large to fit
//! in target type", naming neither key nor line, and SPEC §4 wants every error to name its key.

use toml::de::{DeTable, DeValue};

use super::value::join_key;

/// `<key.path>: <problem>` for every such number in `text`; empty when there is none, or when
/// `text` is not TOML at all (the parser's own message, with its position, covers that).
pub(super) fn unrepresentable(text: &str) -> Vec<String> {
    let Ok(table) = DeTable::parse(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    table_numbers(table.get_ref(), "", &mut out);
    out
}

fn table_numbers(t: &DeTable<'_>, path: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        value_numbers(v.get_ref(), &join_key(path, k.get_ref()), out);
    }
}

/// Mirrors the conversions `config` applies (`i64::from_str_radix`, `f64` parsing with an
/// overflow check), so exactly the values it would refuse are reported.
fn value_numbers(v: &DeValue<'_>, path: &str, out: &mut Vec<String>) {
    match v {
        DeValue::Integer(i) if i64::from_str_radix(i.as_str(), i.radix()).is_err() => {
            out.push(format!(
                "{path}: integer out of range: TOML integers are 64-bit (at most {})",
                i64::MAX
            ))
        }
        DeValue::Float(f) => {
            let overflow = match f.as_str().parse::<f64>() {
                Ok(x) => x.is_infinite() && !f.as_str().contains("inf"),
                Err(_) => true,
            };
            if overflow {
                out.push(format!(
                    "{path}: float out of range: {} overflows a 64-bit float",
                    f.as_str()
                ));
            }
        }
        DeValue::Table(t) => table_numbers(t, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                value_numbers(item.get_ref(), &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}
