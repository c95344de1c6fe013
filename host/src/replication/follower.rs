//! The follower's side: a task that streams the leader's log into the store's writer, and a task
//! that makes the projections and tokens match the leader's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{LeaderState, Message, STORE_ID_HEADER, WantedProjection};
use crate::access::AccessControl;
use crate::projection::Projections;
use crate::store::{Problem, Store, StoreError};

/// Reconnection backoff: from the first, doubling, up to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the leader's projections and tokens are fetched.
const STATE_EVERY: Duration = Duration::from_secs(1);
/// Most bytes handed to the writer in one batch.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// How to reach the leader.
#[derive(Debug, Clone)]
pub struct FollowerOptions {
    /// The leader's base URL, e.g. `http://10.0.0.1:7070`.
    pub leader: String,
    /// The HTTP client (its token and trusted certificates set).
    pub http: reqwest::Client,
}

/// A follower: what it knows of its leader, and the tasks that copy it.
pub struct Follower {
    leader: String,
    http: reqwest::Client,
    store: Store,
    projections: Projections,
    access: AccessControl,
    /// The leader's head, from its last heartbeat.
    leader_head: AtomicU64,
    /// Since when this node has been behind the leader; `None` when caught up.
    behind_since: Mutex<Option<Instant>>,
    /// Why replication stopped for good (another store, diverged logs), or why it cannot go on
    /// for now (refused token); `None` when all is well.
    problem: Mutex<Option<Problem>>,
}

/// Why a stream from the leader ended.
enum Ended {
    /// The connection broke or the leader stopped: try again.
    Retry(String),
    /// Going on would be wrong (another store, diverged logs, a damaged record): stop.
    Refused(String),
}

impl From<reqwest::Error> for Ended {
    fn from(error: reqwest::Error) -> Self {
        Ended::Retry(format!("{error:#}"))
    }
}

impl Follower {
    /// A follower of `options.leader` over this node's store, projections and tokens.
    pub fn new(
        options: FollowerOptions,
        store: Store,
        projections: Projections,
        access: AccessControl,
    ) -> Arc<Follower> {
        Arc::new(Follower {
            leader: options.leader.trim_end_matches('/').to_owned(),
            http: options.http,
            store,
            projections,
            access,
            leader_head: AtomicU64::new(0),
            behind_since: Mutex::new(None),
            problem: Mutex::new(None),
        })
    }

    /// The leader's URL.
    pub fn leader(&self) -> &str {
        &self.leader
    }

    /// Events this node lacks, as of the leader's last heartbeat.
    pub fn lag(&self) -> u64 {
        self.leader_head
            .load(Ordering::Relaxed)
            .saturating_sub(self.store.head())
    }

    /// How long this node has been behind the leader (about the age of the oldest record it
    /// lacks); zero when caught up.
    pub fn lag_seconds(&self) -> f64 {
        self.behind_since
            .lock()
            .map_or(0.0, |since| since.elapsed().as_secs_f64())
    }

    /// What is wrong with replication, if anything.
    pub fn problem(&self) -> Option<Problem> {
        self.problem.lock().clone()
    }

    /// Starts copying the leader until `stop`; the handle ends when both tasks have.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let log = tokio::spawn(self.clone().follow_log(stop.clone()));
        let state = tokio::spawn(self.clone().follow_state(stop));
        tokio::spawn(async move {
            let _ = log.await;
            let _ = state.await;
        })
    }

    fn note_progress(&self) {
        let behind = self.lag() > 0;
        let mut since = self.behind_since.lock();
        match (behind, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, Some(_)) => *since = None,
            _ => {}
        }
    }

    async fn follow_log(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let head_before = self.store.head();
            let ended = tokio::select! {
                () = stop.cancelled() => return,
                ended = self.stream_log() => ended,
            };
            match ended {
                Ended::Refused(why) => {
                    tracing::error!(leader = %self.leader, %why, "replication refused; this node serves what it has and copies nothing more");
                    *self.problem.lock() = Some(Problem {
                        code: "replication_refused",
                        message: why,
                    });
                    return;
                }
                Ended::Retry(why) => {
                    if self.store.head() > head_before {
                        backoff = BACKOFF_FIRST;
                    }
                    tracing::warn!(leader = %self.leader, %why, retry_in = ?backoff, "replication interrupted");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection to the leader: from this node's head (its last record first, to check
    /// that the logs agree) until it breaks.
    async fn stream_log(&self) -> Ended {
        // Which store the leader holds, and how far it is, before anything is copied.
        let leader = match self.fetch_state().await {
            Ok(state) => state,
            Err(ended) => return ended,
        };
        if let Err(error) = self.store.adopt_id(leader.store_id) {
            return Ended::Refused(error.to_string());
        }
        let head = self.store.head();
        if leader.head < head {
            return Ended::Refused(format!(
                "this node holds events the leader does not: its head is {head}, the leader's {} (the leader lost events, or was restored from an older backup)",
                leader.head
            ));
        }
        let response = match self
            .http
            .get(format!("{}/replicate?from={}", self.leader, head.max(1)))
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => return error.into(),
        };
        if let Err(ended) = self.check_answer(&response) {
            return ended;
        }
        let same_store = response
            .headers()
            .get(STORE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| uuid::Uuid::parse_str(v).ok())
            == Some(self.store.id());
        if !same_store {
            return Ended::Refused(format!(
                "{} answered for another store than it did a moment ago",
                self.leader
            ));
        }
        tracing::info!(leader = %self.leader, from = head + 1, "replicating");
        // The network and the disk work at once: one task reads messages, this one writes.
        let (batches, mut received) = mpsc::channel::<Bytes>(16);
        let reader = self.read_messages(response, batches);
        // The writer ends when the reader has ended and everything it passed on is written (or
        // at the first error): a reconnection never starts while a write is still in flight,
        // which would ask the leader for records that write is about to add.
        let writer = async {
            let mut pending = BytesMut::new();
            let mut check_overlap = head > 0;
            while let Some(batch) = received.recv().await {
                pending.extend_from_slice(&batch);
                while pending.len() < MAX_BATCH_BYTES {
                    match received.try_recv() {
                        Ok(batch) => pending.extend_from_slice(&batch),
                        Err(_) => break,
                    }
                }
                if check_overlap {
                    match self.store.verify_overlap(&Bytes::copy_from_slice(&pending)) {
                        Ok(None) => continue,
                        Ok(Some(len)) => {
                            let _ = pending.split_to(len);
                            check_overlap = false;
                        }
                        Err(error) => return Some(Ended::Refused(error.to_string())),
                    }
                }
                if pending.is_empty() {
                    continue;
                }
                let frames = pending.split().freeze();
                match self.store.replicate(frames.clone()).await {
                    Ok(written) => {
                        pending.extend_from_slice(&frames[written.consumed..]);
                        self.note_progress();
                    }
                    Err(StoreError::Replication(why)) => return Some(Ended::Refused(why)),
                    Err(error) => {
                        return Some(Ended::Retry(format!(
                            "writing the leader's records: {error}"
                        )));
                    }
                }
            }
            None
        };
        tokio::pin!(reader, writer);
        let mut reader_ended = None;
        loop {
            tokio::select! {
                ended = &mut reader, if reader_ended.is_none() => reader_ended = Some(ended),
                failed = &mut writer => {
                    return failed.or(reader_ended).unwrap_or_else(|| {
                        Ended::Retry("the leader closed the stream".into())
                    });
                }
            }
        }
    }

    /// The leader's state (`GET /replicate/state`).
    async fn fetch_state(&self) -> Result<LeaderState, Ended> {
        let response = self
            .http
            .get(format!("{}/replicate/state", self.leader))
            .send()
            .await?;
        self.check_answer(&response)?;
        let state: LeaderState = response.json().await.map_err(|e| {
            Ended::Retry(format!(
                "{} did not answer as a Lantern leader: {e}",
                self.leader
            ))
        })?;
        self.leader_head.fetch_max(state.head, Ordering::Relaxed);
        self.note_progress();
        Ok(state)
    }

    /// A refused answer: noted as a problem if it is about the token, then retried.
    fn check_answer(&self, response: &reqwest::Response) -> Result<(), Ended> {
        let status = response.status();
        let mut problem = self.problem.lock();
        if status == 401 || status == 403 {
            *problem = Some(Problem {
                code: "replication_unauthorized",
                message: format!(
                    "the leader refused this follower's token ({status}): replication needs an admin token (--token)"
                ),
            });
        } else if problem
            .as_ref()
            .is_some_and(|p| p.code == "replication_unauthorized")
        {
            *problem = None;
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(Ended::Retry(format!("the leader answered {status}")))
        }
    }

    /// Parses the stream's messages: records go to the writer, heartbeats update the lag.
    async fn read_messages(
        &self,
        response: reqwest::Response,
        batches: mpsc::Sender<Bytes>,
    ) -> Ended {
        let mut body = response.bytes_stream();
        let mut buf = BytesMut::new();
        // A leader that sends nothing for this long (it heartbeats every second) is gone.
        let silence = Duration::from_secs(10);
        loop {
            let chunk = match tokio::time::timeout(silence, body.next()).await {
                Err(_) => return Ended::Retry("the leader has been silent for 10 s".into()),
                Ok(None) => return Ended::Retry("the leader closed the stream".into()),
                Ok(Some(Err(error))) => return error.into(),
                Ok(Some(Ok(chunk))) => chunk,
            };
            buf.extend_from_slice(&chunk);
            loop {
                match Message::take(&mut buf) {
                    Ok(None) => break,
                    Ok(Some(Message::Records(records))) => {
                        if batches.send(records).await.is_err() {
                            return Ended::Retry("the writer stopped".into());
                        }
                    }
                    Ok(Some(Message::Heartbeat { head, .. })) => {
                        self.leader_head.fetch_max(head, Ordering::Relaxed);
                        self.note_progress();
                    }
                    Err(why) => return Ended::Refused(why),
                }
            }
        }
    }

    async fn follow_state(self: Arc<Self>, stop: CancellationToken) {
        // The leader's generation of each projection last acted on: a new one with the same
        // module is a rebuild the leader was asked for.
        let mut seen: HashMap<String, WantedProjection> = HashMap::new();
        let mut last_error = String::new();
        loop {
            match self.copy_state(&mut seen).await {
                Ok(()) => last_error.clear(),
                Err(error) => {
                    let error = format!("{error:#}");
                    if error != last_error {
                        tracing::warn!(leader = %self.leader, %error, "copying the leader's projections and tokens");
                        last_error = error;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(STATE_EVERY) => {}
            }
        }
    }

    /// Fetches the leader's projections and tokens once and makes this node's match.
    async fn copy_state(&self, seen: &mut HashMap<String, WantedProjection>) -> anyhow::Result<()> {
        if self
            .problem()
            .is_some_and(|p| p.code == "replication_refused")
        {
            return Ok(());
        }
        let state = match self.fetch_state().await {
            Ok(state) => state,
            Err(Ended::Retry(why) | Ended::Refused(why)) => anyhow::bail!(why),
        };
        if state.store_id != self.store.id() {
            // Until the log stream has taken the leader's id (or refused it), copy nothing.
            return Ok(());
        }
        self.access
            .tokens
            .replace_all(&serde_json::to_vec(&state.tokens)?)?;
        // Upcasters first: the projections deployed next are then made with the right ones.
        let own_upcasters: std::collections::BTreeMap<String, String> = self
            .projections
            .upcaster_statuses()
            .into_iter()
            .map(|u| (u.name, u.module_sha256))
            .collect();
        for (name, sha) in &state.upcasters {
            if own_upcasters.get(name) != Some(sha) {
                let bytes = self.module(sha).await?;
                tracing::info!(upcaster = %name, module_sha256 = %sha, "deploying the leader's upcaster");
                self.projections.deploy_upcaster(name, bytes).await?;
            }
        }
        for name in own_upcasters.keys() {
            if !state.upcasters.contains_key(name) {
                tracing::info!(upcaster = %name, "the leader deleted it: deleting");
                self.projections.delete_upcaster(name).await?;
            }
        }
        let own = self.projections.wanted().await;
        tracing::debug!(?own, leader = ?state.projections, ?seen, "copying the leader's projections");
        for (name, wanted) in &state.projections {
            match own.get(name) {
                Some(mine) if mine.module_sha256 == wanted.module_sha256 => match seen.get(name) {
                    // A new generation with the same module and the same upcasters is a
                    // rebuild the leader was asked for. (One made because the upcasters changed
                    // is this node's own doing: it copied the upcasters and rebuilt already.)
                    Some(last)
                        if last.generation < wanted.generation
                            && last.upcasters == wanted.upcasters =>
                    {
                        tracing::info!(projection = %name, "the leader rebuilt it: rebuilding");
                        self.projections.rebuild(name).await?;
                    }
                    _ => {}
                },
                _ => {
                    let bytes = self.module(&wanted.module_sha256).await?;
                    tracing::info!(projection = %name, module_sha256 = %wanted.module_sha256, "deploying the leader's module");
                    self.projections.deploy(name, bytes).await?;
                }
            }
            seen.insert(name.clone(), wanted.clone());
        }
        for name in own.keys() {
            if !state.projections.contains_key(name) {
                tracing::info!(projection = %name, "the leader deleted it: deleting");
                self.projections.delete(name).await?;
                seen.remove(name);
            }
        }
        self.copy_snapshots(state.snapshot_change).await
    }

    /// Copies the leader's snapshot changes this node lacks, in change order, as far as this
    /// node's log reaches: a snapshot of a revision not copied yet waits for a later poll, so a
    /// follower never holds a snapshot ahead of its own events.
    async fn copy_snapshots(&self, leader_change: u64) -> anyhow::Result<()> {
        loop {
            let own = {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.last_snapshot_change()).await??
            };
            if own >= leader_change {
                return Ok(());
            }
            let page: crate::replication::SnapshotChanges = self
                .http
                .get(format!("{}/replicate/snapshots?after={own}", self.leader))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            if page.snapshots.is_empty() {
                return Ok(());
            }
            let store = self.store.clone();
            let all_copied = tokio::task::spawn_blocking(move || {
                for snapshot in page.snapshots {
                    if snapshot.position > store.head() {
                        return Ok(false);
                    }
                    store.copy_snapshot(&snapshot.into_stored())?;
                }
                Ok::<_, crate::store::StoreError>(true)
            })
            .await??;
            if !all_copied {
                return Ok(());
            }
        }
    }

    /// A module's bytes: from this node if it has them, else from the leader (hash checked).
    async fn module(&self, sha256: &str) -> anyhow::Result<Vec<u8>> {
        if let Some(bytes) = self.projections.module_bytes(sha256).await? {
            return Ok(bytes);
        }
        let bytes = self
            .http
            .get(format!("{}/replicate/modules/{sha256}", self.leader))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let got = crate::projection::module_sha256(&bytes);
        anyhow::ensure!(
            got == sha256,
            "the leader sent module {sha256} with hash {got}"
        );
        Ok(bytes.to_vec())
    }
}
