//! Open shopping carts, from the `cart` category (stream `cart-<id>`).
//!
//! - `ItemAdded {"sku", "quantity", "price"}` adds to `cart:<id>:item:<sku>` and to the cart's
//!   summary `cart:<id>` (`{"items", "total"}`).
//! - `ItemRemoved {"sku"}` deletes the item and takes it off the summary.
//! - `CartCheckedOut` deletes the cart's keys (found by a prefix scan) and records
//!   `checked-out:<id>` with the final summary; `CartAbandoned` just deletes them.
//!
//! Queries: `open` lists open carts (`?limit=`), `cart?id=` returns one cart with its items.

use lantern_sdk::{Event, Params, Projection, QueryError, State, Subscription, Value, json};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct ItemAdded {
    sku: String,
    quantity: i64,
    price: i64,
}

#[derive(Deserialize)]
struct ItemRemoved {
    sku: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Item {
    quantity: i64,
    price: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Summary {
    items: i64,
    total: i64,
}

/// The projection.
pub struct Carts;

fn cart_id<'a>(event: &Event<'a>) -> &'a str {
    event
        .stream()
        .split_once('-')
        .map_or(event.stream(), |(_, id)| id)
}

/// Deletes every key of a cart: its summary and its items.
fn clear(state: &mut State, id: &str) -> lantern_sdk::Result<()> {
    let items: Vec<(String, Value)> = state.scan(&format!("cart:{id}:item:"))?;
    for (key, _) in items {
        state.delete(&key);
    }
    state.delete(&format!("cart:{id}"));
    Ok(())
}

impl Projection for Carts {
    fn subscription() -> Subscription {
        Subscription::all().category("cart")
    }

    fn handle(event: &Event<'_>, state: &mut State) -> lantern_sdk::Result<()> {
        let id = cart_id(event);
        let summary_key = format!("cart:{id}");
        match event.event_type() {
            "ItemAdded" => {
                let added: ItemAdded = event.data()?;
                state.update(
                    &format!("cart:{id}:item:{}", added.sku),
                    |item: &mut Item| {
                        item.quantity += added.quantity;
                        item.price = added.price;
                    },
                )?;
                state.update(&summary_key, |summary: &mut Summary| {
                    summary.items += added.quantity;
                    summary.total += added.quantity * added.price;
                })
            }
            "ItemRemoved" => {
                let removed: ItemRemoved = event.data()?;
                let item_key = format!("cart:{id}:item:{}", removed.sku);
                let Some(item) = state.get::<Item>(&item_key)? else {
                    return Ok(()); // removing what is not there changes nothing
                };
                state.delete(&item_key);
                state.update(&summary_key, |summary: &mut Summary| {
                    summary.items -= item.quantity;
                    summary.total -= item.quantity * item.price;
                })
            }
            "CartCheckedOut" => {
                let summary: Summary = state.get(&summary_key)?.unwrap_or_default();
                clear(state, id)?;
                state.put(&format!("checked-out:{id}"), &summary)
            }
            "CartAbandoned" => clear(state, id),
            _ => Ok(()),
        }
    }

    fn query(name: &str, params: &Params, state: &State) -> Result<Value, QueryError> {
        match name {
            "open" => {
                let limit: usize = params.parse_or("limit", 100)?;
                let carts: Vec<Value> = state
                    .scan::<Value>("cart:")?
                    .into_iter()
                    .filter(|(key, _)| !key.contains(":item:"))
                    .take(limit)
                    .map(|(key, summary)| json!({"cart": key.trim_start_matches("cart:"), "summary": summary}))
                    .collect();
                Ok(Value::Array(carts))
            }
            "cart" => {
                let id = params.require("id")?;
                let Some(summary) = state.get::<Value>(&format!("cart:{id}"))? else {
                    return Err(QueryError::Failed(format!("no open cart {id:?}")));
                };
                let prefix = format!("cart:{id}:item:");
                let items: Vec<Value> = state
                    .scan::<Value>(&prefix)?
                    .into_iter()
                    .map(
                        |(key, item)| json!({"sku": key.trim_start_matches(&prefix), "item": item}),
                    )
                    .collect();
                Ok(json!({"cart": id, "summary": summary, "items": items}))
            }
            _ => Err(QueryError::NotFound),
        }
    }
}

lantern_sdk::export!(Carts);

#[cfg(test)]
mod tests {
    use lantern_sdk::testing::Harness;
    use lantern_sdk::{QueryError, json};

    use super::Carts;

    #[test]
    fn carts_fill_empty_and_check_out() {
        let mut harness = Harness::<Carts>::new();
        let add = |sku: &str, quantity: i64, price: i64| json!({"sku": sku, "quantity": quantity, "price": price});
        harness
            .append("cart-1", "ItemAdded", add("apple", 3, 50))
            .unwrap();
        harness
            .append("cart-1", "ItemAdded", add("pear", 1, 80))
            .unwrap();
        harness
            .append("cart-2", "ItemAdded", add("apple", 1, 50))
            .unwrap();
        harness
            .append("cart-1", "ItemRemoved", json!({"sku": "pear"}))
            .unwrap();
        harness
            .append("cart-1", "ItemRemoved", json!({"sku": "kiwi"}))
            .unwrap();
        assert_eq!(
            harness.get("cart:1"),
            Some(json!({"items": 3, "total": 150}))
        );
        assert_eq!(harness.get("cart:1:item:pear"), None);
        let cart = harness.query("cart", &[("id", "1")]).unwrap();
        assert_eq!(
            cart["items"],
            json!([{"sku": "apple", "item": {"quantity": 3, "price": 50}}])
        );
        assert_eq!(
            harness
                .query("open", &[])
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );

        harness
            .append("cart-1", "CartCheckedOut", json!({}))
            .unwrap();
        harness
            .append("cart-2", "CartAbandoned", json!({}))
            .unwrap();
        // Only the checked-out record is left: every cart key was deleted.
        assert_eq!(
            harness.entries(),
            vec![(
                "checked-out:1".to_owned(),
                json!({"items": 3, "total": 150})
            )]
        );
        assert_eq!(harness.query("open", &[]).unwrap(), json!([]));
        assert!(matches!(
            harness.query("cart", &[("id", "1")]),
            Err(QueryError::Failed(_))
        ));
    }
}
