//! `contrib/grafana/ws-sidecar.json` queries only metrics the daemon exposes: every
//! `ws_sidecar_…` name in its queries must be a family in a real `/metrics` scrape, so a rename
//! breaks this test instead of the dashboard.

use std::collections::BTreeSet;

use crate::http_async;
use crate::support::daemon::start_daemon;
use crate::support::{FakeUpstream, Reply};

const DASHBOARD: &str = include_str!("../../contrib/grafana/ws-sidecar.json");

/// Every string under a `key` field anywhere in `v`.
fn strings_at(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match v {
                    serde_json::Value::String(s) if k == key => out.push(s.clone()),
                    _ => strings_at(v, key, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings_at(v, key, out)),
        _ => {}
    }
}

/// The `ws_sidecar_…` metric names a PromQL expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ws_sidecar_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grafana_dashboard_queries_only_metrics_the_daemon_exposes() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "ws-sidecar");
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} has no query", p["title"]);
    }
    let mut exprs = Vec::new();
    strings_at(&dash, "expr", &mut exprs);
    strings_at(&dash, "definition", &mut exprs);
    let queried: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert!(queried.len() > 20, "{queried:?}");

    // With `requests`, the shared conversation's families are exposed too.
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[endpoints.a]\nurl = \"{}\"\n\
         [endpoints.a.requests]\nid = \"/id\"\n",
        up.url("/")
    ))
    .await;
    let (status, body) = http_async(d.http.expect("http listener"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    let exposed: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let unknown: Vec<&String> = queried.difference(&exposed).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the daemon does not expose: {unknown:?}"
    );
    d.stop().await;
}
