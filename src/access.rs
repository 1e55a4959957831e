//! Local access control (SPEC §4 `endpoints.NAME.access`): who may subscribe to and publish on
//! an endpoint, decided from the peer credentials of a Unix socket connection (SO_PEERCRED).
//!
//! A list entry matches a peer by `uid:N`, `gid:N`, `user:NAME` or `group:NAME`. Names are
//! resolved from /etc/passwd and /etc/group (re-read when either file changes); a peer is in a
//! group when its credential's gid, its user's primary gid, or the group's member list says so.
//! Users and groups known only to NSS services (LDAP, systemd-userdb) are not seen: list them
//! as `uid:`/`gid:`. root gets no special treatment: list `uid:0` to allow it.
//!
//! A TCP peer has no credentials, so an operation whose list is set is refused over TCP.
//! `Reconnect` disturbs every subscriber, so it needs the `publish` list: whoever may steer the
//! upstream may also restart it, forget its resume position or clear its outbox. `Reload` may
//! reconnect any endpoint, so it needs the `publish` list of every one. Status (and an outbox's
//! depth and age) is open to anyone who can reach a socket.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::config::{AccessConfig, Principal};

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A Unix socket peer with its SO_PEERCRED credentials.
    Unix { uid: u32, gid: u32 },
    /// A TCP peer: no credentials.
    Tcp,
    /// Credentials could not be read.
    Unknown,
}

impl From<tokio::net::unix::UCred> for Peer {
    fn from(c: tokio::net::unix::UCred) -> Self {
        Peer::Unix {
            uid: c.uid(),
            gid: c.gid(),
        }
    }
}

/// What a peer wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Subscribe,
    Publish,
    Reconnect,
    /// Forgetting the stored resume position (`ws-sidecar reset-resume`).
    ResetResume,
    /// Dropping the messages waiting in the outbox (`ws-sidecar outbox --clear`).
    ClearOutbox,
    /// Reloading the config file, which may reconnect or close the endpoint.
    Reload,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Subscribe => "subscribe to",
            Op::Publish => "publish to",
            Op::Reconnect => "reconnect",
            Op::ResetResume => "reset the resume position of",
            Op::ClearOutbox => "clear the outbox of",
            Op::Reload => "reload the config, which may reconnect",
        }
    }
}

/// A refusal, worded for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: {0}")]
pub struct Denied(String);

/// Checks `peer` against the list `access` sets for `op` on `endpoint`.
pub fn check(access: &AccessConfig, endpoint: &str, op: Op, peer: Peer) -> Result<(), Denied> {
    let list = match op {
        Op::Subscribe => &access.subscribe,
        Op::Publish | Op::Reconnect | Op::ResetResume | Op::ClearOutbox | Op::Reload => {
            &access.publish
        }
    };
    let Some(list) = list else { return Ok(()) };
    let verb = op.verb();
    match peer {
        Peer::Unix { uid, gid } => {
            // Lists of uids alone need no account database.
            let db = if list.iter().all(|p| matches!(p, Principal::Uid(_))) {
                Arc::default()
            } else {
                accounts()
            };
            if allowed(list, uid, gid, &db) {
                Ok(())
            } else {
                tracing::info!(endpoint, uid, gid, op = verb, "access denied");
                Err(Denied(format!(
                    "uid {uid} (gid {gid}) may not {verb} {endpoint:?}"
                )))
            }
        }
        Peer::Tcp => Err(Denied(format!(
            "{endpoint:?} has an access list, so {verb} it over a Unix socket (TCP has no peer \
             credentials)"
        ))),
        Peer::Unknown => Err(Denied(format!(
            "{endpoint:?} has an access list and the peer's credentials are unknown"
        ))),
    }
}

/// True when some entry of `list` matches the peer.
pub fn allowed(list: &[Principal], uid: u32, gid: u32, db: &Accounts) -> bool {
    let user = db.user_by_uid(uid);
    let in_group = |g: u32| {
        gid == g
            || user.is_some_and(|u| u.gid == g)
            || user.is_some_and(|u| db.members(g).any(|m| m == u.name))
    };
    list.iter().any(|p| match p {
        Principal::Uid(n) => uid == *n,
        Principal::Gid(n) => in_group(*n),
        Principal::User(name) => db.uid_of(name) == Some(uid),
        Principal::Group(name) => db.gid_of(name).is_some_and(in_group),
    })
}

/// Whether `peer` may send this daemon signals (kill(2): root, or the daemon's own user). Such
/// a peer may reload without being on any access list, since it could send SIGHUP anyway; the
/// unit's `ExecReload=` runs `ws-sidecar reload` as the daemon's user.
pub fn may_signal(peer: Peer) -> bool {
    may_signal_as(peer, rustix::process::geteuid().as_raw())
}

/// [`may_signal`] for a daemon running as `me`.
fn may_signal_as(peer: Peer, me: u32) -> bool {
    matches!(peer, Peer::Unix { uid, .. } if uid == 0 || uid == me)
}

/// One /etc/passwd entry, as far as access checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// One /etc/group entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The local user and group databases.
#[derive(Debug, Default)]
pub struct Accounts {
    users: Vec<User>,
    groups: Vec<Group>,
}

impl Accounts {
    /// Parses passwd(5) and group(5) text; malformed lines are skipped.
    pub fn parse(passwd: &str, group: &str) -> Accounts {
        let users = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some(User {
                    name: (*f.first()?).to_owned(),
                    uid: f.get(2)?.parse().ok()?,
                    gid: f.get(3)?.parse().ok()?,
                    home: f.get(5).map_or_else(String::new, |h| (*h).to_owned()),
                })
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some(Group {
                    name: (*f.first()?).to_owned(),
                    gid: f.get(2)?.parse().ok()?,
                    members: f
                        .get(3)
                        .map(|m| {
                            m.split(',')
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect();
        Accounts { users, groups }
    }

    fn user_by_uid(&self, uid: u32) -> Option<&User> {
        self.users.iter().find(|u| u.uid == uid)
    }

    /// The home directory of the user with `uid` (passwd's sixth field).
    pub fn home_of(&self, uid: u32) -> Option<&str> {
        self.user_by_uid(uid).map(|u| u.home.as_str())
    }

    /// The uid of user `name`.
    pub fn uid_of(&self, name: &str) -> Option<u32> {
        self.users.iter().find(|u| u.name == name).map(|u| u.uid)
    }

    /// The gid of group `name`.
    pub fn gid_of(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|g| g.name == name).map(|g| g.gid)
    }

    /// The name of group `gid`.
    pub fn group_name(&self, gid: u32) -> Option<String> {
        self.groups
            .iter()
            .find(|g| g.gid == gid)
            .map(|g| g.name.clone())
    }

    fn members(&self, gid: u32) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .filter(move |g| g.gid == gid)
            .flat_map(|g| g.members.iter().map(String::as_str))
    }
}

/// The system's accounts, re-read only when /etc/passwd or /etc/group changed (a stat of
/// each per check, instead of parsing both files for every publish).
pub fn accounts() -> Arc<Accounts> {
    type Cache = Mutex<Option<(Stamp, Arc<Accounts>)>>;
    type Stamp = (Option<SystemTime>, Option<SystemTime>);
    static CACHE: OnceLock<Cache> = OnceLock::new();
    const PASSWD: &str = "/etc/passwd";
    const GROUP: &str = "/etc/group";
    let mtime = |p| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stamp = (mtime(PASSWD), mtime(GROUP));
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((s, db)) = cache.as_ref() {
        if *s == stamp {
            return Arc::clone(db);
        }
    }
    let read = |p| std::fs::read_to_string(p).unwrap_or_default();
    let db = Arc::new(Accounts::parse(&read(PASSWD), &read(GROUP)));
    *cache = Some((stamp, Arc::clone(&db)));
    db
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          alice:x:1000:1000::/home/alice:/bin/sh\n\
                          bob:x:1001:1001::/home/bob:/bin/sh\n\
                          broken line\n";
    const GROUP: &str = "root:x:0:\n\
                         alice:x:1000:\n\
                         traders:x:2000:bob,carol\n\
                         staff:x:1000\n";

    fn db() -> Accounts {
        Accounts::parse(PASSWD, GROUP)
    }

    #[test]
    fn root_and_the_daemons_own_user_may_signal_and_no_one_else() {
        let unix = |uid| Peer::Unix { uid, gid: uid };
        assert!(may_signal_as(unix(0), 995));
        assert!(may_signal_as(unix(995), 995));
        assert!(!may_signal_as(unix(1000), 995));
        assert!(
            !may_signal_as(Peer::Tcp, 995),
            "a TCP peer has no credentials"
        );
        assert!(!may_signal_as(Peer::Unknown, 995));
    }

    #[test]
    fn home_directories_come_from_the_sixth_field() {
        let db = db();
        assert_eq!(db.home_of(0), Some("/root"));
        assert_eq!(db.home_of(1001), Some("/home/bob"));
        assert_eq!(db.home_of(4242), None);
    }

    #[test]
    fn matches_uid_user_gid_and_group() {
        let db = db();
        let ok = |list: &[Principal], uid, gid| allowed(list, uid, gid, &db);
        assert!(ok(&[Principal::Uid(1000)], 1000, 1000));
        assert!(!ok(&[Principal::Uid(1000)], 1001, 1000));
        assert!(ok(&[Principal::User("bob".into())], 1001, 5));
        assert!(!ok(&[Principal::User("nobody-here".into())], 1001, 5));
        // bob is a listed member of traders; alice is not.
        assert!(ok(&[Principal::Group("traders".into())], 1001, 1001));
        assert!(!ok(&[Principal::Group("traders".into())], 1000, 1000));
        // The credential's gid counts, and so does the user's primary gid.
        assert!(ok(&[Principal::Gid(2000)], 4242, 2000));
        assert!(ok(&[Principal::Gid(1000)], 1000, 77));
        assert!(ok(&[Principal::Group("staff".into())], 1000, 77));
        assert!(!ok(&[], 0, 0), "an empty list allows nobody, root included");
    }

    #[test]
    fn tcp_and_unknown_peers_pass_only_where_no_list_is_set() {
        let access = AccessConfig {
            subscribe: None,
            publish: Some(vec![Principal::Uid(1)]),
        };
        assert!(check(&access, "p", Op::Subscribe, Peer::Tcp).is_ok());
        let e = check(&access, "p", Op::Publish, Peer::Tcp).expect_err("refused");
        assert!(e.to_string().contains("Unix socket"), "{e}");
        assert!(check(&access, "p", Op::Reconnect, Peer::Unknown).is_err());
        assert!(check(&access, "p", Op::Publish, Peer::Unix { uid: 1, gid: 1 }).is_ok());
        let e =
            check(&access, "p", Op::Publish, Peer::Unix { uid: 2, gid: 2 }).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "permission denied: uid 2 (gid 2) may not publish to \"p\""
        );
    }
}
