//! Leadership per endpoint: a lease in a JetStream KV bucket, one key per endpoint.
//!
//! - **Acquire** = `create` the key (refused while another holder's value is live).
//! - **Renew** = `update` the key by the revision the holder last wrote (refused once anyone
//!   else wrote it).
//! - **TTL** = the bucket's `max_age`: every write is a new message, so a renewal restarts the
//!   clock, and a key nobody renews ages out. The bucket is created with *limit markers* (server
//!   2.11+), so the server writes a delete marker (reason `MaxAge`) when the key ages out, and a
//!   follower's [`LeaseWatch`] sees the vacancy as an event instead of polling.
//! - **Epoch** = the KV revision of the holder's last write: it only grows, so of two holders
//!   the later one always has the higher epoch. [`Held::term`] is the revision of the acquiring
//!   write, fixed for the whole leadership; the stream writer puts it in its message ids.
//!
//! Why the bucket's `max_age` and not a per-key TTL (`Nats-TTL`, server 2.11+): async-nats 0.51
//! offers `create_with_ttl` but no update with a TTL, so a renewal would write a value with no
//! TTL, which never expires. A per-key TTL would mean publishing raw KV messages past the
//! crate's API. The cost of `max_age` is that every key in a bucket has the same TTL, so
//! [`Leases::open`] refuses a bucket that exists with another one rather than change it under
//! the other hosts.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, Operation, UpdateErrorKind},
};
use bytes::Bytes;
use futures_util::StreamExt;

/// The KV bucket holding every endpoint's lease.
pub const BUCKET: &str = "ws-sidecar-leases";

/// What went wrong talking to the server; the lease state is unknown, retry.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The bucket exists with another TTL; the hosts of a fleet must agree on one.
    #[error("bucket {bucket} has a ttl of {existing:?}, this host wants {wanted:?}; give every host the same lease ttl")]
    TtlMismatch {
        /// The bucket's name.
        bucket: &'static str,
        /// The TTL the bucket was created with.
        existing: Duration,
        /// The TTL this host asked for.
        wanted: Duration,
    },
    /// A TTL below one second: JetStream's delete markers cannot be shorter.
    #[error("lease ttl {0:?} is below 1s, the shortest JetStream supports")]
    TtlTooShort(Duration),
    /// The server refused or did not answer.
    #[error("lease bucket {BUCKET}: {0}")]
    Nats(String),
}

/// The renew was refused: someone else holds the lease now, or it expired. Stop leading.
#[derive(Debug, thiserror::Error)]
#[error("lease on {endpoint} lost (held at epoch {epoch}): another host holds it or it expired")]
pub struct Lost {
    /// The endpoint whose lease this was.
    pub endpoint: String,
    /// The last epoch this holder had.
    pub epoch: u64,
}

/// Why a renew did not give a new [`Held`].
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// Definite: stop leading now.
    #[error(transparent)]
    Lost(#[from] Lost),
    /// The server did not answer. The lease may still be ours until [`Held::valid_until`]
    /// (unchanged): retry before then, and stop leading when it passes.
    #[error("lease on {} not renewed, retry before its deadline: {source}", held.endpoint)]
    Unconfirmed {
        /// The lease as it was before the attempt.
        held: Box<Held>,
        /// What the client said.
        source: LeaseError,
    },
}

/// The lease bucket, opened with the fleet's TTL. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leases {
    /// The KV store; every lease operation goes through it.
    kv: kv::Store,
    /// The bucket's `max_age`: how long a lease lives after its last write.
    ttl: Duration,
}

impl Leases {
    /// Opens the bucket, creating it with `max_age = ttl` (file storage, history 1, one replica)
    /// if it does not exist. Refuses a bucket that exists with another TTL.
    ///
    /// # Errors
    /// [`LeaseError::TtlTooShort`] under 1 s, [`LeaseError::TtlMismatch`], or the server's
    /// refusal ([`LeaseError::Nats`], e.g. JetStream off, or a server older than 2.11).
    pub async fn open(js: &jetstream::Context, ttl: Duration) -> Result<Leases, LeaseError> {
        Self::open_with(js, ttl, 1).await
    }

    /// [`open`](Self::open), creating the bucket with `replicas` copies (1, 3 or 5).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub async fn open_with(
        js: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Leases, LeaseError> {
        let description = "ws-sidecar: which host leads each endpoint";
        let kv = open_bucket(js, BUCKET, description, ttl, replicas).await?;
        Ok(Leases { kv, ttl })
    }

    /// The TTL every lease in this bucket has.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Tries to take the lease on `endpoint` for `holder` (a name for this host, shown to
    /// others). `Ok(None)`: someone else holds it; watch it with [`Leases::watch`].
    ///
    /// # Errors
    /// [`LeaseError::Nats`] when the server did not answer; whether the lease was taken is then
    /// unknown, and trying again is safe (it is refused if the first attempt took it, and the
    /// TTL frees it).
    pub async fn acquire(&self, endpoint: &str, holder: &str) -> Result<Option<Held>, LeaseError> {
        let sent = Instant::now();
        match self
            .kv
            .create(endpoint, Bytes::copy_from_slice(holder.as_bytes()))
            .await
        {
            Ok(revision) => Ok(Some(Held {
                leases: self.clone(),
                endpoint: endpoint.to_string(),
                holder: holder.to_string(),
                term: revision,
                epoch: revision,
                valid_until: sent + self.ttl,
            })),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(nats(e)),
        }
    }

    /// Who holds `endpoint`'s lease now, and at which epoch; `None` when nobody does.
    ///
    /// # Errors
    /// [`LeaseError::Nats`] when the server did not answer.
    pub async fn holder(&self, endpoint: &str) -> Result<Option<(String, u64)>, LeaseError> {
        let entry = self.kv.entry(endpoint).await.map_err(nats)?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.revision)))
    }

    /// Starts watching `endpoint`'s lease. Open the watch *before* a failed [`acquire`]
    /// (`Leases::acquire`), so that a vacancy between the two is not missed.
    ///
    /// # Errors
    /// [`LeaseError::Nats`] when the server did not answer.
    pub async fn watch(&self, endpoint: &str) -> Result<LeaseWatch, LeaseError> {
        let watch = self.kv.watch(endpoint).await.map_err(nats)?;
        Ok(LeaseWatch { watch })
    }
}

/// A lease this host holds. Renew it well within [`Leases::ttl`] (a third of it is usual).
#[derive(Clone, Debug)]
pub struct Held {
    /// The bucket, for renewals.
    leases: Leases,
    /// The endpoint this lease is for (the KV key).
    endpoint: String,
    /// This host's name, the value written.
    holder: String,
    /// The revision of the acquiring write: fixed for this leadership.
    term: u64,
    /// The revision of the last write: the fencing epoch.
    epoch: u64,
    /// When the lease expires at the latest as far as this host can tell: the send time of the
    /// last confirmed write plus the TTL (the server stamps the write later, so it expires no
    /// earlier than this).
    valid_until: Instant,
}

impl Held {
    /// Renews the lease: an update by the last revision, which only succeeds if nobody wrote the
    /// key since and it has not expired.
    ///
    /// # Errors
    /// [`RenewError::Lost`] when it was refused; [`RenewError::Unconfirmed`] when the server
    /// did not answer (keep the lease until [`Held::valid_until`], retry).
    pub async fn renew(self) -> Result<Held, RenewError> {
        let sent = Instant::now();
        let update = self
            .leases
            .kv
            .update(
                &self.endpoint,
                Bytes::copy_from_slice(self.holder.as_bytes()),
                self.epoch,
            )
            .await;
        match update {
            Ok(revision) => Ok(Held {
                epoch: revision,
                valid_until: sent + self.leases.ttl,
                ..self
            }),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(Lost {
                endpoint: self.endpoint,
                epoch: self.epoch,
            }
            .into()),
            Err(e) => Err(RenewError::Unconfirmed {
                source: nats(e),
                held: Box::new(self),
            }),
        }
    }

    /// The fencing epoch: the KV revision of the last acquire or renew. Higher is later.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The revision of the write that acquired this lease; unchanged by renewals.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The endpoint this lease is for.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Gives the lease up at once (a clean shutdown), so a follower need not wait for the TTL.
    /// Deletes the key only if this holder's write is still the last one.
    ///
    /// # Errors
    /// [`LeaseError::Nats`] when the server refused (someone else holds it) or did not answer;
    /// the lease then ends at its TTL as usual.
    pub async fn release(self) -> Result<(), LeaseError> {
        self.leases
            .kv
            .delete_expect_revision(&self.endpoint, Some(self.epoch))
            .await
            .map_err(nats)
    }

    /// The latest instant this host may still act as leader without a confirmed renewal.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }
}

/// A follower's view of one endpoint's lease: tells it when the key was deleted or expired.
pub struct LeaseWatch {
    /// The KV watch on the key, from the moment it was opened.
    watch: kv::Watch,
}

/// One change of a watched lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Someone acquired or renewed it.
    Held {
        /// Their name.
        holder: String,
        /// The epoch they hold it at.
        epoch: u64,
    },
    /// It was deleted, or it expired (the server's `MaxAge` marker): try to acquire it.
    Vacant,
}

impl LeaseWatch {
    /// The next change. Cancel-safe (it only awaits the watch's stream).
    ///
    /// # Errors
    /// [`LeaseError::Nats`] when the watch broke or ended; open a new one.
    pub async fn next(&mut self) -> Result<LeaseEvent, LeaseError> {
        match self.watch.next().await {
            Some(Ok(entry)) => Ok(match entry.operation {
                Operation::Put => LeaseEvent::Held {
                    holder: String::from_utf8_lossy(&entry.value).into_owned(),
                    epoch: entry.revision,
                },
                Operation::Delete | Operation::Purge => LeaseEvent::Vacant,
            }),
            Some(Err(e)) => Err(nats(e)),
            None => Err(LeaseError::Nats("the watch ended".to_string())),
        }
    }

    /// Waits until the lease is vacant, skipping renewals.
    ///
    /// # Errors
    /// As [`LeaseWatch::next`].
    pub async fn vacated(&mut self) -> Result<(), LeaseError> {
        loop {
            if self.next().await? == LeaseEvent::Vacant {
                return Ok(());
            }
        }
    }
}

/// Opens the KV bucket `bucket`, creating it if it does not exist with keys that age out `ttl`
/// after their last write (history 1, file storage, `replicas` copies) and limit markers, so
/// that watchers see a key that aged out as deleted. Refuses a bucket that exists with another
/// TTL rather than change it under the other hosts.
///
/// # Errors
/// [`LeaseError::TtlTooShort`] under 1 s, [`LeaseError::TtlMismatch`], or the server's
/// refusal ([`LeaseError::Nats`]).
pub(super) async fn open_bucket(
    js: &jetstream::Context,
    bucket: &'static str,
    description: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, LeaseError> {
    if ttl < Duration::from_secs(1) {
        return Err(LeaseError::TtlTooShort(ttl));
    }
    let kv = match js.get_key_value(bucket).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.to_string(),
                description: description.to_string(),
                history: 1,
                max_age: ttl,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                // The markers themselves live one TTL: long enough for any watcher.
                limit_markers: Some(ttl),
                ..Default::default()
            })
            .await
            .map_err(nats)?,
    };
    let existing = kv.status().await.map_err(nats)?.max_age();
    if existing != ttl {
        return Err(LeaseError::TtlMismatch {
            bucket,
            existing,
            wanted: ttl,
        });
    }
    Ok(kv)
}

pub(super) fn nats(e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Nats(e.to_string())
}
