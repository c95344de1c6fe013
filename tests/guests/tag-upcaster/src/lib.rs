//! Tags every `OrderPlaced` it is given with `"tagged": true`, keeping the rest of its data: in a
//! chain, what it sees tells which upcasters ran before it.

use lantern_sdk::{Event, Upcast, UpcastTypes, Upcaster, Value};

/// The upcaster.
pub struct TagUpcaster;

impl Upcaster for TagUpcaster {
    fn types() -> UpcastTypes {
        UpcastTypes::new().takes("OrderPlaced")
    }

    fn upcast(event: &Event<'_>) -> lantern_sdk::Result<Upcast> {
        let mut data: Value = event.data()?;
        data["tagged"] = Value::Bool(true);
        Ok(Upcast::data(data))
    }
}

lantern_sdk::export_upcaster!(TagUpcaster);
