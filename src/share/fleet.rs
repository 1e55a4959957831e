//! The share's side of a fleet (issue 17): on the leader, holds taken for the apps of other
//! hosts, counted apart from this host's own so that each host declares only its own apps'
//! keys; on a follower, the key states the leader published, shown to this host's apps in
//! place of its own table's (a follower's table is never on a connection).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::{Holding, Inner, KeyEvent, KeyState, Share, ShareError};

impl Inner {
    /// The state `key`'s holders see: the fleet's view while following, else the table's.
    pub(super) fn shown(&self, key: &Arc<str>) -> KeyState {
        match &self.view {
            Some(view) => view.get(key).cloned().unwrap_or(KeyState::Pending),
            None => self.subs.get(key).map_or(KeyState::Pending, |s| s.shown()),
        }
    }
}

impl Share {
    /// Holds `key` for the apps of another host; dropping the [`Holding`] lets go of it.
    ///
    /// # Errors
    /// [`ShareError::TooManyKeys`] when it would pass `max` subscriptions.
    pub fn hold_for_fleet(
        self: &Arc<Self>,
        key: Arc<str>,
        params: Option<Value>,
        max: usize,
    ) -> Result<Holding, ShareError> {
        self.hold_as(vec![(key, params)], max, true).map(|(h, _)| h)
    }

    /// The keys this host's own apps hold, with the parameters of their subscribe frames, in
    /// the order first held.
    pub fn local_keys(&self) -> Vec<(Arc<str>, Option<Value>)> {
        let inner = self.lock();
        let mut keys: Vec<_> = inner
            .subs
            .iter()
            .filter(|(_, s)| s.holders > s.fleet)
            .map(|(k, s)| (s.since, Arc::clone(k), s.params.clone()))
            .collect();
        keys.sort_unstable_by_key(|(since, _, _)| *since);
        keys.into_iter().map(|(_, k, p)| (k, p)).collect()
    }

    /// Changes whenever this host's apps take or let go of a hold.
    pub fn local_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.local.subscribe()
    }

    /// Every key of the table with its state on the connection (not the fleet's view).
    pub fn key_states(&self) -> Vec<(Arc<str>, KeyState)> {
        self.lock()
            .subs
            .iter()
            .map(|(k, s)| (Arc::clone(k), s.shown()))
            .collect()
    }

    /// Shows `view` (the states the fleet's leader published, by key) to this host's holders
    /// instead of the table's; `None` goes back to the table's (this host leads). Holders of a
    /// key whose shown state changes are told.
    pub fn set_view(&self, view: Option<HashMap<Arc<str>, KeyState>>) {
        let mut inner = self.lock();
        let before: Vec<(Arc<str>, KeyState)> = inner
            .subs
            .keys()
            .map(|k| (Arc::clone(k), inner.shown(k)))
            .collect();
        inner.view = view;
        let changed: Vec<KeyEvent> = before
            .into_iter()
            .filter_map(|(key, was)| {
                let now = inner.shown(&key);
                (now != was).then_some(KeyEvent { key, state: now })
            })
            .collect();
        drop(inner);
        for ev in changed {
            self.tell(&ev.key, ev.state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn fleet_holds_count_for_the_connection_but_not_as_this_hosts_interest() {
        let share = Arc::new(Share::default());
        let changes = share.local_changes();
        let fleet = share.hold_for_fleet(k("a"), None, 10).expect("held");
        assert!(share.local_keys().is_empty(), "held for another host only");
        assert!(!changes.has_changed().unwrap_or(true), "no local change");
        let (mine, _) = share
            .hold(vec![(k("b"), Some(Value::from(1))), (k("a"), None)], 10)
            .expect("held");
        assert!(changes.has_changed().unwrap_or(false));
        let local: Vec<String> = share
            .local_keys()
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(local, ["a", "b"], "in the order first held");
        drop(fleet);
        assert_eq!(share.keys().len(), 2, "a is still held by this host's app");
        drop(mine);
        assert!(share.keys().is_empty());
        assert_eq!(
            share.hold_for_fleet(k("x"), None, 0).err(),
            Some(ShareError::TooManyKeys(0))
        );
    }

    #[test]
    fn a_followers_holders_see_the_fleets_states_and_are_told_of_changes() {
        let share = Arc::new(Share::default());
        let mut events = share.key_events();
        let (_h, now) = share.hold(vec![(k("a"), None)], 10).expect("held");
        assert_eq!(now[0].state, KeyState::Pending);
        share.set_view(Some(HashMap::from([(k("a"), KeyState::Subscribed)])));
        let ev = events.try_recv().expect("told");
        assert_eq!((&*ev.key, ev.state), ("a", KeyState::Subscribed));
        assert_eq!(share.keys()[0].state, "subscribed");
        let (_h2, now) = share.hold(vec![(k("a"), None)], 10).expect("held");
        assert_eq!(
            now[0].state,
            KeyState::Subscribed,
            "a new holder sees it too"
        );
        // The same view again tells nobody; leading again shows the table's (pending).
        share.set_view(Some(HashMap::from([(k("a"), KeyState::Subscribed)])));
        assert!(events.try_recv().is_err());
        share.set_view(None);
        assert_eq!(events.try_recv().expect("told").state, KeyState::Pending);
        assert_eq!(share.key_states()[0].1, KeyState::Pending);
    }
}
