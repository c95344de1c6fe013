//! The shared test vectors (`wire/vectors/vectors.json`, made by `wire/vectors/generate.py` from the
//! documented layout): this crate's encoders must produce exactly those bytes and its decoders
//! must read them back. The TypeScript SDK's tests check the same file.

use lantern_wire::{
    BatchEncoder, EventView, UpcastEncoder, UpcastView, WriteView, WritesEncoder, decode_batch,
    decode_upcasts, decode_write_ranges, decode_writes,
};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the vectors file")).unwrap()
}

fn bytes(hex: &Value) -> Vec<u8> {
    hex::decode(hex.as_str().unwrap()).unwrap()
}

fn opt_str(value: &Value) -> Option<&str> {
    value.as_str()
}

#[test]
fn batches_match_the_vectors() {
    let vectors = vectors();
    for case in vectors["batches"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ids: Vec<[u8; 16]> = case["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| bytes(&e["id"]).try_into().unwrap())
            .collect();
        let events: Vec<EventView<'_>> = case["events"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&ids)
            .map(|(e, id)| EventView {
                position: e["position"].as_u64().unwrap(),
                revision: e["revision"].as_u64().unwrap(),
                id: *id,
                recorded_at_micros: e["recorded_at_micros"].as_u64().unwrap(),
                stream: e["stream"].as_str().unwrap(),
                event_type: e["type"].as_str().unwrap(),
                data: e["data"].as_str().unwrap().as_bytes(),
                metadata: opt_str(&e["metadata"]).map(str::as_bytes),
            })
            .collect();
        let legacy = case["legacy"].as_bool().unwrap();
        let mut encoder = if legacy {
            BatchEncoder::legacy()
        } else {
            BatchEncoder::new()
        };
        for event in &events {
            encoder.push(event);
        }
        let expected = bytes(&case["hex"]);
        assert_eq!(encoder.finish(), expected, "encoding batch {name}");
        if !legacy {
            assert_eq!(
                decode_batch(&expected).unwrap(),
                events,
                "decoding batch {name}"
            );
        }
    }
    for case in vectors["invalid_batches"].as_array().unwrap() {
        assert!(
            decode_batch(&bytes(&case["hex"])).is_err(),
            "{}",
            case["why"]
        );
    }
}

#[test]
fn writes_match_the_vectors() {
    let vectors = vectors();
    for case in vectors["writes"].as_array().unwrap() {
        let writes: Vec<WriteView<'_>> = case["writes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| match &w["put"] {
                Value::Array(kv) => {
                    WriteView::Put(kv[0].as_str().unwrap(), kv[1].as_str().unwrap().as_bytes())
                }
                _ => WriteView::Delete(w["delete"].as_str().unwrap()),
            })
            .collect();
        let mut encoder = WritesEncoder::default();
        for write in &writes {
            encoder.push(*write);
        }
        let expected = bytes(&case["hex"]);
        assert_eq!(encoder.finish(), expected, "encoding {}", case["name"]);
        assert_eq!(decode_writes(&expected).unwrap(), writes);
        let ranges = decode_write_ranges(&expected).unwrap();
        let from_ranges: Vec<WriteView<'_>> = ranges
            .iter()
            .map(|w| {
                let key = std::str::from_utf8(&expected[w.key.clone()]).unwrap();
                match &w.value {
                    Some(value) => WriteView::Put(key, &expected[value.clone()]),
                    None => WriteView::Delete(key),
                }
            })
            .collect();
        assert_eq!(from_ranges, writes, "ranges of {}", case["name"]);
    }
    for case in vectors["invalid_writes"].as_array().unwrap() {
        let invalid = bytes(&case["hex"]);
        assert!(decode_writes(&invalid).is_err(), "{}", case["why"]);
        assert!(decode_write_ranges(&invalid).is_err(), "{}", case["why"]);
    }
}

#[test]
fn upcasts_match_the_vectors() {
    let vectors = vectors();
    for case in vectors["upcasts"].as_array().unwrap() {
        let upcasts: Vec<UpcastView<'_>> = case["upcasts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| match u {
                Value::Null => UpcastView::Unchanged,
                u => UpcastView::Changed {
                    event_type: u["type"].as_str().unwrap(),
                    data: u["data"].as_str().unwrap().as_bytes(),
                    metadata: opt_str(&u["metadata"]).map(str::as_bytes),
                },
            })
            .collect();
        let mut encoder = UpcastEncoder::default();
        for upcast in &upcasts {
            encoder.push(*upcast);
        }
        let expected = bytes(&case["hex"]);
        assert_eq!(encoder.finish(), expected, "encoding {}", case["name"]);
        assert_eq!(decode_upcasts(&expected).unwrap(), upcasts);
    }
}
