//! Resume's unit tests: dedup, gaps, resets, windows, channels, the resume frame and query.
use super::*;

fn cfg(kind: IdKind, contiguous: bool) -> ResumeConfig {
    ResumeConfig {
        id_pointer: "/id".into(),
        id_kind: kind,
        query: Some("since".into()),
        frame: Some(r#"{"op":"resume","from":{{last_id}}}"#.into()),
        dedup_window: 3,
        contiguous,
        scope: IdScope::Global,
        session: None,
        url: None,
        channel_pointer: None,
    }
}

const D: Verdict = Verdict::Deliver(None);

/// Accepts integer id `n` whose payload is `body`.
fn int(r: &mut Resume, n: u64, body: &str) -> Verdict {
    r.accept(UpstreamId::Int(n), payload_hash(body.as_bytes()))
}

#[test]
fn integer_dedup_and_gap() {
    let mut r = Resume::new(cfg(IdKind::Integer, true), None);
    let doc = serde_json::json!({"id": 1});
    assert_eq!(r.extract(&doc), Some(UpstreamId::Int(1)));
    assert_eq!(int(&mut r, 1, "a"), D);
    assert_eq!(int(&mut r, 2, "b"), D);
    assert_eq!(int(&mut r, 2, "b"), Verdict::Duplicate);
    assert_eq!(int(&mut r, 1, "a"), Verdict::Duplicate);
    assert_eq!(
        int(&mut r, 6, "f"),
        Verdict::Deliver(Some(Break::Gap(3, 5)))
    );
    let mut u = url::Url::parse("ws://h/feed?a=1&since=0").expect("url");
    r.apply_query(&mut u);
    assert_eq!(u.as_str(), "ws://h/feed?a=1&since=6");
    let frame = r
        .frame(Values::default())
        .expect("configured")
        .expect("renders");
    assert_eq!(frame.expose(), r#"{"op":"resume","from":6}"#);
}

#[test]
fn ids_that_start_again_are_a_reset_never_a_silent_duplicate() {
    let mut r = Resume::new(cfg(IdKind::Integer, false), None);
    for n in 1..=10 {
        assert_eq!(int(&mut r, n, &format!("old {n}")), D);
    }
    // A resend of a remembered id with the same payload is a duplicate...
    assert_eq!(int(&mut r, 9, "old 9"), Verdict::Duplicate);
    // ...an id too old to be remembered (window 3) is a reset, as is a remembered one
    // with other content.
    let reset = |last, first| {
        Verdict::Deliver(Some(Break::Reset(
            UpstreamId::Int(last),
            UpstreamId::Int(first),
        )))
    };
    assert_eq!(int(&mut r, 1, "new 1"), reset(10, 1));
    assert_eq!(int(&mut r, 2, "new 2"), D, "new data after the reset flows");
    assert_eq!(int(&mut r, 2, "new 2"), Verdict::Duplicate);
    assert_eq!(int(&mut r, 2, "newer 2"), reset(2, 2));
    assert_eq!(r.last_id(), Some(&UpstreamId::Int(2)));
}

#[test]
fn a_late_id_between_remembered_ones_is_delivered() {
    let mut r = Resume::new(cfg(IdKind::Integer, false), None);
    assert_eq!(int(&mut r, 10, "a"), D);
    assert_eq!(int(&mut r, 20, "c"), D);
    assert_eq!(int(&mut r, 15, "b"), D, "never delivered: not a duplicate");
    assert_eq!(int(&mut r, 15, "b"), Verdict::Duplicate);
    assert_eq!(r.last_id(), Some(&UpstreamId::Int(20)));
}

#[test]
fn after_a_restart_only_the_stored_id_itself_is_a_duplicate() {
    let mut r = Resume::new(cfg(IdKind::Integer, false), Some(UpstreamId::Int(1000)));
    assert_eq!(
        int(&mut r, 1000, "x"),
        Verdict::Duplicate,
        "inclusive resume"
    );
    assert_eq!(int(&mut r, 1001, "y"), D);
    let mut r = Resume::new(cfg(IdKind::Integer, false), Some(UpstreamId::Int(1000)));
    assert_eq!(
        int(&mut r, 1, "z"),
        Verdict::Deliver(Some(Break::Reset(
            UpstreamId::Int(1000),
            UpstreamId::Int(1)
        )))
    );
}

#[test]
fn connection_scope_compares_ids_within_one_connection() {
    let mut c = cfg(IdKind::Integer, true);
    c.scope = IdScope::Connection;
    let mut r = Resume::new(c, Some(UpstreamId::Int(7)));
    assert_eq!(
        r.last_id(),
        None,
        "a stored id means nothing per connection"
    );
    r.start_connection();
    assert_eq!(int(&mut r, 1, "a"), D);
    assert_eq!(int(&mut r, 1, "a"), Verdict::Duplicate);
    assert_eq!(
        int(&mut r, 3, "c"),
        Verdict::Deliver(Some(Break::Gap(2, 2)))
    );
    r.start_connection();
    assert_eq!(int(&mut r, 1, "x"), D, "a new connection starts afresh");
    assert!(!r.is_global());
}

#[test]
fn channels_have_their_own_ids_and_gaps() {
    let mut c = cfg(IdKind::Integer, true);
    c.query = None;
    c.frame = None;
    c.channel_pointer = Some("/stream".into());
    let mut r = Resume::new(c, None);
    let doc = |stream: &str| serde_json::json!({ "stream": stream });
    let take = |r: &mut Resume, stream: &str, id: u64, body: &str| {
        r.accept_in(
            &doc(stream),
            UpstreamId::Int(id),
            payload_hash(body.as_bytes()),
        )
    };
    let r = &mut r;
    assert_eq!(take(r, "btc", 100, "a"), Verdict::Deliver(None));
    assert_eq!(
        take(r, "eth", 7, "b"),
        Verdict::Deliver(None),
        "not a reset of btc"
    );
    assert_eq!(
        take(r, "btc", 101, "c"),
        Verdict::Deliver(None),
        "not a gap after eth's 7"
    );
    assert_eq!(take(r, "eth", 7, "b"), Verdict::Duplicate);
    assert_eq!(
        take(r, "eth", 10, "d"),
        Verdict::Deliver(Some(Break::Gap(8, 9))),
        "a gap within eth"
    );
    assert!(!r.is_global(), "per-channel ids are not stored");
    r.forget();
    assert_eq!(take(r, "eth", 3, "e"), Verdict::Deliver(None), "forgotten");
}

#[test]
fn string_window() {
    let mut r = Resume::new(cfg(IdKind::String, false), None);
    let mut s =
        |v: &str, body: &str| r.accept(UpstreamId::Str(v.into()), payload_hash(body.as_bytes()));
    for v in ["a", "b", "c"] {
        assert_eq!(s(v, v), D);
    }
    assert_eq!(s("a", "a"), Verdict::Duplicate);
    assert_eq!(s("d", "d"), D);
    // "a" fell out of the 3-entry window.
    assert_eq!(s("a", "a"), D);
    // A remembered id with other content is new data under a reused id.
    assert_eq!(
        s("d", "other"),
        Verdict::Deliver(Some(Break::Reset(
            UpstreamId::Str("a".into()),
            UpstreamId::Str("d".into())
        )))
    );
    let doc = serde_json::json!({"id": "x\"y"});
    assert_eq!(r.extract(&doc), Some(UpstreamId::Str("x\"y".into())));
}

#[test]
fn stored_form_round_trips_and_seeds_dedup() {
    for id in [UpstreamId::Int(42), UpstreamId::Str("a:b".into())] {
        assert_eq!(UpstreamId::decode(&id.encode()), Some(id));
    }
    assert_eq!(UpstreamId::decode("x"), None);
    let mut r = Resume::new(
        cfg(IdKind::String, false),
        Some(UpstreamId::Str("z".into())),
    );
    assert_eq!(r.accept(UpstreamId::Str("z".into()), 1), Verdict::Duplicate);
    let r = Resume::new(cfg(IdKind::String, false), Some(UpstreamId::Int(3)));
    assert_eq!(r.last_id(), None, "an id of the wrong kind is dropped");
}

#[test]
fn memory_carries_resends_and_resets_across_a_restart() {
    let mut r = Resume::new(cfg(IdKind::Integer, false), None);
    for n in 1..=5 {
        int(&mut r, n, &format!("m{n}"));
    }
    let mut after = Resume::restore(cfg(IdKind::Integer, false), r.memory());
    assert_eq!(after.last_id(), Some(&UpstreamId::Int(5)));
    // The overlap an upstream resends on resume is dropped, as before the restart...
    assert_eq!(int(&mut after, 4, "m4"), Verdict::Duplicate);
    assert_eq!(int(&mut after, 5, "m5"), Verdict::Duplicate);
    // ...and the last id with other content is new data, not a silent drop.
    assert!(matches!(
        int(&mut after, 5, "changed"),
        Verdict::Deliver(Some(Break::Reset(..)))
    ));
    // Only the epoch ending at the last id is restored.
    let memory = Memory {
        last: Some(UpstreamId::Int(2)),
        recent: [8, 9, 1, 2]
            .into_iter()
            .map(|n| (UpstreamId::Int(n), payload_hash(format!("m{n}").as_bytes())))
            .collect(),
    };
    let mut r = Resume::restore(cfg(IdKind::Integer, false), memory);
    assert_eq!(int(&mut r, 1, "m1"), Verdict::Duplicate);
    assert_eq!(int(&mut r, 3, "m3"), D);
    // String ids too.
    let mut s = Resume::new(cfg(IdKind::String, false), None);
    for v in ["a", "b"] {
        s.accept(UpstreamId::Str(v.into()), payload_hash(v.as_bytes()));
    }
    let mut s = Resume::restore(cfg(IdKind::String, false), s.memory());
    let str_id = |v: &str| UpstreamId::Str(v.into());
    assert_eq!(
        s.accept(str_id("a"), payload_hash(b"a")),
        Verdict::Duplicate
    );
    assert!(matches!(
        s.accept(str_id("b"), payload_hash(b"other")),
        Verdict::Deliver(Some(Break::Reset(..)))
    ));
}

#[test]
fn forget_clears_the_position() {
    let mut r = Resume::new(cfg(IdKind::Integer, false), Some(UpstreamId::Int(5)));
    assert_eq!(r.forget(), Some(UpstreamId::Int(5)));
    let mut u = url::Url::parse("ws://h/feed").expect("url");
    r.apply_query(&mut u);
    assert_eq!(u.as_str(), "ws://h/feed");
    assert_eq!(int(&mut r, 1, "a"), D);
}

#[test]
fn nothing_offered_before_first_id() {
    let r = Resume::new(cfg(IdKind::Integer, false), None);
    let mut u = url::Url::parse("ws://h/feed").expect("url");
    r.apply_query(&mut u);
    assert_eq!(u.as_str(), "ws://h/feed");
    assert!(r.frame(Values::default()).is_none());
    assert_eq!(r.extract(&serde_json::json!({"other": 1})), None);
}
