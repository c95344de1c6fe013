//! `State::scan` through the harness: in a query (nothing to merge) and during a batch (merged
//! with the batch's writes), across the host's pages of 1,000, in key order.

use lantern_sdk::testing::Harness;
use lantern_sdk::{Event, Params, Projection, QueryError, State, Subscription, Value, json};

struct Keys;

impl Projection for Keys {
    fn subscription() -> Subscription {
        Subscription::all()
    }

    fn handle(event: &Event<'_>, state: &mut State) -> lantern_sdk::Result<()> {
        match event.event_type() {
            // 2,500 keys in an order unlike their sort order.
            "Fill" => {
                for i in (0..2500u32).rev() {
                    state.put(&format!("k:{i:04}"), &i)?;
                }
                state.put("other", &0)
            }
            // A scan during a batch sees its own writes merged in.
            _ => {
                state.delete("k:0001");
                state.put("k:9999", &9999)?;
                let seen: Vec<(String, u32)> = state.scan("k:")?;
                state.put("seen", &seen.len())?;
                state.put("last", &seen.last().map(|(k, _)| k.clone()))
            }
        }
    }

    fn query(_: &str, _: &Params, state: &State) -> Result<Value, QueryError> {
        let all: Vec<(String, u32)> = state.scan("k:")?;
        let in_order = all.windows(2).all(|w| w[0].0 < w[1].0);
        let values_match = all.iter().all(|(k, v)| k == &format!("k:{v:04}"));
        Ok(json!({"count": all.len(), "in_order": in_order, "values_match": values_match}))
    }
}

lantern_sdk::export!(Keys);

#[test]
fn scans_read_every_page_in_key_order_in_queries_and_in_batches() {
    let mut harness = Harness::<Keys>::new();
    harness.append("s-1", "Fill", json!({})).unwrap();
    assert_eq!(
        harness.query("all", &[]).unwrap(),
        json!({"count": 2500, "in_order": true, "values_match": true})
    );
    harness.append("s-1", "Scan", json!({})).unwrap();
    assert_eq!(harness.get("seen"), Some(json!(2500)));
    assert_eq!(harness.get("last"), Some(json!("k:9999")));
    assert_eq!(
        harness.query("all", &[]).unwrap(),
        json!({"count": 2500, "in_order": true, "values_match": true})
    );
}
