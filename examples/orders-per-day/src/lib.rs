//! Orders and their total per day (UTC), by the time the store recorded each `OrderPlaced`.
//!
//! `day:<YYYY-MM-DD>` holds `{"orders", "total"}`. Query `days?from=2026-01-01&to=2026-01-31`
//! returns the days in that range (both ends included), oldest first. A projection has no clock
//! (it must fold the same way on every replay): the day comes from `Event::recorded_at`.

use std::time::UNIX_EPOCH;

use lantern_sdk::{Event, Params, Projection, QueryError, State, Subscription, Value, json};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct OrderPlaced {
    amount: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Day {
    orders: i64,
    total: i64,
}

/// The projection.
pub struct OrdersPerDay;

/// `YYYY-MM-DD` of a count of days since 1970-01-01 (the proleptic Gregorian calendar; Howard
/// Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

impl Projection for OrdersPerDay {
    fn subscription() -> Subscription {
        Subscription::all()
            .category("order")
            .event_type("OrderPlaced")
    }

    fn handle(event: &Event<'_>, state: &mut State) -> lantern_sdk::Result<()> {
        let order: OrderPlaced = event.data()?;
        let seconds = event
            .recorded_at()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let day = civil_date((seconds / 86_400) as i64);
        state.update(&format!("day:{day}"), |d: &mut Day| {
            d.orders += 1;
            d.total += order.amount;
        })
    }

    fn query(name: &str, params: &Params, state: &State) -> Result<Value, QueryError> {
        match name {
            "days" => {
                let from: String = params.parse_or("from", String::new())?;
                let to: String = params.parse_or("to", "9999-12-31".to_owned())?;
                let days: Vec<(String, Day)> = state.scan("day:")?;
                Ok(days
                    .into_iter()
                    .map(|(key, day)| (key.trim_start_matches("day:").to_owned(), day))
                    .filter(|(date, _)| *date >= from && *date <= to)
                    .map(|(date, day)| json!({"day": date, "orders": day.orders, "total": day.total}))
                    .collect())
            }
            _ => Err(QueryError::NotFound),
        }
    }
}

lantern_sdk::export!(OrdersPerDay);

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use lantern_sdk::json;
    use lantern_sdk::testing::{Harness, TestEvent};

    use super::{OrdersPerDay, civil_date};

    #[test]
    fn dates_are_the_calendar_s() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(59), "1970-03-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_454), "2026-01-01");
        assert_eq!(civil_date(-1), "1969-12-31");
    }

    #[test]
    fn orders_count_on_the_day_they_were_recorded() {
        let day = |date_days: u64, hour: u64| {
            UNIX_EPOCH + Duration::from_secs(date_days * 86_400 + hour * 3600)
        };
        let placed = |amount: i64| json!({"customer": "c-1", "amount": amount});
        let mut harness = Harness::<OrdersPerDay>::new();
        harness
            .batch(vec![
                TestEvent::new("order-1", "OrderPlaced", placed(10)).at(day(20_454, 0)),
                TestEvent::new("order-2", "OrderPlaced", placed(5)).at(day(20_454, 23)),
                TestEvent::new("order-3", "OrderPlaced", placed(7)).at(day(20_455, 1)),
                TestEvent::new("order-3", "OrderShipped", json!({})).at(day(20_455, 2)),
            ])
            .unwrap();
        assert_eq!(
            harness.get("day:2026-01-01"),
            Some(json!({"orders": 2, "total": 15}))
        );
        assert_eq!(
            harness.query("days", &[("from", "2026-01-02")]).unwrap(),
            json!([{"day": "2026-01-02", "orders": 1, "total": 7}])
        );
        // Without a time of its own, an event is recorded by the harness's clock (2026-01-01).
        harness.append("order-4", "OrderPlaced", placed(1)).unwrap();
        assert_eq!(
            harness.get("day:2026-01-01"),
            Some(json!({"orders": 3, "total": 16}))
        );
    }
}
