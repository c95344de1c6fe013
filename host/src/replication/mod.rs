//! Followers: copies of a leader's log, projections and tokens that answer reads
//! (`docs/replication.md`).
//!
//! The leader's side is three HTTP routes (`http/replicate.rs`) over the store's [`LogReader`];
//! the follower's side is [`Follower`]: one task that streams the log into the store's writer,
//! one that polls the leader's projections and tokens and makes its own match.
//!
//! [`LogReader`]: crate::store::LogReader

mod follower;

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub use follower::{Follower, FollowerOptions};

/// The content type of `GET /replicate`.
pub const CONTENT_TYPE: &str = "application/x-lantern-log";
/// The header that names the leader's store.
pub const STORE_ID_HEADER: &str = "lantern-store-id";

/// A message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Whole records, exactly as stored, in position order.
    Records(Bytes),
    /// The leader's head and clock (microseconds since the epoch).
    Heartbeat {
        /// The leader's last committed position.
        head: u64,
        /// When the leader sent it.
        time_micros: u64,
    },
}

const KIND_RECORDS: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;

impl Message {
    /// The bytes that announce a records message of `len` bytes (the records follow).
    pub fn records_header(len: usize) -> Bytes {
        let mut out = BytesMut::with_capacity(5);
        out.put_u8(KIND_RECORDS);
        out.put_u32_le(len as u32);
        out.freeze()
    }

    /// A heartbeat message.
    pub fn heartbeat(head: u64, time_micros: u64) -> Bytes {
        let mut out = BytesMut::with_capacity(17);
        out.put_u8(KIND_HEARTBEAT);
        out.put_u64_le(head);
        out.put_u64_le(time_micros);
        out.freeze()
    }

    /// Takes the next whole message off the front of `buf`; `Ok(None)` if it is not all there.
    pub fn take(buf: &mut BytesMut) -> Result<Option<Message>, String> {
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        match kind {
            KIND_RECORDS => {
                let Some(len) = buf.get(1..5) else {
                    return Ok(None);
                };
                let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                if buf.len() < 5 + len {
                    buf.reserve(5 + len - buf.len());
                    return Ok(None);
                }
                let mut message = buf.split_to(5 + len);
                Ok(Some(Message::Records(message.split_off(5).freeze())))
            }
            KIND_HEARTBEAT => {
                if buf.len() < 17 {
                    return Ok(None);
                }
                let message = buf.split_to(17);
                let u64_at = |at: usize| {
                    u64::from_le_bytes(message[at..at + 8].try_into().expect("8 bytes"))
                };
                Ok(Some(Message::Heartbeat {
                    head: u64_at(1),
                    time_micros: u64_at(9),
                }))
            }
            other => Err(format!("unknown replication message kind {other}")),
        }
    }
}

/// The newest generation of a leader's projection: the one a follower must run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WantedProjection {
    /// The leader's version number of it.
    pub version: u64,
    /// The leader's generation number of it: a new one with the same module is a rebuild.
    pub generation: u64,
    /// Its module.
    pub module_sha256: String,
    /// The modules of the upcasters its input passes through, in order.
    #[serde(default)]
    pub upcasters: Vec<String>,
}

/// `GET /replicate/state`: what a follower copies besides the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderState {
    /// The leader's store id.
    pub store_id: uuid::Uuid,
    /// The leader's head.
    pub head: u64,
    /// Its projections, by name.
    pub projections: BTreeMap<String, WantedProjection>,
    /// Its tokens file (hashes only).
    pub tokens: serde_json::Value,
    /// Its newest snapshot change (`store::Snapshot::change`); 0 from a leader without snapshots.
    #[serde(default)]
    pub snapshot_change: u64,
    /// Its upcasters: name -> module (SHA-256, hex).
    #[serde(default)]
    pub upcasters: BTreeMap<String, String>,
}

/// One snapshot as `GET /replicate/snapshots` sends it: the stored form, change number and time
/// included, so the follower's copy is the leader's.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicatedSnapshot {
    /// The stream.
    pub stream: String,
    /// The revision it is of.
    pub revision: u64,
    /// That revision's log position.
    pub position: u64,
    /// When the leader saved it.
    pub recorded_at_micros: u64,
    /// The leader's change number.
    pub change: u64,
    /// The state, JSON text as the client sent it.
    pub state: Box<serde_json::value::RawValue>,
}

impl ReplicatedSnapshot {
    /// The wire form of a stored snapshot.
    pub fn from_stored(snapshot: crate::store::Snapshot) -> anyhow::Result<Self> {
        Ok(ReplicatedSnapshot {
            state: serde_json::value::RawValue::from_string(String::from_utf8(
                snapshot.state.to_vec(),
            )?)?,
            stream: snapshot.stream,
            revision: snapshot.revision,
            position: snapshot.position,
            recorded_at_micros: snapshot.recorded_at_micros,
            change: snapshot.change,
        })
    }

    /// The stored form.
    pub fn into_stored(self) -> crate::store::Snapshot {
        crate::store::Snapshot {
            stream: self.stream,
            revision: self.revision,
            position: self.position,
            recorded_at_micros: self.recorded_at_micros,
            change: self.change,
            state: bytes::Bytes::from(String::from(Box::<str>::from(self.state))),
        }
    }
}

/// `GET /replicate/snapshots`: a page of snapshot changes.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChanges {
    /// In change order.
    pub snapshots: Vec<ReplicatedSnapshot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_apart_as_they_were_put_together_whatever_the_split() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&Message::records_header(3));
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&Message::heartbeat(42, 7));
        let whole = wire.freeze();
        for split in 0..=whole.len() {
            let mut buf = BytesMut::from(&whole[..split]);
            let mut got = Vec::new();
            while let Some(message) = Message::take(&mut buf).unwrap() {
                got.push(message);
            }
            buf.extend_from_slice(&whole[split..]);
            while let Some(message) = Message::take(&mut buf).unwrap() {
                got.push(message);
            }
            assert_eq!(
                got,
                vec![
                    Message::Records(Bytes::from_static(b"abc")),
                    Message::Heartbeat {
                        head: 42,
                        time_micros: 7
                    }
                ],
                "split at {split}"
            );
            assert!(buf.is_empty());
        }
        assert!(Message::take(&mut BytesMut::from(&[9u8][..])).is_err());
    }
}
