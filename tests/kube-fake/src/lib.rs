//! An in-memory Kubernetes API server for controller tests, behind `kube::Client`.
//!
//! A scripted mock (`tower_test::mock`) proves only what was scripted. This fake keeps real state
//! and answers the way a kube-apiserver (v1.32) does in the places where controllers have been
//! caught out (see `shared/notes/kubernetes.md`):
//!
//! - every write to a Nexus kind is validated against the generated CRD schema and its CEL rules
//!   (`nexus_crds::validate`), so a patch that sets `bundle: {}` is a **422**, not a success;
//! - **status is dropped on create** and ignored on main-resource writes when the status
//!   subresource is on; spec is ignored on `/status` writes; `metadata.generation` moves only
//!   with spec;
//! - **your own writes come back as watch events** (and a no-op write does not), so a controller
//!   that writes status on every reconcile hot-loops here as it would on a cluster;
//! - optimistic concurrency (**409** on a stale `resourceVersion`), server-side apply with field
//!   managers (409 conflicts unless forced, fields a manager stops applying are removed; tracked
//!   per top-level field and per field of `spec`), and
//!   writes without a field manager recorded as `unknown`;
//! - deletion with **finalizers** (deletionTimestamp and a new generation; gone when the last
//!   finalizer is removed) and **garbage collection** of dependents through `ownerReferences`;
//! - evictions refused with **429** by PodDisruptionBudgets, evicted pods terminating for a
//!   while before they disappear;
//! - a client built by [`FakeApiServer::client`] retries 429/503/504 exactly as kube's default
//!   client does, so a reconcile blocked by kube's retries is blocked here too.
//!
//! Time is tokio's, so tests can run with `start_paused`.

mod resources;
mod selector;
mod store;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;

pub use resources::{ResourceType, TYPES, by_kind, parse_path};
pub use store::{ApiError, LoggedEvent, ObjKey, Write};
use store::{State, WriteKind};

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// A response injected for matching requests.
#[derive(Clone, Debug)]
pub struct Fault {
    /// HTTP method to match.
    pub method: String,
    /// Substring of the path to match.
    pub path_contains: String,
    /// Status code to answer.
    pub code: u16,
    /// How many more times (u32::MAX: forever).
    pub times: u32,
}

struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

/// The fake API server. Cheap to clone; every clone and every client share one state.
#[derive(Clone)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").finish_non_exhaustive()
    }
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

fn full(code: u16, body: &Value) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

fn error(e: &ApiError) -> Response<ResponseBody> {
    full(e.code, &e.body())
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FakeApiServer {
    /// An empty cluster that validates Nexus kinds against their CRDs.
    pub fn new() -> Self {
        let validator = nexus_crds::validate::Validator::new().ok().map(Arc::new);
        let (changed, _) = watch::channel(1);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new(validator)),
                changed,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock poisons it; the state is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify(&self) {
        let rv = self.state().resource_version();
        self.shared.changed.send_replace(rv);
    }

    /// A client like kube's default one: 429, 503 and 504 are retried with kube's own retry
    /// policy (exponential back-off from 5 ms, 15 attempts).
    pub fn client(&self) -> kube::Client {
        let svc = tower::ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(
                kube::client::retry::RetryPolicy::server_retry(),
            ))
            .service(FakeService {
                server: self.clone(),
            });
        kube::Client::new(svc, "default")
    }

    /// A client without retries (what `Config { default_retry: false, .. }` builds).
    pub fn client_without_retry(&self) -> kube::Client {
        kube::Client::new(
            FakeService {
                server: self.clone(),
            },
            "default",
        )
    }

    /// Creates or replaces an object as an administrator (`kubectl apply`) would, status
    /// included. Panics on an invalid object: fixtures must be valid.
    pub fn apply<K: serde::Serialize + kube::Resource<DynamicType = ()>>(&self, obj: &K) -> Value {
        let value = serde_json::to_value(obj).unwrap_or(Value::Null);
        self.apply_value(value)
    }

    /// [`apply`](Self::apply) for a JSON object.
    pub fn apply_value(&self, value: Value) -> Value {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let rt = by_kind(&kind).unwrap_or_else(|| panic!("the fake does not serve {kind}"));
        let out = self
            .state()
            .put_admin(&rt, value)
            .unwrap_or_else(|e| panic!("fixture refused: {}", e.message));
        self.notify();
        out
    }

    /// An object, if it exists.
    pub fn get<K: serde::de::DeserializeOwned + kube::Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let rt = by_kind(&K::kind(&()))?;
        let key = State::key(&rt, namespace, name);
        let mut st = self.state();
        st.sweep();
        st.objects
            .get(&key)
            .and_then(|s| serde_json::from_value(s.value.clone()).ok())
    }

    /// Every object of a kind.
    pub fn list<K: serde::de::DeserializeOwned + kube::Resource<DynamicType = ()>>(
        &self,
    ) -> Vec<K> {
        let Some(rt) = by_kind(&K::kind(&())) else {
            return Vec::new();
        };
        let mut st = self.state();
        st.sweep();
        st.list(&rt, None)
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    /// Deletes an object as an administrator would (finalizers and GC apply).
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<(), ApiError> {
        let rt = by_kind(kind).ok_or_else(|| ApiError::new(404, "NotFound", kind.to_owned()))?;
        let key = State::key(&rt, namespace, name);
        let r = self.state().delete_key(&key, false).map(|_| ());
        self.notify();
        r
    }

    /// How long evicted pods stay terminating (default 5 s of tokio time; zero removes them at
    /// once).
    pub fn set_pod_termination(&self, d: Duration) {
        self.state().pod_termination = d;
    }

    /// Answers the next `times` requests matching `method` and a path containing `path` with
    /// `code` (a `Status` body), without touching state.
    pub fn inject(&self, method: &str, path: &str, code: u16, times: u32) {
        self.state().faults.push(Fault {
            method: method.to_owned(),
            path_contains: path.to_owned(),
            code,
            times,
        });
    }

    /// Every write so far (method, path, field manager, response code, body).
    pub fn writes(&self) -> Vec<Write> {
        self.state().writes.clone()
    }

    /// Every request so far: (method, path?query, code).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.state().requests.clone()
    }

    /// Forgets recorded requests and writes.
    pub fn clear_log(&self) {
        let mut st = self.state();
        st.requests.clear();
        st.writes.clear();
    }

    /// Watch events so far.
    pub fn events(&self) -> Vec<LoggedEvent> {
        self.state().log.clone()
    }

    /// Field manager owning each section of an object.
    pub fn owners(&self, kind: &str, namespace: Option<&str>, name: &str) -> Vec<(String, String)> {
        let Some(rt) = by_kind(kind) else {
            return Vec::new();
        };
        let key = State::key(&rt, namespace, name);
        self.state()
            .owners
            .get(&key)
            .map(|m| m.iter().map(|(a, b)| (a.clone(), b.clone())).collect())
            .unwrap_or_default()
    }

    /// Removes terminated pods now, whatever their termination delay.
    pub fn finish_terminating_pods(&self) {
        let mut st = self.state();
        let due: Vec<ObjKey> = st
            .objects
            .iter()
            .filter(|(_, s)| s.remove_at.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some(s) = st.objects.get_mut(&k) {
                s.remove_at = Some(tokio::time::Instant::now());
            }
        }
        st.sweep();
        drop(st);
        self.notify();
    }

    /// Every stored object's key.
    pub fn keys(&self) -> Vec<ObjKey> {
        self.state().keys().into_iter().collect()
    }

    async fn handle(self, req: Request<Body>) -> Response<ResponseBody> {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = match req.into_body().collect_bytes().await {
            Ok(b) => b,
            Err(e) => return error(&ApiError::new(400, "BadRequest", e.to_string())),
        };
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return error(&ApiError::new(
                        400,
                        "BadRequest",
                        format!("invalid JSON: {e}"),
                    ));
                }
            }
        };
        let response = self
            .route(&method, &path, &query, &content_type, &body)
            .await;
        let code = response.status().as_u16();
        {
            let mut st = self.state();
            let target = if query.is_empty() {
                path.clone()
            } else {
                format!("{path}?{query}")
            };
            st.requests.push((method.clone(), target, code));
            if method != "GET" {
                let manager =
                    query_param(&query, "fieldManager").unwrap_or_else(|| "unknown".into());
                st.writes.push(Write {
                    method: method.clone(),
                    path: path.clone(),
                    manager,
                    code,
                    body: body.clone(),
                });
            }
        }
        if method != "GET" {
            self.notify();
        }
        response
    }

    fn injected(&self, method: &str, path: &str) -> Option<u16> {
        let mut st = self.state();
        let f = st
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && f.method == method && path.contains(&f.path_contains))?;
        if f.times != u32::MAX {
            f.times -= 1;
        }
        Some(f.code)
    }

    async fn route(
        &self,
        method: &str,
        path: &str,
        query: &str,
        content_type: &str,
        body: &Value,
    ) -> Response<ResponseBody> {
        if let Some(code) = self.injected(method, path) {
            let reason = match code {
                409 => "Conflict",
                422 => "Invalid",
                429 => "TooManyRequests",
                500 => "InternalError",
                503 => "ServiceUnavailable",
                _ => "Unknown",
            };
            return error(&ApiError::new(code, reason, format!("injected {code}")));
        }
        let Some(target) = parse_path(path) else {
            return error(&ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ));
        };
        let rt = target.rt;
        let manager = query_param(query, "fieldManager").unwrap_or_else(|| "unknown".into());
        let dry_run = query_param(query, "dryRun").is_some();
        let mut st = self.state();
        st.sweep();
        match (method, target.name.as_deref(), target.sub.as_deref()) {
            ("GET", None, None) => {
                let labels = match query_param(query, "labelSelector")
                    .map(|s| selector::LabelSelector::parse(&s))
                {
                    Some(Err(e)) => return error(&ApiError::new(400, "BadRequest", e)),
                    Some(Ok(s)) => Some(s),
                    None => None,
                };
                let fields = match query_param(query, "fieldSelector")
                    .map(|s| selector::FieldSelector::parse(&s, rt.kind))
                {
                    Some(Err(e)) => return error(&ApiError::new(400, "BadRequest", e)),
                    Some(Ok(s)) => Some(s),
                    None => None,
                };
                let matches = move |o: &Value| {
                    labels.as_ref().is_none_or(|l| l.matches(o))
                        && fields.as_ref().is_none_or(|f| f.matches(o))
                };
                let watching = matches!(query_param(query, "watch").as_deref(), Some("true" | "1"));
                if watching {
                    let from = query_param(query, "resourceVersion")
                        .and_then(|v| v.parse::<u64>().ok())
                        .filter(|v| *v > 0);
                    let timeout = query_param(query, "timeoutSeconds")
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(290);
                    let initial = match from {
                        Some(_) => Vec::new(),
                        None => st
                            .list(&rt, target.namespace.as_deref())
                            .into_iter()
                            .filter(|o| matches(o))
                            .collect(),
                    };
                    let cursor = from.unwrap_or(st.resource_version());
                    drop(st);
                    return self.watch(
                        rt,
                        target.namespace,
                        Box::new(matches),
                        initial,
                        cursor,
                        Duration::from_secs(timeout),
                    );
                }
                let items: Vec<Value> = st
                    .list(&rt, target.namespace.as_deref())
                    .into_iter()
                    .filter(|o| matches(o))
                    .collect();
                full(
                    200,
                    &json!({
                        "apiVersion": rt.api_version(),
                        "kind": format!("{}List", rt.kind),
                        "metadata": {"resourceVersion": st.resource_version().to_string()},
                        "items": items,
                    }),
                )
            }
            ("GET", Some(name), sub) if sub.is_none() || sub == Some("status") => {
                let key = State::key(&rt, target.namespace.as_deref(), name);
                match st.objects.get(&key) {
                    Some(s) => full(200, &s.value),
                    None => error(&ApiError::new(
                        404,
                        "NotFound",
                        format!("{}.{} \"{name}\" not found", rt.plural, rt.group),
                    )),
                }
            }
            ("POST", None, None) => {
                let name = body
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let name = match name {
                    Some(n) => n,
                    None => match body
                        .pointer("/metadata/generateName")
                        .and_then(Value::as_str)
                    {
                        Some(prefix) => format!("{prefix}{:05x}", st.resource_version() % 0xfffff),
                        None => {
                            return error(&ApiError::new(
                                422,
                                "Invalid",
                                "metadata.name: Required value",
                            ));
                        }
                    },
                };
                let ns = target.namespace.clone().or_else(|| {
                    body.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
                let key = State::key(&rt, ns.as_deref(), &name);
                let mut b = body.clone();
                if let Some(m) = b.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("name".into(), Value::String(name.clone()));
                }
                if dry_run {
                    return full(201, &b);
                }
                match st.write(&rt, &key, WriteKind::Create, &b, false, &manager) {
                    Ok((v, _)) => full(201, &v),
                    Err(e) => error(&e),
                }
            }
            ("POST", Some(name), Some("eviction")) if rt.kind == "Pod" => {
                let ns = target.namespace.clone().unwrap_or_else(|| "default".into());
                match st.evict(&ns, name) {
                    Ok(()) => full(
                        201,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}),
                    ),
                    Err(e) => error(&e),
                }
            }
            ("PUT" | "PATCH", Some(name), sub) if sub.is_none() || sub == Some("status") => {
                let status_only = sub == Some("status");
                if status_only && !rt.status_subresource {
                    return error(&ApiError::new(404, "NotFound", "no status subresource"));
                }
                let kind = if method == "PUT" {
                    WriteKind::Replace
                } else if content_type.starts_with("application/apply-patch") {
                    WriteKind::Apply {
                        force: query_param(query, "force").as_deref() == Some("true"),
                    }
                } else if content_type.starts_with("application/merge-patch+json")
                    || content_type.starts_with("application/strategic-merge-patch+json")
                {
                    WriteKind::Merge
                } else {
                    return error(&ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the fake does not support patch type {content_type:?}"),
                    ));
                };
                if matches!(kind, WriteKind::Apply { .. })
                    && query_param(query, "fieldManager").is_none()
                {
                    return error(&ApiError::new(
                        422,
                        "Invalid",
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                    ));
                }
                let key = State::key(&rt, target.namespace.as_deref(), name);
                if dry_run {
                    return full(200, body);
                }
                match st.write(&rt, &key, kind, body, status_only, &manager) {
                    Ok((v, _)) => full(200, &v),
                    Err(e) => error(&e),
                }
            }
            ("DELETE", Some(name), None) => {
                let key = State::key(&rt, target.namespace.as_deref(), name);
                let force = query_param(query, "gracePeriodSeconds").as_deref() == Some("0")
                    || body.get("gracePeriodSeconds").and_then(Value::as_i64) == Some(0);
                match st.delete_key(&key, force) {
                    Ok(v) => full(200, &v),
                    Err(e) => error(&e),
                }
            }
            _ => error(&ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{method} {path} is not supported by the fake"),
            )),
        }
    }

    fn watch(
        &self,
        rt: ResourceType,
        namespace: Option<String>,
        matches: Box<dyn Fn(&Value) -> bool + Send + Sync>,
        initial: Vec<Value>,
        cursor: u64,
        timeout: Duration,
    ) -> Response<ResponseBody> {
        let watcher = Watcher {
            server: self.clone(),
            rx: self.shared.changed.subscribe(),
            ty: rt.key(),
            namespace,
            matches: Arc::from(matches),
            deadline: tokio::time::Instant::now() + timeout,
            cursor,
            pending: initial
                .into_iter()
                .map(|o| line(&json!({"type": "ADDED", "object": o})))
                .collect(),
        };
        let stream = futures::stream::unfold(watcher, |mut w| async move {
            let chunk = w.next().await?;
            Some((Ok::<_, Infallible>(http_body::Frame::data(chunk)), w))
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
    }
}

/// One open watch: replays the log after its cursor, then waits for changes until its timeout.
struct Watcher {
    server: FakeApiServer,
    rx: watch::Receiver<u64>,
    ty: String,
    namespace: Option<String>,
    matches: Arc<dyn Fn(&Value) -> bool + Send + Sync>,
    deadline: tokio::time::Instant,
    cursor: u64,
    pending: std::collections::VecDeque<Bytes>,
}

impl Watcher {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            {
                let mut st = self.server.state();
                st.sweep();
                // The log is ordered by resource version: start where this watch left off.
                let from = self.cursor;
                let start = st.log.partition_point(|e| e.rv <= from);
                for e in &st.log[start..] {
                    self.cursor = self.cursor.max(e.rv);
                    if e.key.ty != self.ty
                        || self
                            .namespace
                            .as_deref()
                            .is_some_and(|ns| e.key.namespace != ns)
                    {
                        continue;
                    }
                    if e.kind != "DELETED" && !(self.matches)(&e.object) {
                        continue;
                    }
                    self.pending
                        .push_back(line(&json!({"type": e.kind, "object": e.object})));
                }
            }
            if !self.pending.is_empty() {
                continue;
            }
            tokio::select! {
                r = self.rx.changed() => { if r.is_err() { return None; } }
                () = tokio::time::sleep_until(self.deadline) => return None,
                // Terminating pods disappear on their own: look again now and then.
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// The tower service behind the clients.
#[derive(Clone)]
struct FakeService {
    server: FakeApiServer,
}

impl tower::Service<Request<Body>> for FakeService {
    type Response = Response<ResponseBody>;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move { Ok(server.handle(req).await) })
    }
}
