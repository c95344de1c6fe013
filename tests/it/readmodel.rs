//! The read model as the next batch sees it while the last batch is still being committed: the
//! committed snapshot seen through that batch's writes must read exactly like the state after
//! the commit (the oracle: a map with the writes applied in order).

use std::collections::BTreeMap;
use std::sync::Arc;

use lantern::readmodel::{Overlaid, ReadModel, WriteSet};
use lantern::wasm::ReadView;
use lantern_wire::{WriteView, WritesEncoder};
use proptest::prelude::*;

/// Keys from a small alphabet, so prefixes, overwrites and deletes of one key all happen.
fn key() -> impl Strategy<Value = String> {
    "[ab]{0,3}"
}

fn encode(writes: &[(String, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut encoder = WritesEncoder::default();
    for (key, value) in writes {
        encoder.push(match value {
            Some(value) => WriteView::Put(key, value),
            None => WriteView::Delete(key),
        });
    }
    encoder.finish()
}

fn writes() -> impl Strategy<Value = Vec<(String, Option<Vec<u8>>)>> {
    prop::collection::vec(
        (
            key(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..3)),
        ),
        0..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn an_uncommitted_batch_over_its_snapshot_reads_like_the_committed_state(
        committed in writes(),
        pending in writes(),
        prefix in "[ab]{0,2}",
        after in key(),
        limit in 1usize..6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let model = ReadModel::open(&dir.path().join("m.redb")).unwrap();
        model.apply(&WriteSet::decode(encode(&committed)).unwrap(), 1).unwrap();

        let mut oracle = BTreeMap::new();
        for (key, value) in committed.iter().chain(&pending) {
            match value {
                Some(value) => oracle.insert(key.clone(), value.clone()),
                None => oracle.remove(key),
            };
        }
        let view = Overlaid {
            snapshot: model.snapshot().unwrap(),
            writes: Arc::new(WriteSet::decode(encode(&pending)).unwrap()),
        };

        for key in committed.iter().chain(&pending).map(|(key, _)| key) {
            prop_assert_eq!(view.get(key).unwrap(), oracle.get(key).cloned(), "get {}", key);
        }
        // One page from `after`, then the whole prefix page by page, as a guest scans.
        let expected_page: Vec<(String, Vec<u8>)> = oracle
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix) && key.as_str() > after.as_str())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        prop_assert_eq!(view.scan(&prefix, &after, limit).unwrap(), expected_page);
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = view.scan(&prefix, &cursor, limit).unwrap();
            let full = page.len() == limit;
            if let Some((last, _)) = page.last() {
                cursor = last.clone();
            }
            all.extend(page);
            if !full {
                break;
            }
        }
        // (Keys greater than the first cursor, "": the empty key is never scanned, committed or
        // not.)
        let expected_all: Vec<(String, Vec<u8>)> = oracle
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix) && !key.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        prop_assert_eq!(all, expected_all);
    }
}

/// A commit is visible before it is made durable: a live event never waits for the read model's
/// fsync to be seen. The fsync that a commit over 65,536 positions calls for is held back (a
/// paused fail point, for this read model's path only) while its checkpoint is watched.
#[test]
fn a_commit_is_visible_before_it_is_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(ReadModel::open(&dir.path().join("failpoint-slow-durable.redb")).unwrap());
    let put = WriteSet::decode(encode(&[("k".to_owned(), Some(b"v".to_vec()))])).unwrap();
    fail::cfg("readmodel-durable", "pause").unwrap();
    let applying = {
        let model = model.clone();
        std::thread::spawn(move || model.apply(&put, 70_000))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while model.checkpoint() < 70_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the commit was not visible while its fsync was held back"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let snapshot = model.snapshot().unwrap();
    assert_eq!(snapshot.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(!applying.is_finished(), "the fsync was held back");
    fail::remove("readmodel-durable");
    applying.join().unwrap().unwrap();
    assert!(!model.is_dirty(), "made durable once let go");
}
