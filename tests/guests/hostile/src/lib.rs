//! Misbehaves on the event type's command: `Trap` panics, `Loop` never returns, `Grow` eats
//! memory, `Flood` writes a huge write set, `Fail` returns an error, `Slow` spins `data` times
//! (a number) before counting, so a rebuild takes long enough to watch, `Leak` keeps `data` MiB
//! for the rest of the instance's life and counts (as a garbage-collected guest's heap grows
//! across batches). Anything else counts the event under `count`, so tests can see it working
//! between faults. Queries: `count` answers the count; `spin?n=N` spins N times first, so a test
//! can hold a query running while it asks another.

use lantern_sdk::{Event, Params, Projection, QueryError, State, Subscription, Value, json};

thread_local! {
    /// What `Leak` keeps: it lives as long as the instance.
    static LEAKED: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The projection.
pub struct Hostile;

impl Projection for Hostile {
    fn subscription() -> Subscription {
        Subscription::all().category("hostile")
    }

    fn handle(event: &Event<'_>, state: &mut State) -> lantern_sdk::Result<()> {
        match event.event_type() {
            "Trap" => panic!("told to trap at position {}", event.position()),
            "Loop" => {
                let mut spins = 0u64;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            "Grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "Flood" => {
                let big = "x".repeat(1 << 20);
                for i in 0..12 {
                    state.put(&format!("flood-{i}"), &big)?;
                }
                Ok(())
            }
            "Fail" => Err(lantern_sdk::Error::new("told to fail")),
            "Leak" => {
                let mib: usize = event.data()?;
                LEAKED.with(|leaked| leaked.borrow_mut().push(vec![1u8; mib << 20]));
                state.update("count", |n: &mut u64| *n += 1)
            }
            "Slow" => {
                let spins: u64 = event.data()?;
                let mut done = 0u64;
                while std::hint::black_box(done) < spins {
                    done += 1;
                }
                state.update("count", |n: &mut u64| *n += 1)
            }
            _ => state.update("count", |n: &mut u64| *n += 1),
        }
    }

    fn query(name: &str, params: &Params, state: &State) -> Result<Value, QueryError> {
        let spins: u64 = match name {
            "count" => 0,
            "spin" => params.parse_or("n", 0)?,
            _ => return Err(QueryError::NotFound),
        };
        let mut done = 0u64;
        while std::hint::black_box(done) < spins {
            done += 1;
        }
        let count: Option<u64> = state.get("count")?;
        Ok(json!({"count": count.unwrap_or(0), "spins": done}))
    }
}

lantern_sdk::export!(Hostile);
