//! Just enough of the Kubernetes protobuf encoding to read what `kubectl create namespace`,
//! `create configmap`, `create secret generic` and `create service` send (kubectl's typed clients
//! write protobuf). Answers are always JSON, which those clients accept too.
//!
//! Go's protobuf encoding writes every non-pointer field, so empty strings, zero numbers and
//! `false` of plain bools read as absent (what `omitempty` makes of them in JSON).
//!
//! A body with a kind or a field this module does not know is refused with `415`, never
//! half-read: nothing is silently dropped.

use serde_json::{Map, Value, json};

use super::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    /// A non-pointer Go bool: `false` is the same as absent.
    Bool,
    /// A `*bool`: `false` is a value.
    OptBool,
    Msg(&'static [Field]),
    MapStr,
    MapBytes,
    RepStr,
    RepMsg(&'static [Field]),
    IntOrString,
    Time,
    /// Skipped: Service status, which a create resets anyway (as the real server does).
    Ignored,
}

type Field = (u64, &'static str, Kind);

const OWNER_REFERENCE: &[Field] = &[
    (1, "kind", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
    (5, "apiVersion", Kind::Str),
    (6, "controller", Kind::OptBool),
    (7, "blockOwnerDeletion", Kind::OptBool),
];

const OBJECT_META: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "generateName", Kind::Str),
    (3, "namespace", Kind::Str),
    (4, "selfLink", Kind::Str),
    (5, "uid", Kind::Str),
    (6, "resourceVersion", Kind::Str),
    (7, "generation", Kind::Int),
    (8, "creationTimestamp", Kind::Time),
    (9, "deletionTimestamp", Kind::Time),
    (10, "deletionGracePeriodSeconds", Kind::Int),
    (11, "labels", Kind::MapStr),
    (12, "annotations", Kind::MapStr),
    (13, "ownerReferences", Kind::RepMsg(OWNER_REFERENCE)),
    (14, "finalizers", Kind::RepStr),
];

const NAMESPACE: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "spec", Kind::Msg(&[(1, "finalizers", Kind::RepStr)])),
    (3, "status", Kind::Msg(&[(1, "phase", Kind::Str)])),
];

const CONFIG_MAP: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapStr),
    (3, "binaryData", Kind::MapBytes),
    (4, "immutable", Kind::OptBool),
];

const SECRET: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapBytes),
    (3, "type", Kind::Str),
    (4, "stringData", Kind::MapStr),
    (5, "immutable", Kind::OptBool),
];

const SERVICE_PORT: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "protocol", Kind::Str),
    (3, "port", Kind::Int),
    (4, "targetPort", Kind::IntOrString),
    (5, "nodePort", Kind::Int),
    (6, "appProtocol", Kind::Str),
];

const SERVICE_SPEC: &[Field] = &[
    (1, "ports", Kind::RepMsg(SERVICE_PORT)),
    (2, "selector", Kind::MapStr),
    (3, "clusterIP", Kind::Str),
    (4, "type", Kind::Str),
    (5, "externalIPs", Kind::RepStr),
    (7, "sessionAffinity", Kind::Str),
    (8, "loadBalancerIP", Kind::Str),
    (9, "loadBalancerSourceRanges", Kind::RepStr),
    (10, "externalName", Kind::Str),
    (11, "externalTrafficPolicy", Kind::Str),
    (12, "healthCheckNodePort", Kind::Int),
    (13, "publishNotReadyAddresses", Kind::Bool),
    (17, "ipFamilyPolicy", Kind::Str),
    (18, "clusterIPs", Kind::RepStr),
    (19, "ipFamilies", Kind::RepStr),
    (20, "allocateLoadBalancerNodePorts", Kind::OptBool),
    (21, "loadBalancerClass", Kind::Str),
    (22, "internalTrafficPolicy", Kind::Str),
];

const SERVICE: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "spec", Kind::Msg(SERVICE_SPEC)),
    (3, "status", Kind::Ignored),
];

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first()?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        if n > self.buf.len() {
            return None;
        }
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(b)
    }

    /// (field number, wire type, varint value or bytes)
    fn field(&mut self) -> Option<(u64, u64, u64, &'a [u8])> {
        let tag = self.varint()?;
        let (num, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => Some((num, wire, self.varint()?, &[])),
            2 => Some((num, wire, 0, self.bytes()?)),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if self.buf.len() < n {
                    return None;
                }
                let (b, rest) = self.buf.split_at(n);
                self.buf = rest;
                Some((num, wire, 0, b))
            }
            _ => None,
        }
    }
}

fn unsupported(what: &str) -> ApiError {
    ApiError::unsupported_media_type(format!(
        "the ferrolb test API server reads protobuf only for Namespaces, ConfigMaps, Secrets and Services \
         and only their common fields; {what}; send application/json instead"
    ))
}

fn malformed() -> ApiError {
    ApiError::bad_request("the protobuf body is malformed")
}

fn text(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| malformed())
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ApiError> {
    let mut r = Reader { buf: b };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while !r.buf.is_empty() {
        let (num, _, _, data) = r.field().ok_or_else(malformed)?;
        match num {
            1 => k = text(data)?,
            2 if bytes_value => v = json!(super::store::base64(data)),
            2 => v = json!(text(data)?),
            _ => return Err(malformed()),
        }
    }
    Ok((k, v))
}

fn decode(buf: &[u8], schema: &[Field], path: &str) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut r = Reader { buf };
    while !r.buf.is_empty() {
        let (num, wire, int, data) = r.field().ok_or_else(malformed)?;
        let Some((_, name, kind)) = schema.iter().find(|f| f.0 == num) else {
            return Err(unsupported(&format!(
                "field number {num} of {path} is not known"
            )));
        };
        let name = *name;
        let entry = |out: &mut Map<String, Value>| {
            out.entry(name.to_string())
                .or_insert_with(|| json!([]))
                .clone()
        };
        match (*kind, wire) {
            (Kind::Str, 2) => {
                if !data.is_empty() {
                    out.insert(name.into(), json!(text(data)?));
                }
            }
            (Kind::Int, 0) => {
                if int != 0 {
                    out.insert(name.into(), json!(int as i64));
                }
            }
            (Kind::Bool, 0) => {
                if int != 0 {
                    out.insert(name.into(), json!(true));
                }
            }
            (Kind::OptBool, 0) => {
                out.insert(name.into(), json!(int != 0));
            }
            (Kind::Msg(s), 2) => {
                out.insert(
                    name.into(),
                    Value::Object(decode(data, s, &format!("{path}.{name}"))?),
                );
            }
            (Kind::MapStr | Kind::MapBytes, 2) => {
                let (k, v) = map_entry(data, matches!(kind, Kind::MapBytes))?;
                let m = out.entry(name.to_string()).or_insert_with(|| json!({}));
                m[k] = v;
            }
            (Kind::RepStr, 2) => {
                let mut list = entry(&mut out);
                list.as_array_mut().expect("array").push(json!(text(data)?));
                out.insert(name.into(), list);
            }
            (Kind::RepMsg(s), 2) => {
                let mut list = entry(&mut out);
                list.as_array_mut()
                    .expect("array")
                    .push(Value::Object(decode(data, s, &format!("{path}.{name}"))?));
                out.insert(name.into(), list);
            }
            (Kind::IntOrString, 2) => {
                let m = decode(
                    data,
                    &[
                        (1, "type", Kind::Int),
                        (2, "intVal", Kind::Int),
                        (3, "strVal", Kind::Str),
                    ],
                    path,
                )?;
                if m.is_empty() {
                    continue;
                }
                let v = if m.get("type").and_then(Value::as_i64) == Some(1) {
                    m.get("strVal").cloned().unwrap_or(json!(""))
                } else {
                    m.get("intVal").cloned().unwrap_or(json!(0))
                };
                out.insert(name.into(), v);
            }
            (Kind::Ignored, _) => {}
            (Kind::Time, 2) => {
                let m = decode(
                    data,
                    &[(1, "seconds", Kind::Int), (2, "nanos", Kind::Int)],
                    path,
                )?;
                let secs = m.get("seconds").and_then(Value::as_i64).unwrap_or(0);
                if secs <= 0 {
                    continue;
                }
                let t = jiff::Timestamp::from_second(secs).map_err(|_| malformed())?;
                out.insert(name.into(), json!(t.to_string()));
            }
            _ => return Err(malformed()),
        }
    }
    Ok(out)
}

/// Decodes a protobuf request body (`k8s\0` + `runtime.Unknown`) into the JSON object it means.
pub fn decode_body(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(malformed)?;
    let mut r = Reader { buf: rest };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while !r.buf.is_empty() {
        let (num, _, _, data) = r.field().ok_or_else(malformed)?;
        match num {
            1 => {
                let tm = decode(
                    data,
                    &[(1, "apiVersion", Kind::Str), (2, "kind", Kind::Str)],
                    "typeMeta",
                )?;
                api_version = tm
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into();
                kind = tm.get("kind").and_then(Value::as_str).unwrap_or("").into();
            }
            2 => raw = data,
            3 | 4 => {
                if !data.is_empty() {
                    return Err(unsupported("content encodings are not supported"));
                }
            }
            _ => return Err(malformed()),
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "Service") => SERVICE,
        _ => {
            return Err(unsupported(&format!(
                "{api_version} {kind} is not one of them"
            )));
        }
    };
    let mut obj = decode(raw, schema, &kind)?;
    // Protobuf has no "absent" for an empty message; JSON clients leave these out.
    if obj
        .get("status")
        .is_some_and(|s| s.as_object().is_some_and(Map::is_empty))
    {
        obj.remove("status");
    }
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}
