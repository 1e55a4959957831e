use std::task::{Context, Poll};

use super::*;

fn cfg(messages: usize, bytes: usize, slow: SlowPolicy) -> ReplayConfig {
    ReplayConfig {
        messages,
        bytes,
        persist: false,
        slow_subscriber: slow,
    }
}

fn seqs(items: &[Item]) -> Vec<u64> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Message(m) => Some(m.seq),
            Item::Gap { .. } => None,
        })
        .collect()
}

fn push(log: &Log, n: usize) {
    for i in 0..n {
        log.append(Kind::Text, Bytes::from(format!("{{\"i\":{i}}}")), 0);
    }
}

#[test]
fn replay_from_inside_window_is_exact() {
    let log = Log::new(&cfg(100, 1 << 20, SlowPolicy::Skip), 1);
    push(&log, 10);
    let mut c = log.subscribe(Some(4), vec![]);
    let mut out = vec![];
    c.try_read(&mut out, 100).expect("no lag");
    assert_eq!(seqs(&out), (5..=10).collect::<Vec<_>>());
    push(&log, 2);
    out.clear();
    c.try_read(&mut out, 100).expect("no lag");
    assert_eq!(seqs(&out), vec![11, 12]);
}

#[test]
fn replay_before_window_gives_gap_first() {
    let log = Log::new(&cfg(5, 1 << 20, SlowPolicy::Skip), 1);
    push(&log, 20);
    let mut c = log.subscribe(Some(3), vec![]);
    let mut out = vec![];
    c.try_read(&mut out, 100).expect("no lag");
    assert!(matches!(
        out[0],
        Item::Gap {
            from: 4,
            to: 15,
            reason: GapReason::ReplayExpired
        }
    ));
    assert_eq!(seqs(&out), (16..=20).collect::<Vec<_>>());
}

#[test]
fn slow_cursor_gets_gap_then_continues() {
    let log = Log::new(&cfg(5, 1 << 20, SlowPolicy::Skip), 1);
    let mut c = log.subscribe(None, vec![]);
    push(&log, 12);
    let mut out = vec![];
    c.try_read(&mut out, 2).expect("skip policy");
    assert!(matches!(
        out[0],
        Item::Gap {
            from: 1,
            to: 7,
            reason: GapReason::SlowSubscriber
        }
    ));
    assert_eq!(seqs(&out), vec![8, 9]);
    out.clear();
    c.try_read(&mut out, 100).expect("no lag");
    assert_eq!(seqs(&out), vec![10, 11, 12]);
}

#[test]
fn disconnect_policy_errors() {
    let log = Log::new(&cfg(5, 1 << 20, SlowPolicy::Disconnect), 1);
    let mut c = log.subscribe(Some(0), vec![]);
    push(&log, 12);
    let mut out = vec![];
    assert_eq!(c.try_read(&mut out, 100), Err(Lagged { from: 1, to: 7 }));
}

#[test]
fn fell_behind_is_noticed_without_reading_only_under_disconnect() {
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for (policy, lags) in [(SlowPolicy::Disconnect, true), (SlowPolicy::Skip, false)] {
        let log = Log::new(&cfg(5, 1 << 20, policy), 1);
        let mut c = log.subscribe(Some(0), vec![]);
        push(&log, 5);
        assert!(
            c.poll_fell_behind(&mut cx).is_pending(),
            "still in the window"
        );
        push(&log, 7);
        let got = c.poll_fell_behind(&mut cx);
        if lags {
            assert_eq!(got, Poll::Ready(Lagged { from: 1, to: 7 }));
            let mut out = vec![];
            // The cursor is finished: reading now ends it rather than skipping ahead.
            assert!(matches!(
                c.poll_read(&mut cx, &mut out, 100),
                Poll::Ready(Ok(false))
            ));
        } else {
            assert!(
                got.is_pending(),
                "skip policy reports by reading, with a gap"
            );
        }
    }
}

#[test]
fn byte_bound_evicts_and_seq_starts_where_told() {
    let log = Log::new(&cfg(100, 20, SlowPolicy::Skip), 41);
    for _ in 0..5 {
        log.append(Kind::Binary, Bytes::from_static(b"0123456789"), 0);
    }
    assert_eq!(log.last_seq(), 45);
    assert_eq!(log.first_retained(), 44);
}

#[test]
fn filters_skip_non_matching() {
    let log = Log::new(&cfg(100, 1 << 20, SlowPolicy::Skip), 1);
    log.append(Kind::Text, Bytes::from_static(br#"{"type":"a"}"#), 0);
    log.append(Kind::Text, Bytes::from_static(br#"{"type":"b"}"#), 0);
    log.append(Kind::Binary, Bytes::from_static(b"\x00\x01"), 0);
    log.append(Kind::Text, Bytes::from_static(br#"{"type":"b"}"#), 0);
    let f = Filter::new("/type", serde_json::json!("b")).expect("valid");
    let mut c = log.subscribe(Some(0), vec![f]);
    let mut out = vec![];
    c.try_read(&mut out, 100).expect("no lag");
    assert_eq!(seqs(&out), vec![2, 4]);
    assert_eq!(c.position(), 5);
}

#[test]
fn pending_appends_are_invisible_until_published() {
    let log = Log::new(&cfg(2, 1 << 20, SlowPolicy::Skip), 1);
    let mut c = log.subscribe(None, vec![]);
    for _ in 0..4 {
        log.append_pending(Kind::Text, Bytes::from_static(b"p"), 0, None, None);
    }
    assert_eq!((log.last_seq(), log.pending(), log.next_seq()), (0, 4, 5));
    // Over the 2-message window, but nothing is evicted before readers could see it.
    assert_eq!(log.first_retained(), 1);
    let mut out = vec![];
    c.try_read(&mut out, 100).expect("no lag");
    assert!(out.is_empty(), "nothing visible yet");
    log.publish_upto(1);
    c.try_read(&mut out, 100).expect("no lag");
    assert_eq!(seqs(&out), vec![1]);
    log.publish_upto(4);
    out.clear();
    c.try_read(&mut out, 100).expect("no lag");
    assert!(
        matches!(out[0], Item::Gap { from: 2, to: 2, .. }),
        "{out:?}"
    );
    assert_eq!(seqs(&out), vec![3, 4]);
}

#[test]
fn restored_window_with_a_hole_reads_through_it() {
    let e = |seq| (seq, Kind::Text, 0, Bytes::from_static(b"r"));
    let log = Log::restored(
        &cfg(100, 1 << 20, SlowPolicy::Skip),
        20_001,
        vec![e(7), e(8)],
    );
    log.append(Kind::Text, Bytes::from_static(b"n"), 0);
    let mut c = log.subscribe(Some(7), vec![]);
    let mut out = vec![];
    c.try_read(&mut out, 100).expect("no lag");
    assert_eq!(seqs(&out), vec![8, 20_001]);
    assert!(
        out.iter().all(|i| matches!(i, Item::Message(_))),
        "a hole is not a gap"
    );
}

#[tokio::test]
async fn read_waits_for_append() {
    let log = Log::new(&cfg(100, 1 << 20, SlowPolicy::Skip), 1);
    let mut c = log.subscribe(None, vec![]);
    let l2 = Arc::clone(&log);
    let h = tokio::spawn(async move {
        let mut out = vec![];
        c.read(&mut out, 10).await.map(|_| seqs(&out))
    });
    tokio::task::yield_now().await;
    l2.append(Kind::Text, Bytes::from_static(b"x"), 0);
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), h)
        .await
        .expect("woken")
        .expect("task")
        .expect("no lag");
    assert_eq!(got, vec![1]);
    assert_eq!(log.subscribers(), 0);
}

fn at(log: &Log, seq: u64) -> bool {
    log.append_at(
        seq,
        Kind::Text,
        Bytes::from(format!("{seq}")),
        0,
        None,
        None,
    )
}

#[test]
fn a_mirror_starts_cursors_opened_before_its_position_where_they_asked() {
    let log = Log::mirror(&cfg(100, 1 << 20, SlowPolicy::Skip));
    let mut live = log.subscribe(None, vec![]);
    let mut from_502 = log.subscribe(Some(502), vec![]);
    let mut whole = log.subscribe(Some(0), vec![]);
    let mut out = vec![];
    live.try_read(&mut out, 100).expect("no lag");
    assert!(out.is_empty(), "nothing before the position: {out:?}");
    // The stream ends at 505; seqs 500..=505 are read back to fill the window.
    log.position(506);
    for seq in 500..=505 {
        assert!(at(&log, seq));
    }
    assert!(at(&log, 506));
    live.try_read(&mut out, 100).expect("no lag");
    assert_eq!(
        seqs(&out),
        vec![506],
        "a live cursor sees no read-back entry"
    );
    out.clear();
    from_502.try_read(&mut out, 100).expect("no lag");
    assert_eq!(seqs(&out), vec![503, 504, 505, 506]);
    out.clear();
    whole.try_read(&mut out, 100).expect("no lag");
    assert_eq!(seqs(&out), (500..=506).collect::<Vec<_>>());
    out.clear();
    // Opened after the position: as on any log.
    let mut after = log.subscribe(Some(504), vec![]);
    after.try_read(&mut out, 100).expect("no lag");
    assert_eq!(seqs(&out), vec![505, 506]);
}

#[test]
fn a_mirror_wakes_a_waiting_cursor_at_its_position() {
    let log = Log::mirror(&cfg(100, 1 << 20, SlowPolicy::Skip));
    let mut c = log.subscribe(None, vec![]);
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut out = vec![];
    assert!(c.poll_read(&mut cx, &mut out, 10).is_pending());
    log.position(7);
    assert!(at(&log, 7));
    assert!(matches!(
        c.poll_read(&mut cx, &mut out, 10),
        Poll::Ready(Ok(true))
    ));
    assert_eq!(seqs(&out), vec![7]);
}

#[test]
fn append_at_ignores_old_seqs_and_shows_a_jump_as_the_gap_given() {
    let log = Log::mirror(&cfg(100, 1 << 20, SlowPolicy::Skip));
    log.position(10);
    let mut c = log.subscribe(None, vec![]);
    assert!(at(&log, 10));
    assert!(!at(&log, 10), "a seq read twice is appended once");
    assert!(!at(&log, 9));
    let gap = IdBreak {
        from: 11,
        to: 19,
        reason: GapReason::ReplayExpired,
    };
    assert!(log.append_at(
        20,
        Kind::Binary,
        Bytes::from_static(b"x"),
        0,
        Some(gap),
        None
    ));
    let mut out = vec![];
    c.try_read(&mut out, 100).expect("no lag");
    assert_eq!(seqs(&out), vec![10, 20]);
    assert!(matches!(
        out[1],
        Item::Gap {
            from: 11,
            to: 19,
            reason: GapReason::ReplayExpired
        }
    ));
    assert_eq!(log.next_seq(), 21);
    assert_eq!(log.last_seq(), 20);
}
