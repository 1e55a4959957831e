//! Upstream resume (SPEC §9): reads the upstream's own id from each message, drops what was
//! already delivered, detects jumps and resets, and offers the last id on reconnect (query
//! and/or frame).

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher as _;

use crate::config::{IdKind, IdScope, ResumeConfig};
use crate::dialogue::template::{frame, Missing, Values};
use crate::secret::SecretString;

/// The upstream's id of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamId {
    Int(u64),
    Str(String),
}

impl UpstreamId {
    /// The form kept in the store: `i:<n>` or `s:<text>`.
    pub fn encode(&self) -> String {
        match self {
            UpstreamId::Int(n) => format!("i:{n}"),
            UpstreamId::Str(s) => format!("s:{s}"),
        }
    }

    /// Reads [`encode`](Self::encode)'s form back; `None` for anything else.
    pub fn decode(s: &str) -> Option<UpstreamId> {
        if let Some(n) = s.strip_prefix("i:") {
            return n.parse().ok().map(UpstreamId::Int);
        }
        s.strip_prefix("s:").map(|t| UpstreamId::Str(t.to_owned()))
    }
}

impl std::fmt::Display for UpstreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamId::Int(n) => write!(f, "{n}"),
            UpstreamId::Str(s) => f.write_str(s),
        }
    }
}

/// What resume remembers of the ids delivered: the last one and, with the hash of their
/// payload, the most recent ones (oldest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub last: Option<UpstreamId>,
    pub recent: Vec<(UpstreamId, u64)>,
}

/// A break in the upstream's ids before a delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// Integer ids `from..=to` never arrived (`contiguous = true`).
    Gap(u64, u64),
    /// The upstream's ids started again: the last id delivered before, and this message's id
    /// (for string ids: the same id came back with other content).
    Reset(UpstreamId, UpstreamId),
}

/// What to do with an inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fan it out, after reporting the break in ids before it, if any.
    Deliver(Option<Break>),
    /// Already delivered: drop it.
    Duplicate,
}

/// The resume query parameter, offering the last id on a URL (see [`Resume::query_offer`]).
#[derive(Debug, Clone)]
pub struct QueryOffer {
    name: String,
    value: String,
}

impl QueryOffer {
    /// Puts the parameter in `url`, replacing one of the same name.
    pub fn apply(&self, url: &mut url::Url) {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != self.name.as_str())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut q = url.query_pairs_mut();
        q.clear();
        for (k, v) in &kept {
            q.append_pair(k, v);
        }
        q.append_pair(&self.name, &self.value);
    }
}

/// Resume state of one endpoint; outlives connections (with `scope = "global"`).
///
/// How a reset is told apart from an upstream resending what it already sent: the last
/// `dedup_window` delivered ids are remembered with a hash of their payload (kept in the store
/// too, so a restart changes nothing). An id at or below the last one is a duplicate when it is
/// remembered with the same payload, and a reset when its payload differs. An id too old to be
/// remembered is a duplicate only if it is the last id itself (an upstream resuming
/// inclusively, with a store from before ids were remembered); anything below is a reset. An
/// id never delivered that falls between remembered ones (a late message) is delivered. So a
/// reset is never silent: its data is
/// delivered, after a `Break::Reset`.
#[derive(Debug)]
pub struct Resume {
    cfg: ResumeConfig,
    last: Option<UpstreamId>,
    /// Integer ids delivered since the last reset, increasing, with their payload hash; at most
    /// `dedup_window`.
    recent_ints: VecDeque<(u64, u64)>,
    /// String ids seen recently, oldest first, bounded by `dedup_window`.
    recent: VecDeque<String>,
    /// Their payload hash; `None` for the id restored from the store, whose content is unknown.
    recent_set: HashMap<String, Option<u64>>,
    /// With `channel_pointer`: each channel's own ids, by channel.
    lanes: HashMap<String, Resume>,
    /// [`MAX_LANES`] was reached (and said in the log).
    lanes_full: bool,
}

/// Most channels followed with `channel_pointer`; messages of further channels are delivered
/// unchecked (logged once). With [`LANE_WINDOW`] this bounds the memory at about 16 MiB.
const MAX_LANES: usize = 1024;

/// Ids remembered per channel, at most.
const LANE_WINDOW: usize = 1024;

/// The payload hash remembered per id: 64 bits tell a resend from other content.
pub fn payload_hash(data: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(data);
    h.finish()
}

impl Resume {
    /// Starts with `last` as the last delivered id (from the store after a restart).
    pub fn new(cfg: ResumeConfig, last: Option<UpstreamId>) -> Self {
        // An id of the other kind (the config changed) is no position at all; nor is any with
        // ids that start again on every connection.
        let last = last.filter(|l| {
            cfg.scope.outlives_connection()
                && matches!(
                    (l, cfg.id_kind),
                    (UpstreamId::Int(_), IdKind::Integer) | (UpstreamId::Str(_), IdKind::String)
                )
        });
        // Only the last string id is stored, so after a restart the window restarts with it.
        let (recent, recent_set) = match &last {
            Some(UpstreamId::Str(s)) => (
                VecDeque::from([s.clone()]),
                HashMap::from([(s.clone(), None)]),
            ),
            _ => (VecDeque::new(), HashMap::new()),
        };
        Resume {
            cfg,
            last,
            recent_ints: VecDeque::new(),
            recent,
            recent_set,
            lanes: HashMap::new(),
            lanes_full: false,
        }
    }

    /// Starts from `memory`: what a previous run of the endpoint's task (or the store, after a
    /// restart) remembered, so resends and resets are told apart as if there had been no break.
    pub fn restore(cfg: ResumeConfig, memory: Memory) -> Self {
        let mut r = Resume::new(cfg, memory.last);
        let Some(last) = r.last.clone() else {
            return r;
        };
        match last {
            UpstreamId::Int(last) => {
                // The epoch that ends with the last id: the run of increasing ids before it.
                let mut epoch: Vec<(u64, u64)> = Vec::new();
                for (id, hash) in memory.recent.iter().rev() {
                    let UpstreamId::Int(n) = *id else { break };
                    let before_it = match epoch.last() {
                        None => n <= last,
                        Some(&(later, _)) => n < later,
                    };
                    if !before_it {
                        break;
                    }
                    epoch.push((n, *hash));
                }
                epoch.reverse();
                r.recent_ints = epoch.into();
                r.trim_ints();
            }
            UpstreamId::Str(_) => {
                for (id, hash) in memory.recent {
                    if let UpstreamId::Str(s) = id {
                        if r.recent_set.insert(s.clone(), Some(hash)).is_none() {
                            r.recent.push_back(s);
                        }
                    }
                }
                while r.recent.len() > r.cfg.dedup_window.max(1) {
                    if let Some(old) = r.recent.pop_front() {
                        r.recent_set.remove(&old);
                    }
                }
            }
        }
        r
    }

    /// What a later run should start from (see [`restore`](Self::restore)).
    pub fn memory(&self) -> Memory {
        let recent = if self.recent_ints.is_empty() {
            self.recent
                .iter()
                .filter_map(|s| {
                    let hash = (*self.recent_set.get(s)?)?;
                    Some((UpstreamId::Str(s.clone()), hash))
                })
                .collect()
        } else {
            self.recent_ints
                .iter()
                .map(|&(n, h)| (UpstreamId::Int(n), h))
                .collect()
        };
        Memory {
            last: self.last.clone(),
            recent,
        }
    }

    /// How many delivered ids are remembered (`dedup_window`).
    pub fn window(&self) -> usize {
        self.cfg.dedup_window.max(1)
    }

    /// The last delivered id.
    pub fn last_id(&self) -> Option<&UpstreamId> {
        self.last.as_ref()
    }

    /// Whether ids are compared across connections (and so worth storing). Per-channel ids
    /// are not stored: after a restart each channel starts afresh.
    pub fn is_global(&self) -> bool {
        self.cfg.scope.outlives_connection() && self.cfg.channel_pointer.is_none()
    }

    /// Whether a position can be offered now: an id is known and, with `scope = "session"`,
    /// the session it belongs to is.
    pub fn is_resuming(&self, captures: &crate::dialogue::capture::Captures) -> bool {
        self.last.is_some()
            && self
                .cfg
                .session
                .as_ref()
                .is_none_or(|s| captures.get(s).is_some())
    }

    /// The capture that names the session, with `scope = "session"`.
    pub fn session_capture(&self) -> Option<&str> {
        self.cfg.session.as_deref()
    }

    /// The URL to resume on (`resume.url` filled with `captures`), when one is configured,
    /// can be filled, and is a `ws://` or `wss://` URL.
    pub fn url(&self, captures: &crate::dialogue::capture::Captures) -> Option<url::Url> {
        let template = self.cfg.url.as_ref()?;
        let values = Values {
            captures: Some(captures),
            ..Values::default()
        };
        let text = crate::dialogue::template::header(template, values).ok()?;
        match url::Url::parse(text.expose()) {
            Ok(u) if matches!(u.scheme(), "ws" | "wss") && u.host_str().is_some() => Some(u),
            _ => {
                tracing::warn!(
                    "resume.url does not make a ws:// or wss:// URL; using the configured url"
                );
                None
            }
        }
    }

    /// A new connection begins: with `scope = "connection"` its ids start afresh.
    pub fn start_connection(&mut self) {
        if self.cfg.scope == IdScope::Connection {
            self.forget();
        }
    }

    /// Forgets every id: the next message is taken as it comes (operator reset, or a new
    /// connection with `scope = "connection"`). Returns the last id there was.
    pub fn forget(&mut self) -> Option<UpstreamId> {
        self.lanes.clear();
        self.lanes_full = false;
        self.recent_ints.clear();
        self.recent.clear();
        self.recent_set.clear();
        self.last.take()
    }

    /// Extracts the id from a parsed message; `None` for messages without one (those are never
    /// deduplicated).
    pub fn extract(&self, doc: &serde_json::Value) -> Option<UpstreamId> {
        let v = doc.pointer(&self.cfg.id_pointer)?;
        match self.cfg.id_kind {
            IdKind::Integer => match v {
                serde_json::Value::Number(n) => n.as_u64().map(UpstreamId::Int),
                serde_json::Value::String(s) => s.parse().ok().map(UpstreamId::Int),
                _ => None,
            },
            IdKind::String => match v {
                serde_json::Value::String(s) => Some(UpstreamId::Str(s.clone())),
                serde_json::Value::Number(n) => Some(UpstreamId::Str(n.to_string())),
                _ => None,
            },
        }
    }

    /// Decides on message `doc` with id `id` whose payload hashes to `hash`: within its channel
    /// with `channel_pointer` (a message without one is compared with the others like it),
    /// else as [`accept`](Self::accept).
    pub fn accept_in(&mut self, doc: &serde_json::Value, id: UpstreamId, hash: u64) -> Verdict {
        let Some(channel) = self
            .cfg
            .channel_pointer
            .as_deref()
            .and_then(|p| doc.pointer(p))
        else {
            return self.accept(id, hash);
        };
        let channel = match channel {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !self.lanes.contains_key(&channel) && self.lanes.len() >= MAX_LANES {
            if !self.lanes_full {
                self.lanes_full = true;
                tracing::warn!(
                    max = MAX_LANES,
                    "resume.channel_pointer: too many channels; messages of further ones are delivered without checking their ids"
                );
            }
            return Verdict::Deliver(None);
        }
        let cfg = &self.cfg;
        let lane = self.lanes.entry(channel).or_insert_with(|| {
            let mut c = cfg.clone();
            c.channel_pointer = None;
            c.dedup_window = c.dedup_window.min(LANE_WINDOW);
            Resume::new(c, None)
        });
        let verdict = lane.accept(id, hash);
        if matches!(verdict, Verdict::Deliver(_)) {
            self.last = lane.last.clone();
        }
        verdict
    }

    /// Decides on a message with id `id` whose payload hashes to `hash` (see
    /// [`payload_hash`]), and records it when delivered.
    pub fn accept(&mut self, id: UpstreamId, hash: u64) -> Verdict {
        match id {
            UpstreamId::Int(n) => self.accept_int(n, hash),
            UpstreamId::Str(s) => self.accept_str(s, hash),
        }
    }

    fn accept_int(&mut self, n: u64, hash: u64) -> Verdict {
        let last = match self.last {
            Some(UpstreamId::Int(l)) => l,
            _ => {
                self.record_int(n, hash);
                return Verdict::Deliver(None);
            }
        };
        if n > last {
            let gap = (self.cfg.contiguous && n > last + 1).then(|| Break::Gap(last + 1, n - 1));
            self.record_int(n, hash);
            return Verdict::Deliver(gap);
        }
        let oldest = self.recent_ints.front().map(|e| e.0);
        match self.recent_ints.binary_search_by_key(&n, |e| e.0) {
            Ok(i) if self.recent_ints[i].1 == hash => Verdict::Duplicate,
            // Never delivered, between remembered ids: a late message, not a resend.
            Err(i) if oldest.is_some_and(|o| n > o) => {
                self.recent_ints.insert(i, (n, hash));
                self.trim_ints();
                Verdict::Deliver(None)
            }
            Err(_) if n == last => Verdict::Duplicate,
            // Remembered with other content, or below the last id and not remembered.
            _ => {
                self.recent_ints.clear();
                self.record_int(n, hash);
                Verdict::Deliver(Some(Break::Reset(
                    UpstreamId::Int(last),
                    UpstreamId::Int(n),
                )))
            }
        }
    }

    fn record_int(&mut self, n: u64, hash: u64) {
        self.recent_ints.push_back((n, hash));
        self.trim_ints();
        self.last = Some(UpstreamId::Int(n));
    }

    fn trim_ints(&mut self) {
        while self.recent_ints.len() > self.cfg.dedup_window.max(1) {
            self.recent_ints.pop_front();
        }
    }

    fn accept_str(&mut self, s: String, hash: u64) -> Verdict {
        let brk = match self.recent_set.get(&s) {
            Some(None) => return Verdict::Duplicate,
            Some(Some(h)) if *h == hash => return Verdict::Duplicate,
            Some(Some(_)) => {
                let last = self
                    .last
                    .clone()
                    .unwrap_or_else(|| UpstreamId::Str(s.clone()));
                Some(Break::Reset(last, UpstreamId::Str(s.clone())))
            }
            None => {
                self.recent.push_back(s.clone());
                None
            }
        };
        self.recent_set.insert(s.clone(), Some(hash));
        while self.recent.len() > self.cfg.dedup_window.max(1) {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        self.last = Some(UpstreamId::Str(s));
        Verdict::Deliver(brk)
    }

    /// The connection URL with the resume query parameter set, when configured and known.
    pub fn apply_query(&self, url: &mut url::Url) {
        if let Some(offer) = self.query_offer() {
            offer.apply(url);
        }
    }

    /// The `resume.query` parameter as it would be applied now, when configured and an id is
    /// known: for a URL known only later (discovered for the attempt).
    pub fn query_offer(&self) -> Option<QueryOffer> {
        let (Some(name), Some(last)) = (&self.cfg.query, &self.last) else {
            return None;
        };
        Some(QueryOffer {
            name: name.clone(),
            value: last.to_string(),
        })
    }

    /// The resume frame to send right after connect, when configured and an id is known,
    /// rendered with the connection's `values` (see [`crate::dialogue::template`]).
    pub fn frame(&self, values: Values<'_>) -> Option<Result<SecretString, Missing>> {
        let template = self.cfg.frame.as_ref()?;
        let last_id = Some(self.last.as_ref()?);
        Some(frame(template, Values { last_id, ..values }))
    }
}

#[cfg(test)]
mod tests;
