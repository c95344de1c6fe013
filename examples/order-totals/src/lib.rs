//! Order count and total per customer, from the `order` category.
//!
//! `OrderPlaced {"customer", "amount"}` adds one order and the amount to `customer:<id>`;
//! `OrderCancelled` with the same shape takes them away. Query `top?n=3` returns the customers with
//! the largest totals, largest first.

use std::borrow::Cow;

use lantern_sdk::{Event, Params, Projection, QueryError, State, Subscription, Value, json};
use serde::{Deserialize, Serialize};

/// Borrowed from the event: the customer id is copied only if its JSON has escapes.
#[derive(Deserialize)]
struct OrderChange<'a> {
    #[serde(borrow)]
    customer: Cow<'a, str>,
    amount: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Totals {
    orders: i64,
    total: i64,
}

/// The projection.
pub struct OrderTotals;

impl Projection for OrderTotals {
    fn subscription() -> Subscription {
        Subscription::all().category("order")
    }

    fn handle(event: &Event<'_>, state: &mut State) -> lantern_sdk::Result<()> {
        let sign = match event.event_type() {
            "OrderPlaced" => 1,
            "OrderCancelled" => -1,
            _ => return Ok(()),
        };
        let change: OrderChange<'_> = event.data()?;
        state.update(
            &format!("customer:{}", change.customer),
            |t: &mut Totals| {
                t.orders += sign;
                t.total += sign * change.amount;
            },
        )
    }

    fn query(name: &str, params: &Params, state: &State) -> Result<Value, QueryError> {
        match name {
            "top" => {
                let n: usize = params.parse_or("n", 10)?;
                let mut customers: Vec<(String, Totals)> = state.scan("customer:")?;
                // Largest total first; ties in customer order, so answers are stable.
                customers.sort_by(|a, b| b.1.total.cmp(&a.1.total).then_with(|| a.0.cmp(&b.0)));
                Ok(customers
                    .into_iter()
                    .take(n)
                    .map(|(key, totals)| {
                        json!({
                            "customer": key.trim_start_matches("customer:"),
                            "total": totals.total,
                            "orders": totals.orders,
                        })
                    })
                    .collect())
            }
            _ => Err(QueryError::NotFound),
        }
    }
}

lantern_sdk::export!(OrderTotals);

#[cfg(test)]
mod tests {
    use lantern_sdk::testing::{Harness, TestEvent};
    use lantern_sdk::{QueryError, json};

    use super::OrderTotals;

    #[test]
    fn totals_follow_placed_and_cancelled_orders() {
        let mut harness = Harness::<OrderTotals>::new();
        harness
            .batch(vec![
                TestEvent::new(
                    "order-1",
                    "OrderPlaced",
                    json!({"customer": "c-1", "amount": 1250}),
                ),
                TestEvent::new(
                    "order-2",
                    "OrderPlaced",
                    json!({"customer": "c-1", "amount": 750}),
                ),
                TestEvent::new(
                    "order-3",
                    "OrderPlaced",
                    json!({"customer": "c-2", "amount": 5000}),
                ),
                TestEvent::new("order-2", "OrderShipped", json!({"carrier": "x"})),
                TestEvent::new(
                    "invoice-1",
                    "OrderPlaced",
                    json!({"customer": "c-9", "amount": 1}),
                ),
            ])
            .unwrap();
        harness
            .append(
                "order-2",
                "OrderCancelled",
                json!({"customer": "c-1", "amount": 750}),
            )
            .unwrap();
        assert_eq!(
            harness.get("customer:c-1"),
            Some(json!({"orders": 1, "total": 1250}))
        );
        assert_eq!(
            harness.get("customer:c-2"),
            Some(json!({"orders": 1, "total": 5000}))
        );
        // Not in the `order` category: never seen.
        assert_eq!(harness.get("customer:c-9"), None);
        assert_eq!(
            harness.query("top", &[("n", "1")]).unwrap(),
            json!([{"customer": "c-2", "total": 5000, "orders": 1}])
        );
        assert_eq!(
            harness.query("top", &[]).unwrap().as_array().unwrap().len(),
            2
        );
        assert_eq!(harness.query("nope", &[]), Err(QueryError::NotFound));
        assert!(matches!(
            harness.query("top", &[("n", "many")]),
            Err(QueryError::Failed(_))
        ));
    }

    #[test]
    fn a_customer_id_with_escapes_is_read_whole() {
        let mut harness = Harness::<OrderTotals>::new();
        harness
            .append(
                "order-1",
                "OrderPlaced",
                json!({"customer": "c-\"é\"\n", "amount": 10}),
            )
            .unwrap();
        // (serde_json escapes the quotes and the newline: the id cannot be borrowed.)
        assert_eq!(
            harness.get("customer:c-\"é\"\n"),
            Some(json!({"orders": 1, "total": 10}))
        );
    }

    #[test]
    fn a_bad_event_fails_its_whole_batch() {
        let mut harness = Harness::<OrderTotals>::new();
        let result = harness.batch(vec![
            TestEvent::new(
                "order-1",
                "OrderPlaced",
                json!({"customer": "c-1", "amount": 10}),
            ),
            TestEvent::new("order-2", "OrderPlaced", json!({"customer": "c-1"})),
        ]);
        assert!(result.is_err());
        assert_eq!(harness.get("customer:c-1"), None);
    }
}
