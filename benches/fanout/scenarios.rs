//! The scenarios of each mode, their names, and which baseline each is compared with.

use crate::common::publish::{PAYLOAD, PUBLISHERS};
use crate::runs::{Run, Transport};
use crate::Args;

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    B1 {
        payload: usize,
    },
    B2 {
        n: usize,
        payload: usize,
    },
    B3 {
        n: usize,
        payload: usize,
    },
    /// websocat bridging the upstream to a Unix socket read by `n` readers.
    B4 {
        n: usize,
        payload: usize,
    },
    Fan {
        t: Transport,
        n: usize,
        payload: usize,
        text: bool,
    },
    /// 9 reading subscribers and one that never reads, 64 B.
    Stalled {
        t: Transport,
    },
    /// Open-loop at 50% of the N=10 64 B gRPC-UDS saturation rate; `t = None` is B2.
    Latency {
        t: Option<Transport>,
        n: usize,
    },
    /// The publish path's baseline: one durable redb commit per insert (publish.rs's B0).
    B0,
    /// Durable publishes: publish.rs's scenario B, 64 publishers on 4 gRPC channels.
    Publish,
    Reconnect,
    Idle,
}

pub struct Scenario {
    pub name: String,
    pub kind: Kind,
    /// The scenario whose same-repetition run this one is compared with.
    pub baseline: Option<String>,
    pub runs: Vec<Run>,
}

pub fn size(p: usize) -> String {
    if p >= 1024 {
        format!("{}KiB", p / 1024)
    } else {
        format!("{p}B")
    }
}

fn name(k: &Kind) -> String {
    match *k {
        Kind::B1 { payload } => format!("B1/{}", size(payload)),
        Kind::B2 { n, payload } => format!("B2/N={n}/{}", size(payload)),
        Kind::B3 { n, payload } => format!("B3/N={n}/{}", size(payload)),
        Kind::B4 { n: 1, payload } => format!("B4/{}", size(payload)),
        Kind::B4 { n, payload } => format!("B4/N={n}/{}", size(payload)),
        Kind::Fan {
            t,
            n,
            payload,
            text,
        } => format!(
            "{}/N={n}/{}{}",
            t.name(),
            size(payload),
            if text { "/text" } else { "" }
        ),
        Kind::Stalled { t } => format!("stalled/{}/N=9+1", t.name()),
        Kind::Latency { t, n } => {
            format!("latency/{}/N={n}/64B@50%", t.map_or("B2", Transport::name))
        }
        Kind::B0 => "B0/redb-commit".into(),
        Kind::Publish => format!("publish/grpc-uds/P={PUBLISHERS}/{}", size(PAYLOAD)),
        Kind::Reconnect => "reconnect/grpc-uds/N=3".into(),
        Kind::Idle => "idle/3-endpoints".into(),
    }
}

/// The scenarios of a mode, in the order each repetition runs them (baselines interleaved).
pub fn scenarios(args: &Args) -> Vec<Scenario> {
    use Kind::*;
    use Transport::*;
    let mut v: Vec<Kind> = Vec::new();
    if args.quick {
        v.extend([
            B1 { payload: 64 },
            Fan {
                t: Uds,
                n: 1,
                payload: 64,
                text: false,
            },
            Fan {
                t: Ndjson,
                n: 1,
                payload: 64,
                text: false,
            },
            B3 {
                n: 100,
                payload: 64,
            },
            Fan {
                t: Uds,
                n: 100,
                payload: 64,
                text: false,
            },
            Fan {
                t: Ndjson,
                n: 100,
                payload: 64,
                text: false,
            },
            Fan {
                t: Uds,
                n: 10,
                payload: 64,
                text: false,
            },
            Stalled { t: Uds },
            Latency { t: None, n: 10 },
            Latency {
                t: Some(Uds),
                n: 10,
            },
            B0,
            Publish,
            Reconnect,
            Idle,
        ]);
    } else {
        for payload in [64, 1024, 64 * 1024] {
            v.push(B1 { payload });
            for n in [1, 10, 100] {
                if n > 1 {
                    v.push(B3 { n, payload });
                    if payload == 64 {
                        v.push(B2 { n, payload });
                    }
                }
                for t in [Uds, Tcp, Ndjson] {
                    v.push(Fan {
                        t,
                        n,
                        payload,
                        text: false,
                    });
                }
            }
        }
        v.push(Fan {
            t: Uds,
            n: 10,
            payload: 64,
            text: true,
        });
        v.extend([
            Stalled { t: Uds },
            Stalled { t: Ndjson },
            Latency { t: None, n: 10 },
            Latency {
                t: Some(Uds),
                n: 10,
            },
            Latency {
                t: Some(Ndjson),
                n: 10,
            },
            B0,
            Publish,
            Reconnect,
            Idle,
        ]);
    }
    // B4 right after the baseline it is compared with; N > 1 (websocat's broadcast) in full mode.
    if args.websocat.is_some() {
        v = v
            .into_iter()
            .flat_map(|k| match k {
                B1 { payload } => vec![k, B4 { n: 1, payload }],
                B3 { n, payload: 64 } if !args.quick => vec![k, B4 { n, payload: 64 }],
                _ => vec![k],
            })
            .collect();
    }
    let all: Vec<Scenario> = v
        .into_iter()
        .map(|kind| Scenario {
            name: name(&kind),
            baseline: match kind {
                Fan { n: 1, payload, .. } => Some(name(&B1 { payload })),
                Fan { n, payload, .. } => Some(name(&B3 { n, payload })),
                B2 { payload, .. } | B4 { n: 1, payload } => Some(name(&B1 { payload })),
                B4 { n, payload } => Some(name(&B3 { n, payload })),
                Stalled { t } => Some(name(&Fan {
                    t,
                    n: 10,
                    payload: 64,
                    text: false,
                })),
                Latency { t: Some(_), n } => Some(name(&Latency { t: None, n })),
                Publish => Some(name(&B0)),
                _ => None,
            },
            kind,
            runs: vec![],
        })
        .collect();
    if args.only.is_empty() {
        return all;
    }
    // Keep the named ones, their baselines, and what latency needs.
    let keep: Vec<String> = all
        .iter()
        .filter(|s| args.only.iter().any(|o| s.name.contains(o.as_str())))
        .flat_map(|s| {
            let mut k = vec![s.name.clone()];
            k.extend(s.baseline.clone());
            if matches!(s.kind, Latency { .. } | Stalled { .. }) {
                k.push(name(&Fan {
                    t: Uds,
                    n: 10,
                    payload: 64,
                    text: false,
                }));
                k.push(name(&Latency { t: None, n: 10 }));
            }
            k
        })
        .collect();
    all.into_iter().filter(|s| keep.contains(&s.name)).collect()
}
