//! Events as JSON, written straight into a buffer: `data` and `metadata` are the stored JSON text,
//! so they come back exactly as sent and are never parsed on the way out.

use crate::store::RecordedEvent;

/// Appends the contract's JSON object for `event` to `out`.
pub fn write_event(out: &mut Vec<u8>, event: &RecordedEvent) {
    let string = |out: &mut Vec<u8>, s: &str| {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    };
    out.extend_from_slice(b"{\"position\":");
    out.extend_from_slice(event.position.to_string().as_bytes());
    out.extend_from_slice(b",\"stream\":");
    string(out, &event.stream);
    out.extend_from_slice(b",\"revision\":");
    out.extend_from_slice(event.revision.to_string().as_bytes());
    out.extend_from_slice(b",\"id\":\"");
    out.extend_from_slice(
        event
            .id
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"type\":");
    string(out, &event.event_type);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(&event.data);
    out.extend_from_slice(b",\"metadata\":");
    match &event.metadata {
        Some(metadata) => out.extend_from_slice(metadata),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"recorded_at\":\"");
    out.extend_from_slice(
        humantime::format_rfc3339_millis(event.recorded_at())
            .to_string()
            .as_bytes(),
    );
    out.extend_from_slice(b"\"}");
}

/// Appends `[event, event, ...]` to `out`.
pub fn write_events(out: &mut Vec<u8>, events: &[RecordedEvent]) {
    out.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_event(out, event);
    }
    out.push(b']');
}

/// Appends the contract's snapshot object, `{"revision", "state", "recorded_at"}`, to `out`.
pub fn write_snapshot(out: &mut Vec<u8>, snapshot: &crate::store::Snapshot) {
    out.extend_from_slice(b"{\"revision\":");
    out.extend_from_slice(snapshot.revision.to_string().as_bytes());
    out.extend_from_slice(b",\"state\":");
    out.extend_from_slice(&snapshot.state);
    out.extend_from_slice(b",\"recorded_at\":\"");
    out.extend_from_slice(
        humantime::format_rfc3339_millis(snapshot.recorded_at())
            .to_string()
            .as_bytes(),
    );
    out.extend_from_slice(b"\"}");
}
