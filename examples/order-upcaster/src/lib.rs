//! Order events written by older clients, seen in today's shape.
//!
//! Today an order is `OrderPlaced {"customer": "c-7", "amount": 1250}` (cents), the shape
//! `order-totals` folds. Two older shapes are still in the log, and stay there:
//! - before 2025, `OrderPlaced {"customer_id": "c-7", "amount_cents": 1250}`;
//! - before that, the same fields under the type `OrderCreated`.
//!
//! This upcaster takes both types and gives `OrderPlaced` in today's shape; an event already in
//! today's shape is left unchanged.

use lantern_sdk::{Event, Upcast, UpcastTypes, Upcaster, json};
use serde::Deserialize;

/// The fields of an order before 2025.
#[derive(Deserialize)]
struct OrderV1 {
    customer_id: String,
    amount_cents: i64,
}

/// The upcaster.
pub struct OrderUpcaster;

impl Upcaster for OrderUpcaster {
    fn types() -> UpcastTypes {
        UpcastTypes::new()
            .takes("OrderPlaced")
            .takes("OrderCreated")
            .gives("OrderPlaced")
    }

    fn upcast(event: &Event<'_>) -> lantern_sdk::Result<Upcast> {
        // Today's shape has `customer`; only the old one has `customer_id`.
        if event.event_type() == "OrderPlaced" && !contains(event.data_json(), b"\"customer_id\"") {
            return Ok(Upcast::unchanged());
        }
        let old: OrderV1 = event.data()?;
        Ok(
            Upcast::data(json!({"customer": old.customer_id, "amount": old.amount_cents}))
                .with_type("OrderPlaced"),
        )
    }
}

/// Whether `needle` occurs in `haystack` (a cheap test on the JSON text before parsing it).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

lantern_sdk::export_upcaster!(OrderUpcaster);

#[cfg(test)]
mod tests {
    use lantern_sdk::json;
    use lantern_sdk::testing::{Harness, TestEvent, upcast};
    use order_totals::OrderTotals;

    use super::OrderUpcaster;

    #[test]
    fn old_shapes_become_todays_and_todays_stays() {
        let today = TestEvent::new(
            "order-1",
            "OrderPlaced",
            json!({"customer": "c-1", "amount": 250}),
        );
        assert_eq!(
            upcast::<OrderUpcaster>(&today).unwrap().data,
            today.data,
            "unchanged"
        );
        for old_type in ["OrderPlaced", "OrderCreated"] {
            let old = TestEvent::new(
                "order-2",
                old_type,
                json!({"customer_id": "c-2", "amount_cents": 990}),
            );
            let new = upcast::<OrderUpcaster>(&old).unwrap();
            assert_eq!(new.event_type, "OrderPlaced");
            assert_eq!(new.data, json!({"customer": "c-2", "amount": 990}));
        }
        // Types it does not take pass untouched, malformed old events are an error.
        let other = TestEvent::new("order-3", "OrderShipped", json!({"customer_id": 1}));
        assert_eq!(upcast::<OrderUpcaster>(&other).unwrap().data, other.data);
        let broken = TestEvent::new("order-4", "OrderCreated", json!({"customer_id": "c"}));
        assert!(upcast::<OrderUpcaster>(&broken).is_err());
    }

    #[test]
    fn order_totals_folds_a_log_of_every_shape() {
        let mut harness = Harness::<OrderTotals>::new().upcast_with::<OrderUpcaster>();
        harness
            .batch(vec![
                TestEvent::new(
                    "order-1",
                    "OrderCreated",
                    json!({"customer_id": "c-1", "amount_cents": 100}),
                ),
                TestEvent::new(
                    "order-2",
                    "OrderPlaced",
                    json!({"customer_id": "c-1", "amount_cents": 20}),
                ),
                TestEvent::new(
                    "order-3",
                    "OrderPlaced",
                    json!({"customer": "c-1", "amount": 3}),
                ),
            ])
            .unwrap();
        assert_eq!(
            harness.get("customer:c-1"),
            Some(json!({"orders": 3, "total": 123}))
        );
        // Without the upcaster the old shapes do not fold.
        let mut raw = Harness::<OrderTotals>::new();
        assert!(
            raw.append(
                "order-2",
                "OrderPlaced",
                json!({"customer_id": "c-1", "amount_cents": 20})
            )
            .is_err()
        );
    }
}
