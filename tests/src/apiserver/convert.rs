//! Conversion between the two Event views (`v1` and `events.k8s.io/v1`), which share one storage
//! in the real server: an Event written through one is read through the other.

use serde_json::{Map, Value, json};

use super::resources::ResourceInfo;

/// (core v1 field, events.k8s.io/v1 field)
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(obj: &Value, to_events_v1: bool, api_version: &str) -> Value {
    let Value::Object(m) = obj else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let renamed = RENAMES.iter().find_map(|(core, ev)| {
            if to_events_v1 && k == core {
                Some(*ev)
            } else if !to_events_v1 && k == ev {
                Some(*core)
            } else {
                None
            }
        });
        out.insert(renamed.unwrap_or(k).to_string(), v.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    Value::Object(out)
}

/// The form `view` shows of a stored object.
pub fn to_view(view: &ResourceInfo, stored: &Value) -> Value {
    if view.is_converted() {
        rename(stored, true, &view.api_version())
    } else {
        stored.clone()
    }
}

/// The stored form of an object written through `view`.
pub fn to_storage(view: &ResourceInfo, obj: Value) -> Value {
    if view.is_converted() {
        rename(&obj, false, "v1")
    } else {
        obj
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    #[test]
    fn events_round_trip_between_views() {
        let ev = find("events.k8s.io", "v1", "events").unwrap();
        let o = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "note": "hi", "regarding": {"name": "x"}});
        let stored = to_storage(ev, o.clone());
        assert_eq!(stored["message"], "hi");
        assert_eq!(stored["involvedObject"]["name"], "x");
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(to_view(ev, &stored), o);
    }
}
