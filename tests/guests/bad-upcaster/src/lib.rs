//! An upcaster of `Tick` events that misbehaves on command, by the event's data:
//! `{"fail": true}` returns an error, `{"trap": true}` panics, `{"rename": true}` answers a type
//! it does not declare; any other `Tick` gains `"upcast": true`.

use lantern_sdk::{Event, Upcast, UpcastTypes, Upcaster, Value};

/// The upcaster.
pub struct BadUpcaster;

impl Upcaster for BadUpcaster {
    fn types() -> UpcastTypes {
        UpcastTypes::new().takes("Tick")
    }

    fn upcast(event: &Event<'_>) -> lantern_sdk::Result<Upcast> {
        let mut data: Value = event.data()?;
        if data["fail"] == true {
            return Err("this tick cannot be upcast".into());
        }
        if data["trap"] == true {
            panic!("the upcaster panicked on purpose");
        }
        if data["rename"] == true {
            return Ok(Upcast::unchanged().with_type("Undeclared"));
        }
        data["upcast"] = Value::Bool(true);
        Ok(Upcast::data(data))
    }
}

lantern_sdk::export_upcaster!(BadUpcaster);
