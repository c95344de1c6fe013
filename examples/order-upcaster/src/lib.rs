//! Order events written by older clients, seen in today's shape.
//!
//! Today an order is `OrderPlaced {"customer": "c-7", "amount": 1250}` (cents), the shape
//! `order-totals` folds. Two older shapes are still in the log, and stay there:
//! - before 2025, `OrderPlaced {"customer_id": "c-7", "amount_cents": 1250}`;
//! - before that, the same fields under the type `OrderCreated`.
//!
//! This upcaster takes both types and gives `OrderPlaced` in today's shape; an event already in
//! today's shape is left unchanged.

use lantern_sdk::{Event, Upcast, UpcastTypes, Upcaster};
use serde::{Deserialize, Serialize};

/// An order in any of its shapes: before 2025 it had `customer_id` and `amount_cents`.
#[derive(Deserialize)]
struct AnyOrder<'a> {
    #[serde(borrow)]
    customer_id: Option<&'a str>,
    amount_cents: Option<i64>,
}

/// Today's fields.
#[derive(Serialize)]
struct Order<'a> {
    customer: &'a str,
    amount: i64,
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
        // One parse tells the shapes apart (today's has no `customer_id`) and reads the old one.
        let order: AnyOrder<'_> = serde_json::from_slice(event.data_json())?;
        match (order.customer_id, order.amount_cents) {
            (Some(customer), Some(amount)) => {
                Ok(Upcast::data(Order { customer, amount }).with_type("OrderPlaced"))
            }
            (None, None) if event.event_type() == "OrderPlaced" => Ok(Upcast::unchanged()),
            _ => Err(format!(
                "{} at position {} is in no shape this upcaster knows",
                event.event_type(),
                event.position()
            )
            .into()),
        }
    }
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
