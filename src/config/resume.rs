//! Reads `endpoints.NAME.resume` (SPEC §9, extended by issues 12 and 13): the upstream's id,
//! how a position is offered (query, frame, URL), and how far ids are comparable (scope,
//! session, channels).

use super::endpoint::pointer;
use super::load::{at_least, non_empty, one_of};
use super::template::{template, url_template, Allowed};
use super::value::{boolean, string, Node, Report, Table};
use super::{IdKind, IdScope, ResumeConfig};

/// `resume`; `in_frames` are the placeholders its frame may use (plus `{{last_id}}`).
pub(super) fn read_resume(
    r: &mut Report,
    node: &Node<'_>,
    in_frames: Allowed<'_>,
) -> Option<ResumeConfig> {
    let mut t = Table::open(r, node)?;
    let id_pointer = t.required(r, "id_pointer", pointer);
    let id_kind = t.or(
        r,
        "id_kind",
        |v| {
            one_of(
                v,
                &[("integer", IdKind::Integer), ("string", IdKind::String)],
            )
        },
        IdKind::Integer,
    );
    let resume = ResumeConfig {
        id_pointer: id_pointer.unwrap_or_default(),
        id_kind,
        query: t.opt(r, "query", non_empty),
        frame: t.opt(
            r,
            "frame",
            template(Allowed {
                last_id: true,
                ..in_frames
            }),
        ),
        dedup_window: t.or(r, "dedup_window", at_least(1usize), 10_000),
        contiguous: t.or(r, "contiguous", boolean, false),
        scope: t.or(
            r,
            "scope",
            |v| {
                one_of(
                    v,
                    &[
                        ("global", IdScope::Global),
                        ("connection", IdScope::Connection),
                        ("session", IdScope::Session),
                    ],
                )
            },
            IdScope::Global,
        ),
        session: t.opt(r, "session", |v| {
            let name = string(v)?;
            match in_frames.frame {
                Some(names) if names.contains(&name) => Ok(name),
                _ => Err(format!("there is no captures.{name} to name the session")),
            }
        }),
        url: t.opt(r, "url", |v| match in_frames.frame {
            Some(names) => url_template(names)(v),
            None => url_template(&std::collections::BTreeSet::new())(v),
        }),
        channel_pointer: t.opt(r, "channel_pointer", pointer),
    };
    match (resume.scope, &resume.session) {
        (IdScope::Session, None) => r.at(
            &t.path_of("session"),
            "required key is missing (scope = \"session\" names the capture that holds the session)",
        ),
        (IdScope::Global | IdScope::Connection, Some(_)) => {
            r.at(&t.path_of("session"), "only used with scope = \"session\"")
        }
        _ => {}
    }
    if resume.channel_pointer.is_some() {
        // Each channel has its own last id: there is no one position to offer.
        for (key, set) in [
            ("query", resume.query.is_some()),
            ("frame", resume.frame.is_some()),
            ("url", resume.url.is_some()),
        ] {
            if set {
                r.at(
                    &t.path_of(key),
                    "cannot be used with channel_pointer: each channel has its own last id, so there is no one position to offer",
                );
            }
        }
    }
    if resume.contiguous && resume.id_kind == IdKind::String {
        r.at(
            &t.path_of("contiguous"),
            "only applies to id_kind = \"integer\"",
        );
    }
    if resume.scope == IdScope::Connection {
        // Ids that start again on every connection name no position another connection could
        // resume from: an offer would ask the upstream for the wrong thing.
        for key in ["query", "frame", "url"] {
            let set = match key {
                "query" => resume.query.is_some(),
                "frame" => resume.frame.is_some(),
                _ => resume.url.is_some(),
            };
            if set {
                r.at(
                    &t.path_of(key),
                    "cannot be used with scope = \"connection\": ids that start again on every connection are no position to resume from",
                );
            }
        }
    }
    t.finish(r);
    Some(resume)
}
