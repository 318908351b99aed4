//! HTTP: routing of API paths, request parsing, responses, watch streams, the admin endpoint.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::patch::PatchType;
use super::resources::{self, ResourceInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};
use super::store::{
    Change, DeleteOutcome, EventType, ListOptions, Poll, Preconditions, Subresource,
};
use super::{Contents, Shared, convert};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Accepts connections until aborted; aborting drops every connection with it.
/// (Boxed: the admin endpoint restarts the server from inside it.)
pub(super) fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(serve_loop(listener, shared))
}

async fn serve_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn full(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, v: &impl Serialize) -> Response<Body> {
    full(
        status,
        "application/json",
        serde_json::to_vec(v).expect("JSON serializes"),
    )
}

fn error_response(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(code, &e.to_status());
    if e.code == 429 {
        resp.headers_mut()
            .insert("Retry-After", HeaderValue::from_static("1"));
    }
    resp
}

/// Serializes an object without `kind` and `apiVersion`, as list items are.
struct ListItem<'a>(&'a Value);

impl Serialize for ListItem<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                let mut map = s.serialize_map(None)?;
                for (k, v) in m {
                    if k != "kind" && k != "apiVersion" {
                        map.serialize_entry(k, v)?;
                    }
                }
                map.end()
            }
            other => other.serialize(s),
        }
    }
}

#[derive(Debug)]
struct Target {
    r: &'static ResourceInfo,
    ns: Option<String>,
    name: Option<String>,
    sub: Subresource,
    legacy_watch: bool,
}

enum Route {
    Doc(Value),
    /// JSON, or protobuf when the client asks for it (kubectl does).
    OpenApiV2,
    Text(&'static str),
    Resource(Target),
}

fn route(path: &str, server_address: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || ApiError::path_not_found(path);
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        [] => {
            return Ok(Route::Doc(json!({"paths": [
                "/api", "/api/v1", "/apis", "/apis/coordination.k8s.io/v1", "/apis/discovery.k8s.io/v1",
                "/apis/events.k8s.io/v1", "/healthz", "/livez", "/readyz", "/version"]})));
        }
        ["version"] => return Ok(Route::Doc(resources::version_info())),
        ["healthz" | "livez" | "readyz", ..] => return Ok(Route::Text("ok")),
        ["openapi", "v3"] => return Ok(Route::Doc(resources::openapi_v3_root())),
        ["openapi", "v3", "api", v] => {
            return resources::openapi_v3_group_version("", v)
                .map(Route::Doc)
                .ok_or_else(not_found);
        }
        ["openapi", "v3", "apis", g, v] => {
            return resources::openapi_v3_group_version(g, v)
                .map(Route::Doc)
                .ok_or_else(not_found);
        }
        ["openapi", "v2"] => return Ok(Route::OpenApiV2),
        ["openapi", ..] => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("{path} is not served by the ferrolb test API server"),
            ));
        }
        ["api"] => return Ok(Route::Doc(resources::api_versions(server_address))),
        ["apis"] => return Ok(Route::Doc(resources::api_group_list())),
        ["apis", g] => {
            return resources::api_group_doc(g)
                .map(Route::Doc)
                .ok_or_else(not_found);
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    if !resources::group_served(group, version) {
        return Err(not_found());
    }
    if rest.is_empty() {
        return Ok(Route::Doc(resources::api_resource_list(group, version)));
    }
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && resources::find(group, version, rest[2]).is_some_and(|r| r.namespaced);
    let (ns, rest) = if namespaced_path {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(*s)),
        _ => return Err(not_found()),
    };
    let r = resources::find(group, version, plural).ok_or_else(not_found)?;
    if r.namespaced != ns.is_some() && (name.is_some() || !r.namespaced) {
        return Err(not_found());
    }
    let sub = match sub {
        None => Subresource::Main,
        Some("status") if r.has_status && !legacy_watch => Subresource::Status,
        Some(other) => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!(
                    "the subresource \"{other}\" of {} is not supported by the ferrolb test API server",
                    r.qualified()
                ),
            ));
        }
    };
    Ok(Route::Resource(Target {
        r,
        ns,
        name,
        sub,
        legacy_watch,
    }))
}

struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    fn list_options(&self, r: &ResourceInfo) -> Result<ListOptions, ApiError> {
        let limit = match self.get("limit") {
            Some(l) if !l.is_empty() => Some(
                l.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
            ),
            _ => None,
        };
        Ok(ListOptions {
            labels: LabelSelector::parse(self.get("labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(self.get("fieldSelector").unwrap_or(""), r)?,
            limit,
            continue_token: self.get("continue").map(String::from),
        })
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && !req.uri().path().starts_with("/admin/");
    let answer_delay = shared.faults.answer_delay();
    let response = handle_now(shared, req).await;
    if write && !answer_delay.is_zero() {
        tokio::time::sleep(answer_delay).await;
    }
    response
}

async fn handle_now(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(action) = path.strip_prefix("/admin/") {
        let query = Query::parse(req.uri().query());
        let method = req.method().clone();
        // Read the whole request before answering: a restart drops this
        // connection shortly after the answer, and a client still writing
        // its body then (on a loaded machine) would see a broken pipe.
        let _ = req.into_body().collect().await;
        return admin(&shared, &method, action, &query).await;
    }
    let delay = shared.faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = shared.faults.take_failure() {
        let e = if code == 429 {
            ApiError::too_many_requests("injected fault: too many requests, please try again later")
        } else {
            ApiError::new(
                code,
                if code >= 500 {
                    "InternalError"
                } else {
                    "BadRequest"
                },
                "injected fault",
            )
        };
        return error_response(&e);
    }
    let method = req.method().clone();
    let uri = req.uri().clone();
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let resp = match api(&shared, req).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    };
    tracing::debug!(%method, %uri, %accept, status = resp.status().as_u16(), "request");
    resp
}

async fn api(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let target = match route(&path, &shared.addr().to_string())? {
        Route::Doc(v) if method == Method::GET => return Ok(json_response(StatusCode::OK, &v)),
        Route::OpenApiV2 if method == Method::GET => {
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Ok(if accept.contains("protobuf") {
                full(
                    StatusCode::OK,
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    super::openapi::v2_protobuf(),
                )
            } else {
                json_response(StatusCode::OK, &super::openapi::v2_json())
            });
        }
        Route::Text(t) if method == Method::GET => {
            return Ok(full(StatusCode::OK, "text/plain", t.as_bytes().to_vec()));
        }
        Route::Doc(_) | Route::Text(_) | Route::OpenApiV2 => {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not allowed on {path}"
            )));
        }
        Route::Resource(t) => t,
    };
    authorize(shared, &req, &method, &target, &query)?;
    let options_kind = match method {
        Method::POST => "CreateOptions",
        Method::PUT => "UpdateOptions",
        Method::PATCH => "PatchOptions",
        _ => "DeleteOptions",
    };
    let mut dry_run =
        method != Method::GET && parse_dry_run(options_kind, query.0.get("dryRun").into_iter())?;
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?
        .to_bytes();
    let Target {
        r,
        ns,
        name,
        sub,
        legacy_watch,
    } = target;
    let ns_str = ns.clone().unwrap_or_default();
    let watch = legacy_watch || query.flag("watch");
    match (&method, name) {
        (&Method::GET, None) if watch => watch_response(shared, r, ns, &query, None),
        (&Method::GET, Some(n)) if watch => watch_response(shared, r, ns, &query, Some(n)),
        (&Method::GET, None) => {
            let opts = query.list_options(r)?;
            let list = shared.store().list(r, ns.as_deref(), &opts)?;
            Ok(list_response(r, list))
        }
        (&Method::GET, Some(n)) => {
            let obj = shared.store().get(r, &ns_str, &n)?;
            Ok(object_response(StatusCode::OK, r, &obj))
        }
        (&Method::POST, None) => {
            let v = parse_json_body(&content_type, &body)?;
            if dry_run {
                let mut obj = shared.store().dry_run_copy().create(r, &ns_str, v)?;
                // A dry-run create stores nothing, so the object has no version (as on a real server).
                if let Some(m) = Arc::make_mut(&mut obj)
                    .get_mut("metadata")
                    .and_then(Value::as_object_mut)
                {
                    m.remove("resourceVersion");
                }
                return Ok(object_response(StatusCode::CREATED, r, &obj));
            }
            let (obj, rv) = {
                let mut store = shared.store();
                let obj = store.create(r, &ns_str, v)?;
                (obj, store.resource_version())
            };
            shared.notify(rv);
            Ok(object_response(StatusCode::CREATED, r, &obj))
        }
        (&Method::PUT, Some(n)) => {
            let v = parse_json_body(&content_type, &body)?;
            if dry_run {
                let store = shared.store();
                let existed = store.get(r, &ns_str, &n).ok();
                let mut copy = store.dry_run_copy();
                drop(store);
                let obj = copy.update(r, &ns_str, &n, v, sub)?;
                let code = if existed.is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                };
                return Ok(object_response(code, r, &dry_run_version(obj, existed)));
            }
            let (obj, rv, created) = {
                let mut store = shared.store();
                let existed = store.get(r, &ns_str, &n).is_ok();
                let obj = store.update(r, &ns_str, &n, v, sub)?;
                (obj, store.resource_version(), !existed)
            };
            shared.notify(rv);
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(object_response(code, r, &obj))
        }
        (&Method::PATCH, Some(n)) => {
            let pt = PatchType::from_content_type(&content_type)?;
            if dry_run {
                let store = shared.store();
                let existed = store.get(r, &ns_str, &n).ok();
                let mut copy = store.dry_run_copy();
                drop(store);
                let obj = copy.patch(r, &ns_str, &n, pt, &body, sub)?;
                return Ok(object_response(
                    StatusCode::OK,
                    r,
                    &dry_run_version(obj, existed),
                ));
            }
            let (obj, rv) = {
                let mut store = shared.store();
                let obj = store.patch(r, &ns_str, &n, pt, &body, sub)?;
                (obj, store.resource_version())
            };
            shared.notify(rv);
            Ok(object_response(StatusCode::OK, r, &obj))
        }
        (&Method::DELETE, Some(n)) if sub == Subresource::Main => {
            let (pre, body_dry_run) = parse_delete_options(&body)?;
            dry_run |= body_dry_run;
            let (outcome, rv) = if dry_run {
                let store = shared.store();
                let existed = store.get(r, &ns_str, &n).ok();
                let mut copy = store.dry_run_copy();
                drop(store);
                let outcome = match copy.delete(r, &ns_str, &n, &pre)? {
                    DeleteOutcome::Pending(o) => {
                        DeleteOutcome::Pending(dry_run_version(o, existed.clone()))
                    }
                    DeleteOutcome::Deleted(o) => {
                        DeleteOutcome::Deleted(dry_run_version(o, existed))
                    }
                };
                (outcome, None)
            } else {
                let mut store = shared.store();
                let outcome = store.delete(r, &ns_str, &n, &pre)?;
                (outcome, Some(store.resource_version()))
            };
            if let Some(rv) = rv {
                shared.notify(rv);
            }
            Ok(match outcome {
                DeleteOutcome::Pending(obj) => object_response(StatusCode::OK, r, &obj),
                DeleteOutcome::Deleted(obj) if r.return_deleted_object => {
                    object_response(StatusCode::OK, r, &obj)
                }
                DeleteOutcome::Deleted(obj) => {
                    let uid = obj
                        .pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    json_response(StatusCode::OK, &status::success_status(r, &n, uid))
                }
            })
        }
        (&Method::DELETE, None) => {
            let opts = query.list_options(r)?;
            dry_run |= parse_delete_options(&body)?.1;
            let (items, rv) = if dry_run {
                let store = shared.store();
                let rv = store.resource_version();
                let mut copy = store.dry_run_copy();
                drop(store);
                (copy.delete_collection(r, ns.as_deref(), &opts)?, rv)
            } else {
                let mut store = shared.store();
                let items = store.delete_collection(r, ns.as_deref(), &opts)?;
                let rv = store.resource_version();
                shared.notify(rv);
                (items, rv)
            };
            Ok(list_response(
                r,
                super::store::ListResult {
                    resource_version: rv,
                    items,
                    continue_token: None,
                },
            ))
        }
        (m, n) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on {} {}",
            if n.is_some() {
                "a single"
            } else {
                "the collection of"
            },
            r.qualified()
        ))),
    }
}

/// RBAC for requests impersonating a service account, when a test enabled it.
fn authorize(
    shared: &Shared,
    req: &Request<Incoming>,
    method: &Method,
    target: &Target,
    query: &Query,
) -> Result<(), ApiError> {
    let Some(policy) = super::lock(&shared.rbac).clone() else {
        return Ok(());
    };
    let Some(user) = req
        .headers()
        .get("Impersonate-User")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    // A list or watch limited to one name by a field selector counts as that name.
    let selected = query.get("fieldSelector").and_then(|f| {
        f.split(',')
            .find_map(|t| t.strip_prefix("metadata.name="))
            .map(str::to_owned)
    });
    let watch = target.legacy_watch || query.flag("watch");
    let resource = match target.sub {
        Subresource::Main => target.r.plural.to_owned(),
        Subresource::Status => format!("{}/status", target.r.plural),
    };
    let attrs = super::rbac::Attributes {
        user: user.to_owned(),
        verb: super::rbac::verb(method.as_str(), target.name.is_some(), watch).to_owned(),
        api_group: target.r.group.to_owned(),
        resource,
        namespace: target.ns.clone(),
        name: target.name.clone().or(selected),
    };
    policy
        .check(&attrs)
        .map_err(|message| ApiError::new(403, "Forbidden", message))
}

fn parse_json_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let base = content_type.split(';').next().unwrap_or("").trim();
    if base == "application/vnd.kubernetes.protobuf" {
        return super::protobuf::decode_body(body);
    }
    if !(base.is_empty() || base == "application/json" || base == "*/*") {
        return Err(ApiError::unsupported_media_type(format!(
            "the ferrolb test API server accepts only application/json bodies (got \"{base}\")"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// `dryRun` of a request's options: absent or empty is a real write, `All` a dry run; anything
/// else is refused as the real server refuses it (`422 Invalid` naming the options kind).
fn parse_dry_run<'a>(
    options_kind: &str,
    values: impl Iterator<Item = &'a String>,
) -> Result<bool, ApiError> {
    let values: Vec<&String> = values.filter(|v| !v.is_empty()).collect();
    if values.iter().all(|v| *v == "All") {
        return Ok(!values.is_empty());
    }
    let listed = values
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(ApiError::new(
        422,
        "Invalid",
        format!(
            "{options_kind}.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{{{listed}}}: supported values: \"All\""
        ),
    ))
}

/// The object a dry-run write answers with: the version of the stored object it would replace
/// (none for one it would create), since nothing was written.
fn dry_run_version(
    mut obj: super::store::Obj,
    before: Option<super::store::Obj>,
) -> super::store::Obj {
    let rv = before.and_then(|b| b.pointer("/metadata/resourceVersion").cloned());
    if let Some(m) = Arc::make_mut(&mut obj)
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
    {
        match rv {
            Some(rv) => {
                m.insert("resourceVersion".into(), rv);
            }
            None => {
                m.remove("resourceVersion");
            }
        }
    }
    obj
}

fn parse_delete_options(body: &[u8]) -> Result<(Preconditions, bool), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((Preconditions::default(), false));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the DeleteOptions are not valid JSON: {e}")))?;
    let dry_run: Vec<String> = v
        .get("dryRun")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let dry_run = parse_dry_run("DeleteOptions", dry_run.iter())?;
    let p = v.get("preconditions");
    let s = |k: &str| {
        p.and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .map(String::from)
    };
    Ok((
        Preconditions {
            uid: s("uid"),
            resource_version: s("resourceVersion"),
        },
        dry_run,
    ))
}

fn object_response(code: StatusCode, r: &ResourceInfo, obj: &Value) -> Response<Body> {
    if r.is_converted() {
        json_response(code, &convert::to_view(r, obj))
    } else {
        json_response(code, obj)
    }
}

fn list_response(r: &ResourceInfo, list: super::store::ListResult) -> Response<Body> {
    let mut out = Vec::with_capacity(256 + list.items.len() * 512);
    let mut metadata = json!({"resourceVersion": list.resource_version.to_string()});
    if let Some(c) = &list.continue_token {
        metadata["continue"] = json!(c);
    }
    out.extend_from_slice(
        format!(
            "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
            r.list_kind(),
            r.api_version(),
            metadata
        )
        .as_bytes(),
    );
    for (i, item) in list.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if r.is_converted() {
            serde_json::to_writer(&mut out, &ListItem(&convert::to_view(r, item)))
                .expect("JSON serializes");
        } else {
            serde_json::to_writer(&mut out, &ListItem(item)).expect("JSON serializes");
        }
    }
    out.extend_from_slice(b"]}");
    full(StatusCode::OK, "application/json", out)
}

/// Decrements the open-watch count when a watch stream ends or is dropped.
struct WatchGuard(Arc<Shared>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

struct WatchState {
    shared: Arc<Shared>,
    r: &'static ResourceInfo,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    /// Every change up to this version has been looked at.
    pos: u64,
    queue: VecDeque<Bytes>,
    deadline: Instant,
    bookmarks: Option<Duration>,
    next_bookmark: Instant,
    changed: tokio::sync::watch::Receiver<u64>,
    close: tokio::sync::watch::Receiver<u64>,
    done: bool,
    _guard: WatchGuard,
}

fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 40);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

impl WatchState {
    fn selects(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn encode_object(&self, obj: &Value) -> Vec<u8> {
        if self.r.is_converted() {
            serde_json::to_vec(&convert::to_view(self.r, obj)).expect("JSON serializes")
        } else {
            serde_json::to_vec(obj).expect("JSON serializes")
        }
    }

    fn encode(&self, c: &Change) -> Option<Bytes> {
        if self.ns.as_deref().is_some_and(|ns| ns != c.namespace) {
            return None;
        }
        let kind = if self.labels.is_empty() && self.fields.is_empty() {
            c.kind
        } else {
            let now = self.selects(&c.object);
            let before = c.old.as_ref().is_some_and(|o| self.selects(o));
            match (c.kind, before, now) {
                (EventType::Added, _, true) => EventType::Added,
                (EventType::Modified, true, true) => EventType::Modified,
                (EventType::Modified, false, true) => EventType::Added,
                (EventType::Modified, true, false) => EventType::Deleted,
                (EventType::Deleted, b, n) if b || n => EventType::Deleted,
                _ => return None,
            }
        };
        if self.r.is_converted() {
            Some(event_line(kind.as_str(), &self.encode_object(&c.object)))
        } else {
            Some(event_line(kind.as_str(), &c.json))
        }
    }

    fn bookmark(&self, initial_events_end: bool) -> Bytes {
        let mut obj = json!({
            "kind": self.r.kind,
            "apiVersion": self.r.api_version(),
            "metadata": {"resourceVersion": self.pos.to_string()},
        });
        if initial_events_end {
            obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &serde_json::to_vec(&obj).expect("JSON serializes"),
        )
    }

    async fn next(mut self) -> Option<(Bytes, Self)> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Some((b, self));
            }
            if self.done {
                return None;
            }
            self.changed.borrow_and_update();
            let poll = self.shared.store().poll(self.r, self.pos, 1000);
            match poll {
                Poll::Expired { requested, oldest } => {
                    let e = ApiError::expired(format!(
                        "too old resource version: {requested} ({oldest})"
                    ));
                    let status = serde_json::to_vec(&e.to_status()).expect("JSON serializes");
                    self.queue.push_back(event_line("ERROR", &status));
                    self.done = true;
                    continue;
                }
                Poll::Changes(changes, next) => {
                    for c in &changes {
                        if let Some(line) = self.encode(c) {
                            self.queue.push_back(line);
                        }
                    }
                    self.pos = next;
                    if !changes.is_empty() {
                        continue;
                    }
                }
            }
            let bookmark_at = self.next_bookmark;
            tokio::select! {
                _ = self.changed.changed() => {}
                _ = self.close.changed() => self.done = true,
                _ = tokio::time::sleep_until(self.deadline) => self.done = true,
                _ = tokio::time::sleep_until(bookmark_at), if self.bookmarks.is_some() => {
                    let b = self.bookmark(false);
                    self.queue.push_back(b);
                    self.next_bookmark = Instant::now() + self.bookmarks.unwrap_or_default();
                }
            }
        }
    }
}

fn watch_response(
    shared: &Arc<Shared>,
    r: &'static ResourceInfo,
    ns: Option<String>,
    query: &Query,
    name: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let mut opts = query.list_options(r)?;
    if let Some(n) = name {
        let fs = match query.get("fieldSelector").filter(|s| !s.is_empty()) {
            Some(s) => format!("{s},metadata.name={n}"),
            None => format!("metadata.name={n}"),
        };
        opts.fields = FieldSelector::parse(&fs, r)?;
    }
    let timeout = match query.get("timeoutSeconds") {
        Some(t) if !t.is_empty() => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t}")))?,
        ),
        _ => Duration::from_secs(1800),
    };
    let bookmarks = query
        .flag("allowWatchBookmarks")
        .then_some(shared.opts.bookmark_interval);
    let send_initial = query.get("sendInitialEvents").map(|v| v == "true");
    let rv = query.get("resourceVersion").unwrap_or("");
    let (initial, pos) = match (rv, send_initial) {
        (_, Some(true)) => (true, 0),
        ("" | "0", None) => (true, 0),
        ("", Some(false)) => (false, 0),
        (v, _) => (
            false,
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion: {v}")))?,
        ),
    };
    let changed = shared.changed.subscribe();
    let close = shared.close_watches.subscribe();
    // The starting point is fixed before the watch counts as open, so a client (or a test) that
    // sees `open_watches` rise knows every later change reaches this watch as an event.
    let snapshot = (initial || pos == 0).then(|| shared.store().snapshot(r, ns.as_deref()));
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    let mut state = WatchState {
        shared: shared.clone(),
        r,
        ns: ns.clone(),
        labels: opts.labels.clone(),
        fields: opts.fields.clone(),
        pos,
        queue: VecDeque::new(),
        deadline: Instant::now() + timeout,
        bookmarks,
        next_bookmark: Instant::now() + bookmarks.unwrap_or_default(),
        changed,
        close,
        done: false,
        _guard: WatchGuard(shared.clone()),
    };
    if let Some((objects, now)) = snapshot {
        state.pos = now;
        if initial {
            let lines: Vec<Bytes> = objects
                .iter()
                .filter(|o| state.selects(o))
                .map(|o| event_line("ADDED", &state.encode_object(o)))
                .collect();
            state.queue.extend(lines);
            if send_initial == Some(true) {
                let b = state.bookmark(true);
                state.queue.push_back(b);
            }
        }
    }
    let stream = futures::stream::unfold(state, WatchState::next)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

async fn admin(shared: &Arc<Shared>, method: &Method, action: &str, q: &Query) -> Response<Body> {
    let bad = |msg: String| error_response(&ApiError::bad_request(msg));
    let num = |k: &str, default: u64| -> Result<u64, String> {
        match q.get(k) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{k} must be a number, got {v:?}")),
        }
    };
    if method == Method::GET && action == "state" {
        let (rv, objects) = {
            let s = shared.store();
            (s.resource_version(), s.object_count())
        };
        let fail = *super::lock(&shared.faults.fail);
        return json_response(
            StatusCode::OK,
            &json!({
                "resourceVersion": rv,
                "objects": objects,
                "openWatches": shared.open_watches.load(Ordering::SeqCst),
                "failNext": fail.map(|(code, n)| json!({"code": code, "count": n})),
                "delayMs": shared.faults.delay_ms.load(Ordering::Relaxed),
                "answerDelayMs": shared.faults.answer_delay_ms.load(Ordering::Relaxed),
                "injectedFailures": shared.faults.injected.load(Ordering::SeqCst),
            }),
        );
    }
    if method == Method::GET && action == "rbac" {
        return match super::lock(&shared.rbac).clone() {
            Some(policy) => json_response(StatusCode::OK, &policy.report()),
            None => error_response(&ApiError::bad_request(
                "RBAC is not enforced (start the server with --enforce-rbac FILE)",
            )),
        };
    }
    if method != Method::POST {
        return error_response(&ApiError::method_not_allowed(format!(
            "admin endpoints take POST (GET only for /admin/state and /admin/rbac), got {method} /admin/{action}"
        )));
    }
    let ok = |what: String| json_response(StatusCode::OK, &json!({"ok": true, "did": what}));
    match action {
        "close-watches" => {
            shared.close_watches.send_modify(|n| *n += 1);
            ok("closed every open watch".into())
        }
        "fail" => {
            let (code, count) = match (num("code", 500), num("count", 1)) {
                (Ok(c), Ok(n)) => (c, n),
                (Err(e), _) | (_, Err(e)) => return bad(e),
            };
            if !(400..=599).contains(&code) {
                return bad(format!("code must be a 4xx or 5xx status, got {code}"));
            }
            *super::lock(&shared.faults.fail) = (count > 0).then_some((code as u16, count as u32));
            ok(format!("the next {count} API requests get {code}"))
        }
        "fail-every" => {
            let (code, n) = match (num("code", 500), num("n", 10)) {
                (Ok(c), Ok(n)) => (c, n),
                (Err(e), _) | (_, Err(e)) => return bad(e),
            };
            if !(400..=599).contains(&code) {
                return bad(format!("code must be a 4xx or 5xx status, got {code}"));
            }
            *super::lock(&shared.faults.every) = (n > 0).then_some((code as u16, n));
            ok(format!("every {n}th API request gets {code}"))
        }
        "delay" => match num("ms", 0) {
            Ok(ms) => {
                shared.faults.delay_ms.store(ms, Ordering::Relaxed);
                ok(format!("API answers are delayed by {ms} ms"))
            }
            Err(e) => bad(e),
        },
        "answer-delay" => match num("ms", 0) {
            Ok(ms) => {
                shared.faults.answer_delay_ms.store(ms, Ordering::Relaxed);
                ok(format!(
                    "writes are applied at once and answered {ms} ms later"
                ))
            }
            Err(e) => bad(e),
        },
        "compact" => {
            shared.store().compact();
            ok("forgot the watch history".into())
        }
        "restart" => {
            let contents = match q.get("contents").unwrap_or("keep") {
                "keep" => Contents::Keep,
                "drop" => Contents::Drop,
                other => return bad(format!("contents must be keep or drop, got {other:?}")),
            };
            let down = match num("downMs", 0) {
                Ok(ms) => Duration::from_millis(ms),
                Err(e) => return bad(e),
            };
            let shared = shared.clone();
            // Answer first: the restart drops this very connection.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Err(e) = shared.restart(contents, down).await {
                    tracing::error!(error = %e, "test API server restart failed");
                }
            });
            ok(format!(
                "restarting in 50 ms, down for {} ms, contents {contents:?}",
                down.as_millis()
            ))
        }
        other => error_response(&ApiError::path_not_found(&format!("/admin/{other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        match route(path, "x").unwrap() {
            Route::Resource(t) => t,
            _ => panic!("{path} is a resource path"),
        }
    }

    #[test]
    fn dry_run_values_are_all_or_refused() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(!parse_dry_run("CreateOptions", v(&[]).iter()).unwrap());
        assert!(!parse_dry_run("CreateOptions", v(&[""]).iter()).unwrap());
        assert!(parse_dry_run("CreateOptions", v(&["All"]).iter()).unwrap());
        let e = parse_dry_run("DeleteOptions", v(&["Some"]).iter()).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.to_status()["message"],
            "DeleteOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{\"Some\"}: supported values: \"All\""
        );
        let (_, dry) = parse_delete_options(br#"{"dryRun":["All"]}"#).unwrap();
        assert!(dry);
        assert!(parse_delete_options(br#"{"dryRun":["x"]}"#).is_err());
    }

    #[test]
    fn routes_namespaced_cluster_scoped_and_status_paths() {
        let t = target("/api/v1/namespaces/default/services/web/status");
        assert_eq!(
            (t.r.plural, t.ns.as_deref(), t.name.as_deref(), t.sub),
            (
                "services",
                Some("default"),
                Some("web"),
                Subresource::Status
            )
        );
        let t = target("/api/v1/namespaces/default");
        assert_eq!(
            (t.r.plural, t.ns, t.name.as_deref()),
            ("namespaces", None, Some("default"))
        );
        let t = target("/api/v1/namespaces/x/status");
        assert_eq!(
            (t.r.plural, t.name.as_deref(), t.sub),
            ("namespaces", Some("x"), Subresource::Status)
        );
        let t = target("/apis/coordination.k8s.io/v1/watch/namespaces/a/leases");
        assert!(t.legacy_watch);
        let t = target("/api/v1/services");
        assert_eq!((t.r.plural, t.ns, t.name), ("services", None, None));
        assert_eq!(route("/api/v1/configmaps/x", "x").err().unwrap().code, 404);
        assert_eq!(
            route("/apis/apps/v1/deployments", "x").err().unwrap().code,
            404
        );
        assert_eq!(
            route("/api/v1/namespaces/a/configmaps/x/status", "x")
                .err()
                .unwrap()
                .code,
            404
        );
    }
}
