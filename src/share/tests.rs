//! The share's bookkeeping on its own: reference counts, limits, and the bound on abandoned ids.

use std::sync::Arc;

use super::*;

fn key(k: &str) -> (Arc<str>, Option<Value>) {
    (Arc::from(k), None)
}

#[test]
fn a_key_stays_until_its_last_holder_leaves_and_the_limit_counts_keys() {
    let share = Arc::new(Share::default());
    assert!(
        share.hold(vec![key("x"), key("x")], 1).is_ok(),
        "one key, held twice"
    );
    let (a, now) = share
        .hold(vec![key("x"), key("y"), key("x")], 3)
        .expect("held");
    assert_eq!(
        a.keys().len(),
        2,
        "a key held twice by one holder counts once"
    );
    assert!(now.iter().all(|e| e.state == KeyState::Pending));
    let (b, _) = share.hold(vec![key("x"), key("z")], 3).expect("held");
    assert_eq!(
        share.hold(vec![key("w")], 3).err(),
        Some(ShareError::TooManyKeys(3)),
        "a fourth key is past the limit"
    );
    let (c, _) = share
        .hold(vec![key("y")], 3)
        .expect("a key held already is no new one");
    let holders = |k: &str| {
        share
            .keys()
            .into_iter()
            .find(|s| s.key == k)
            .map(|s| s.holders)
    };
    assert_eq!(holders("x"), Some(2));
    drop(a);
    assert_eq!(holders("x"), Some(1));
    assert_eq!(holders("y"), Some(1));
    drop(b);
    drop(c);
    assert!(
        share.keys().is_empty(),
        "nothing held, nothing kept (never sent)"
    );
}

#[test]
fn abandoned_ids_are_remembered_up_to_a_bound() {
    let mut inner = Inner::default();
    for n in 0..MAX_ORPHANS + 50 {
        inner.orphan(n.to_string());
    }
    assert_eq!(inner.ids.len(), MAX_ORPHANS);
    assert!(!inner.ids.contains_key("0"), "the oldest forgotten");
    assert!(inner.ids.contains_key(&(MAX_ORPHANS + 49).to_string()));
}

#[tokio::test]
async fn a_request_forgotten_by_its_app_leaves_nothing_behind() {
    let share = Arc::new(Share::default());
    let p = share
        .request(serde_json::json!({"id": 1}), "/id", false, 2)
        .expect("queued");
    let q = share
        .request(serde_json::json!({"id": 1}), "/id", true, 2)
        .expect("queued");
    assert_eq!(
        share.request(serde_json::json!({}), "/id", false, 2).err(),
        Some(ShareError::TooManyRequests(2))
    );
    assert_eq!(share.in_flight(), 2);
    drop(p);
    drop(q);
    assert_eq!(share.in_flight(), 0);
}
