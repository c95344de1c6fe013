//! The single writer: group commit.
//!
//! It takes every append waiting in its queue, checks each one against stream heads that include
//! the earlier appends of the same group, frames the survivors into one buffer, writes it at the
//! end of the log, fsyncs once, publishes the new head, and only then answers every caller. A
//! failed check fails that append alone and writes nothing of it.
//!
//! On a follower the jobs are batches of the leader's records instead (`replicate`): checked
//! (CRC, positions, revisions), then written, fsynced and published the same way.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::index::{self, Chunk, Committed, Index, Indexed, Location};
use super::record::{self, RecordFields};
use super::{
    AppendOutcome, ExpectedRevision, Health, NewEvent, Problem, StoreError, StoreStats, log,
};

/// A group stops taking appends once its buffer reaches this size.
const MAX_GROUP_BYTES: usize = 32 << 20;

/// How long the writer polls its queue before it sleeps, while jobs come closer together.
const SPIN: Duration = Duration::from_micros(150);

/// How the writer waits for its next job: while appends are crowding in (the last group answered
/// more than one) and jobs have been coming less than [`SPIN`] apart, it polls the queue for up to
/// that long, and sleeps only if none comes. A sleep and the wake-up that ends it cost two context
/// switches and, on a virtual machine, an idle virtual CPU's exit and an interrupt to wake it:
/// under many small appends that was more than the appends between them (single appends from 64
/// clients, eight alternating pairs: 54.9k -> 58.2k/s). A poll that finds nothing stops the
/// polling until jobs come that close again, so a server with appends further apart than that
/// spins at most once after each such burst; one client appending after another's answer (a
/// group of one) never makes it spin.
struct Waiting {
    /// How long it polls: [`SPIN`], longer in tests.
    window: Duration,
    spin: bool,
}

impl Waiting {
    fn new(window: Duration) -> Self {
        Waiting {
            window,
            spin: false,
        }
    }

    /// The next job, or `None` once the queue is closed. `crowded`: the last group answered more
    /// than one append.
    fn next(&mut self, jobs: &Receiver<Job>, crowded: bool) -> Option<Job> {
        if self.polls(crowded) {
            let until = Instant::now() + self.window;
            loop {
                match jobs.try_recv() {
                    Ok(job) => return Some(job),
                    Err(TryRecvError::Disconnected) => return None,
                    Err(TryRecvError::Empty) if Instant::now() >= until => break,
                    Err(TryRecvError::Empty) => std::hint::spin_loop(),
                }
            }
            // Nothing came: sleep, and poll again only after a short wait.
            self.spin = false;
            return jobs.recv().ok();
        }
        let slept = Instant::now();
        let job = jobs.recv().ok();
        self.spin = slept.elapsed() < self.window;
        job
    }

    /// Whether the next wait polls.
    fn polls(&self, crowded: bool) -> bool {
        self.spin && crowded
    }
}

pub(crate) enum Job {
    Append(Append),
    /// A follower's batch of the leader's records, in their stored form.
    Replicate {
        frames: bytes::Bytes,
        reply: oneshot::Sender<Result<Replicated, StoreError>>,
    },
}

/// What a follower's batch wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicated {
    /// Bytes of the batch written: its whole appends. The rest (the start of an append whose
    /// other records are still to come) must be sent again, followed by them.
    pub consumed: usize,
    /// The head after the batch.
    pub head: u64,
}

pub(crate) struct Append {
    pub stream: String,
    pub expected: ExpectedRevision,
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// An event framed into the group's buffer, waiting for the fsync.
struct Staged {
    stream: usize,
    revision: u64,
    id: Uuid,
    location: Location,
}

enum Answer {
    /// Written by this group: answered after the fsync, failed if the write fails.
    Written(AppendOutcome),
    /// Decided without writing (a retry or a failed check).
    Decided(Result<AppendOutcome, StoreError>),
}

#[derive(Default)]
struct Group {
    buffer: Vec<u8>,
    streams: Vec<String>,
    staged: Vec<Staged>,
    heads: HashMap<String, u64>,
    client_ids: HashSet<Uuid>,
    answers: Vec<(oneshot::Sender<Result<AppendOutcome, StoreError>>, Answer)>,
}

/// Why the writer refuses appends.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The disk is full: retried with a fresh file handle once a second.
    Full(String),
    /// An I/O error: the disk cannot be trusted; appends wait for a restart.
    Io(String),
}

pub(crate) struct Writer {
    /// The log's path, to open a fresh handle when appends resume after a full disk.
    pub path: PathBuf,
    /// Where the writer reports that appends are refused.
    pub health: Arc<Mutex<Health>>,
    /// When the last write failed.
    pub failed_at: Option<Instant>,
    pub file: Arc<File>,
    pub index: Arc<Index>,
    /// Where sealed index chunks go.
    pub indexer: SyncSender<Arc<Chunk>>,
    /// The durable end of the log, as the writer last published it.
    pub committed: Committed,
    pub head: watch::Sender<u64>,
    /// fsync each group before answering.
    pub sync: bool,
    /// Set when a write or fsync failed. The group that failed is cut off the file; after a full
    /// disk appends resume by themselves, after an I/O error only after a restart (never an fsync
    /// retried on a file whose fsync failed).
    pub failed: Option<Failure>,
    /// fsync latencies and group sizes, for `/metrics`.
    pub stats: Arc<StoreStats>,
}

impl Writer {
    pub(crate) fn run(mut self, jobs: Receiver<Job>) {
        let mut waiting = Waiting::new(SPIN);
        let mut crowded = false;
        while let Some(first) = waiting.next(&jobs, crowded) {
            let mut group = Group::default();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                let job = match job {
                    Job::Append(append) => append,
                    Job::Replicate { frames, reply } => {
                        self.commit(std::mem::take(&mut group));
                        let _ = reply.send(self.replicate(&frames));
                        next = jobs.try_recv().ok();
                        continue;
                    }
                };
                // A retry of an append still in this group must see it committed first.
                if job
                    .events
                    .iter()
                    .any(|e| e.id.is_some_and(|id| group.client_ids.contains(&id)))
                {
                    self.commit(std::mem::take(&mut group));
                }
                self.stage(&mut group, job);
                if group.buffer.len() < MAX_GROUP_BYTES {
                    next = jobs.try_recv().ok();
                }
            }
            crowded = group.answers.len() > 1;
            self.commit(group);
        }
        // Shutting down: index what is left so the next start-up has nothing to rescan.
        if let Some(chunk) = self.index.seal_open() {
            index::hand_over(&self.indexer, chunk);
        }
    }

    fn stage(&mut self, group: &mut Group, job: Append) {
        let answer = match self.check_and_frame(group, &job) {
            Ok(answer) => answer,
            Err(error) => Answer::Decided(Err(error)),
        };
        group.answers.push((job.reply, answer));
    }

    /// Whether the log may be written: not after a failure (a full disk is tried again).
    fn check_writable(&mut self) -> Result<(), StoreError> {
        match self.failed.clone() {
            Some(Failure::Full(why)) if !self.try_resume() => Err(StoreError::StorageFull(why)),
            Some(Failure::Io(why)) => Err(StoreError::StorageUnavailable(why)),
            _ => Ok(()),
        }
    }

    fn check_and_frame(&mut self, group: &mut Group, job: &Append) -> Result<Answer, StoreError> {
        self.check_writable()?;
        if let Some(original) = self.find_retry(job)? {
            return Ok(Answer::Decided(Ok(original)));
        }
        let actual = match group.heads.get(&job.stream) {
            Some(revision) => Some(*revision),
            None => self.index.stream_head(&job.stream)?,
        };
        if !job.expected.check(actual) {
            return Err(StoreError::WrongExpectedRevision {
                expected: job.expected,
                actual,
            });
        }
        let first_revision = actual.map_or(0, |r| r + 1);
        let first_position = self.committed.head_position + group.staged.len() as u64 + 1;
        let recorded_at_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let stream_index = group.streams.len();
        group.streams.push(job.stream.clone());
        let count = job.events.len();
        for (i, event) in job.events.iter().enumerate() {
            let id = event.id.unwrap_or_else(Uuid::now_v7);
            let location = Location {
                position: first_position + i as u64,
                offset: self.committed.end_offset + group.buffer.len() as u64,
            };
            record::encode(
                &RecordFields {
                    position: location.position,
                    stream: &job.stream,
                    revision: first_revision + i as u64,
                    id,
                    event_type: &event.event_type,
                    data: &event.data,
                    metadata: event.metadata.as_deref(),
                    recorded_at_micros,
                    end_of_append: i + 1 == count,
                },
                &mut group.buffer,
            );
            if event.id.is_some() {
                group.client_ids.insert(id);
            }
            group.staged.push(Staged {
                stream: stream_index,
                revision: first_revision + i as u64,
                id,
                location,
            });
        }
        let last_revision = first_revision + count as u64 - 1;
        group.heads.insert(job.stream.clone(), last_revision);
        Ok(Answer::Written(AppendOutcome {
            stream: job.stream.clone(),
            first_revision,
            last_revision,
            first_position,
            last_position: first_position + count as u64 - 1,
        }))
    }

    /// `Some(original outcome)` when every event of `job` carries an id and those ids were
    /// written, in the same order, by one earlier append to the same stream. An error when some
    /// id was used otherwise. `None` when no id of the job exists yet.
    fn find_retry(&self, job: &Append) -> Result<Option<AppendOutcome>, StoreError> {
        let mut found = Vec::with_capacity(job.events.len());
        let mut first_used = None;
        for event in &job.events {
            let location = match event.id {
                Some(id) => self.index.id_location(id)?,
                None => None,
            };
            if let (Some(id), Some(_), None) = (event.id, location, first_used) {
                first_used = Some(id);
            }
            found.push(location);
        }
        let Some(first_used) = first_used else {
            return Ok(None);
        };
        let duplicate = Err(StoreError::DuplicateEventId { id: first_used });
        let Some(locations) = found.into_iter().collect::<Option<Vec<Location>>>() else {
            return duplicate;
        };
        let mut events = Vec::with_capacity(locations.len());
        for (i, location) in locations.iter().enumerate() {
            let decoded = log::read_at(&self.file, location.offset)?;
            let consecutive = location.position == locations[0].position + i as u64;
            // Within one append only its last record carries the end-of-append flag.
            let same_append = i + 1 == locations.len() || !decoded.end_of_append;
            if !consecutive || !same_append || decoded.event.stream != job.stream {
                return duplicate;
            }
            events.push(decoded.event);
        }
        let (first, last) = (&events[0], &events[events.len() - 1]);
        Ok(Some(AppendOutcome {
            stream: job.stream.clone(),
            first_revision: first.revision,
            last_revision: last.revision,
            first_position: first.position,
            last_position: last.position,
        }))
    }

    /// Writes a follower's batch: the whole appends at its start, each record checked first (its
    /// CRC, the position after the head, the revision after its stream's). The leader's
    /// end-of-group marks are cleared: this writer marks where it fsyncs. Nothing is written when
    /// a record fails a check.
    fn replicate(&mut self, frames: &bytes::Bytes) -> Result<Replicated, StoreError> {
        self.check_writable()?;
        let refuse = |why: String| Err(StoreError::Replication(why));
        let mut group = Group::default();
        let mut stream_slots: HashMap<String, usize> = HashMap::new();
        let (mut at, mut consumed, mut whole_bytes, mut whole_records) = (0, 0, 0, 0);
        while at < frames.len() {
            let position = self.committed.head_position + group.staged.len() as u64 + 1;
            let record = match record::peek(&frames[at..]) {
                Ok(record) => record,
                Err(record::FrameError::Incomplete) => break,
                Err(record::FrameError::Corrupt(why)) => {
                    return refuse(format!(
                        "the leader sent a damaged record for position {position}: {why}"
                    ));
                }
            };
            if record.position != position {
                return refuse(format!(
                    "the leader sent position {} where position {position} was expected",
                    record.position
                ));
            }
            let actual = match group.heads.get(record.stream) {
                Some(revision) => Some(*revision),
                None => self.index.stream_head(record.stream)?,
            };
            let revision = actual.map_or(0, |r| r + 1);
            if record.revision != revision {
                return refuse(format!(
                    "the leader's record at position {position} has revision {} of stream {:?}, whose next revision here is {revision}",
                    record.revision, record.stream
                ));
            }
            let start = group.buffer.len();
            group.buffer.extend_from_slice(&frames[at..at + record.len]);
            if record.end_of_group {
                record::set_end_of_group(&mut group.buffer[start..], false);
            }
            let stream = match stream_slots.get(record.stream) {
                Some(slot) => *slot,
                None => {
                    group.streams.push(record.stream.to_owned());
                    stream_slots.insert(record.stream.to_owned(), group.streams.len() - 1);
                    group.streams.len() - 1
                }
            };
            match group.heads.get_mut(record.stream) {
                Some(head) => *head = revision,
                None => {
                    group.heads.insert(record.stream.to_owned(), revision);
                }
            }
            group.staged.push(Staged {
                stream,
                revision,
                id: record.id,
                location: Location {
                    position,
                    offset: self.committed.end_offset + start as u64,
                },
            });
            at += record.len;
            if record.end_of_append {
                (consumed, whole_bytes, whole_records) =
                    (at, group.buffer.len(), group.staged.len());
            }
        }
        group.buffer.truncate(whole_bytes);
        group.staged.truncate(whole_records);
        if !group.staged.is_empty() && !self.commit(group) {
            return Err(match self.failed.clone() {
                Some(Failure::Full(why)) => StoreError::StorageFull(why),
                Some(Failure::Io(why)) => StoreError::StorageUnavailable(why),
                None => StoreError::StorageUnavailable("writing the log failed".into()),
            });
        }
        Ok(Replicated {
            consumed,
            head: self.committed.head_position,
        })
    }

    /// Writes and fsyncs the group, publishes it, answers its callers. False if the write failed.
    fn commit(&mut self, group: Group) -> bool {
        let Group {
            mut buffer,
            streams,
            staged,
            answers,
            ..
        } = group;
        if let Some(last) = staged.last() {
            let start = (last.location.offset - self.committed.end_offset) as usize;
            record::set_end_of_group(&mut buffer[start..], true);
        }
        let written = if buffer.is_empty() {
            Ok(())
        } else {
            self.write(&buffer)
        };
        if let Err(error) = &written {
            self.fail(error);
        } else if let Some(last) = staged.last() {
            self.committed = Committed {
                head_position: last.location.position,
                end_offset: self.committed.end_offset + buffer.len() as u64,
            };
            let events = staged.iter().map(|s| Indexed {
                stream: &streams[s.stream],
                revision: s.revision,
                id: s.id,
                location: s.location,
            });
            let sealed = self.index.publish(events, self.committed);
            self.head.send_replace(self.committed.head_position);
            self.stats.group_events.observe(staged.len() as f64);
            answer_all(answers, &written, None);
            if let Some(chunk) = sealed {
                index::hand_over(&self.indexer, chunk);
            }
            return true;
        }
        let failure = self.failed.clone();
        answer_all(answers, &written, failure.as_ref());
        written.is_ok()
    }

    /// After a failed write or fsync: cut the group off, refuse appends, report it.
    fn fail(&mut self, error: &std::io::Error) {
        let full = crate::durable::is_full(error);
        // Leave no trace of the group; whatever the file holds now, recovery cuts it again.
        let _ = self.file.set_len(self.committed.end_offset);
        let (failure, problem) = if full {
            let why = format!(
                "the disk holding the log is full ({error}); appends resume when there is space"
            );
            (
                Failure::Full(why.clone()),
                Problem {
                    code: "storage_full",
                    message: why,
                },
            )
        } else {
            let why = format!(
                "writing the log failed ({error}); appends stop until the server is restarted on a healthy disk"
            );
            (
                Failure::Io(why.clone()),
                Problem {
                    code: "storage_unavailable",
                    message: why,
                },
            )
        };
        tracing::error!(message = %problem.message, "appends refused");
        self.health.lock().appends = Some(problem);
        self.failed = Some(failure);
        self.failed_at = Some(Instant::now());
    }

    /// After a full disk, at most once a second: a fresh handle on the log, cut back to the
    /// committed end and synced. True if appends may go on.
    fn try_resume(&mut self) -> bool {
        if self
            .failed_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        self.failed_at = Some(Instant::now());
        let reopened = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .and_then(|file| {
                file.set_len(self.committed.end_offset)?;
                file.sync_all()?;
                Ok(file)
            });
        match reopened {
            Ok(file) => {
                self.file = Arc::new(file);
                self.failed = None;
                self.health.lock().appends = None;
                tracing::info!("there is space again: appends resume");
                true
            }
            Err(error) => {
                tracing::debug!(%error, "the log's disk is still not writable");
                false
            }
        }
    }

    fn write(&self, buffer: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(buffer, self.committed.end_offset)?;
        // Tests inject an I/O error of the disk here, for stores in folders named `failpoint-*`.
        fail::fail_point!(
            "log-fsync",
            self.path.to_string_lossy().contains("failpoint-"),
            |_| Err(std::io::Error::from_raw_os_error(5))
        );
        if self.sync {
            let started = Instant::now();
            self.file.sync_data()?;
            self.stats
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

fn answer_all(
    answers: Vec<(oneshot::Sender<Result<AppendOutcome, StoreError>>, Answer)>,
    written: &std::io::Result<()>,
    failure: Option<&Failure>,
) {
    for (reply, answer) in answers {
        let result = match (answer, written) {
            (Answer::Written(outcome), Ok(())) => Ok(outcome),
            (Answer::Written(_), Err(_)) => Err(match failure {
                Some(Failure::Full(why)) => StoreError::StorageFull(why.clone()),
                Some(Failure::Io(why)) => StoreError::StorageUnavailable(why.clone()),
                None => StoreError::StorageUnavailable("writing the log failed".into()),
            }),
            (Answer::Decided(result), _) => result,
        };
        // A caller that went away does not need its answer; its append stands.
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn job() -> Job {
        let (reply, _) = oneshot::channel();
        Job::Replicate {
            frames: bytes::Bytes::new(),
            reply,
        }
    }

    #[test]
    fn the_writer_polls_its_queue_only_while_jobs_come_close_together() {
        // A window far longer than any scheduling delay, so that only the jobs' timing counts.
        let window = Duration::from_millis(100);
        let (jobs_tx, jobs) = mpsc::channel();
        let mut waiting = Waiting::new(window);
        // A job already queued: the wait was short, so the next wait polls.
        jobs_tx.send(job()).unwrap();
        assert!(waiting.next(&jobs, true).is_some());
        assert!(waiting.spin, "a short wait starts the polling");
        // A poll that finds a job keeps polling.
        jobs_tx.send(job()).unwrap();
        assert!(waiting.next(&jobs, true).is_some());
        assert!(waiting.spin, "a poll that found a job keeps polling");
        // Nothing comes while it polls: it sleeps until the job comes (soon after), and stops
        // polling all the same.
        let later = |jobs_tx: mpsc::Sender<Job>, after: Duration| {
            std::thread::spawn(move || {
                std::thread::sleep(after);
                jobs_tx.send(job()).unwrap();
                jobs_tx
            })
        };
        let sender = later(jobs_tx, window * 6 / 5);
        let started = Instant::now();
        assert!(waiting.next(&jobs, true).is_some());
        assert!(started.elapsed() >= window * 6 / 5);
        assert!(!waiting.spin, "a poll that found nothing stops the polling");
        // A long sleep does not start it again.
        let sender = later(sender.join().unwrap(), window * 3);
        assert!(waiting.next(&jobs, true).is_some());
        assert!(
            !waiting.spin,
            "jobs further apart than the window: no polling"
        );
        // A short wait again starts it, but only while appends crowd in.
        let jobs_tx = sender.join().unwrap();
        jobs_tx.send(job()).unwrap();
        assert!(waiting.next(&jobs, false).is_some());
        assert!(waiting.polls(true) && !waiting.polls(false));
        // The queue closed: no job.
        drop(jobs_tx);
        assert!(waiting.next(&jobs, true).is_none());
    }
}
