//! The kube adapter of the ModelIdentity controller: gathers inputs for [`decide`], carries the
//! decision out (finalizer, CA calls, Secret, status, Events) and maps errors to back-off.
//!
//! Writes are idempotent: status goes through server-side apply with one field manager, the
//! Secret is replaced whole, and 404s on cleanup count as success.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use nexus_crds::identity::condition;
use nexus_crds::{ModelIdentity, ModelIdentityStatus};
use nexus_mic::ModelUri;
use serde_json::json;
use tracing::{info, instrument, warn};

use sha2::Digest as _;

use super::decide::{self, Decision, IssueReason, Observed};
use super::{FINALIZER, IssuedCertificate, SERIAL_ANNOTATION, SPEC_HASH_ANNOTATION};
use crate::Error;
use crate::metrics::Metrics;

/// Field manager of everything this controller writes.
pub const MANAGER: &str = "nexus-controller";

/// What the controller asks of the CA.
#[derive(Clone, Debug)]
pub struct IssueRequest {
    /// Tenant the certificate is for.
    pub tenant: String,
    /// Model URI.
    pub model: ModelUri,
    /// PKCS#10 CSR, DER; the private key stays with the controller and the Secret.
    pub csr_der: Vec<u8>,
    /// Attestation, DER (nexus-mic encoding).
    pub attestation_der: Vec<u8>,
    /// Requested lifetime.
    pub validity: Duration,
    /// Idempotency key: the same request retried is answered once.
    pub request_id: String,
}

/// RFC 5280 reasons the controller revokes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeReason {
    /// Replaced by a newer certificate (spec change, lost Secret).
    Superseded,
    /// The ModelIdentity was deleted.
    CessationOfOperation,
}

/// The CA, as the controller sees it. The production implementation is gRPC
/// ([`crate::ca_client`]); tests use an in-process CA.
#[async_trait]
pub trait Issuer: Send + Sync {
    /// Issues a certificate.
    async fn issue(&self, req: IssueRequest) -> Result<IssuedCertificate, Error>;
    /// Revokes a certificate; an unknown or already revoked serial is success.
    async fn revoke(&self, tenant: &str, serial: &str, reason: RevokeReason) -> Result<(), Error>;
}

/// Shared state of the controller.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// The CA.
    pub issuer: Arc<dyn Issuer>,
    /// Publishes Events. One recorder for the controller's life: it folds repeats of an event
    /// into one Event with a growing `series.count` instead of a new object each time.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clock, injectable for tests.
    pub now: fn() -> DateTime<Utc>,
    /// Leader flag kept by a coordination Lease (`None`: act unconditionally, e.g. in tests or a
    /// single replica). A replica that does not hold the Lease touches nothing.
    pub leader: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

pub use nexus_crds::common::set_condition;

fn time(t: DateTime<Utc>) -> Time {
    nexus_crds::common::time_from_chrono(t)
}

/// Reconciles one ModelIdentity.
#[instrument(skip_all, fields(namespace = mi.namespace().unwrap_or_default(), name = mi.name_any()))]
pub async fn reconcile(mi: Arc<ModelIdentity>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&mi, &ctx).await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.as_ref().err());
    result
}

async fn reconcile_inner(mi: &ModelIdentity, ctx: &Context) -> Result<Action, Error> {
    if let Some(leader) = &ctx.leader
        && !leader.load(std::sync::atomic::Ordering::Acquire)
    {
        // Another replica holds the Lease: look again later, change nothing.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let ns = mi.namespace().ok_or(Error::MissingField {
        kind: "ModelIdentity",
        field: "metadata.namespace",
    })?;
    let name = mi.name_any();
    let now = (ctx.now)();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = secrets.get_opt(&mi.spec.secret_name).await?;
    // A Secret that is not ours is never read as our certificate and never written; but it does
    // not stop the finalizer: deletion must always be able to finish.
    let owned = secret.as_ref().is_some_and(|s| owned_by(s, mi));
    let status = mi.status.clone().unwrap_or_default();
    let (duration, renew_before) = super::lifetimes(mi)?;
    let secret_cert = secret.as_ref().filter(|_| owned).and_then(|s| {
        super::read_secret(
            s.data.as_ref().unwrap_or(&BTreeMap::new()),
            s.metadata.annotations.as_ref().unwrap_or(&BTreeMap::new()),
        )
    });
    let observed = Observed {
        deleting: mi.metadata.deletion_timestamp.is_some(),
        has_finalizer: mi.finalizers().iter().any(|f| f == FINALIZER),
        spec_hash: super::spec_hash(mi),
        status_serial: status.serial.clone(),
        status_revoked: status.revoked,
        secret: secret_cert.clone(),
        duration,
        renew_before,
    };
    let decision = decide::decide(&observed, now);
    info!(?decision, "decided");
    let api: Api<ModelIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    match decision {
        Decision::Nothing => Ok(Action::await_change()),
        Decision::AddFinalizer => {
            let mut finalizers = mi.finalizers().to_vec();
            finalizers.push(FINALIZER.into());
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": mi.resource_version()}});
            api.patch(&name, &manager_params(), &Patch::Merge(&patch))
                .await?;
            Ok(Action::await_change())
        }
        Decision::Finalize { serial } => {
            let tenant = super::tenant(mi)?;
            if let Some(serial) = serial {
                ctx.issuer
                    .revoke(&tenant, &serial, RevokeReason::CessationOfOperation)
                    .await?;
                ctx.metrics.revoked.inc();
                publish(
                    ctx,
                    mi,
                    EventType::Normal,
                    "Revoked",
                    "Revoke",
                    format!("revoked certificate {serial}: ModelIdentity deleted"),
                )
                .await;
            }
            let finalizers: Vec<String> = mi
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": mi.resource_version()}});
            match api
                .patch(&name, &manager_params(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            Ok(Action::await_change())
        }
        Decision::UpToDate { requeue_after } => {
            let Some(cert) = secret_cert else {
                // decide() says UpToDate only with a certificate in hand.
                return Ok(Action::requeue(Duration::from_secs(1)));
            };
            let mut st = status.clone();
            st.observed_generation = mi.metadata.generation;
            st.serial = Some(cert.serial.clone());
            st.not_before = Some(time(cert.not_before));
            st.not_after = Some(time(cert.not_after));
            st.renewal_time = Some(time(decide::renewal_time(
                cert.not_before,
                cert.not_after,
                renew_before,
            )));
            st.revoked = false;
            st.failed_issuance_attempts = 0;
            set_condition(
                &mut st.conditions,
                condition::READY,
                true,
                "Issued",
                format!(
                    "certificate {} valid until {}",
                    cert.serial,
                    cert.not_after.to_rfc3339()
                ),
                mi.metadata.generation,
                now,
            );
            set_condition(
                &mut st.conditions,
                condition::ISSUING,
                false,
                "UpToDate",
                "",
                mi.metadata.generation,
                now,
            );
            set_condition(
                &mut st.conditions,
                condition::FAILED,
                false,
                "UpToDate",
                "",
                mi.metadata.generation,
                now,
            );
            if st != status {
                apply_status(&api, &name, &st).await?;
            }
            Ok(Action::requeue(requeue_after.max(Duration::from_secs(1))))
        }
        Decision::Issue { reason, supersedes } => {
            if secret.is_some() && !owned {
                let e = Error::SecretNotOwned {
                    namespace: ns.clone(),
                    name: mi.spec.secret_name.clone(),
                };
                fail(mi, ctx, e.reason(), &e.to_string(), now).await?;
                return Err(e);
            }
            match issue(mi, ctx, &secrets, reason, now).await {
                Ok((issued, action)) => {
                    if let Some(old) = supersedes.filter(|old| *old != issued.serial) {
                        let tenant = super::tenant(mi)?;
                        match ctx
                            .issuer
                            .revoke(&tenant, &old, RevokeReason::Superseded)
                            .await
                        {
                            Ok(()) => {
                                publish(
                                    ctx,
                                    mi,
                                    EventType::Normal,
                                    "Superseded",
                                    "Revoke",
                                    format!("revoked superseded certificate {old}"),
                                )
                                .await
                            }
                            Err(e) => {
                                warn!(error = %e, serial = old, "could not revoke superseded certificate")
                            }
                        }
                    }
                    Ok(action)
                }
                Err(e) => {
                    fail(mi, ctx, e.reason(), &e.to_string(), now).await?;
                    Err(e)
                }
            }
        }
    }
}

async fn issue(
    mi: &ModelIdentity,
    ctx: &Context,
    secrets: &Api<Secret>,
    reason: IssueReason,
    now: DateTime<Utc>,
) -> Result<(IssuedCertificate, Action), Error> {
    let name = mi.name_any();
    let ns = mi.namespace().ok_or(Error::MissingField {
        kind: "ModelIdentity",
        field: "metadata.namespace",
    })?;
    let api: Api<ModelIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    let mut st = mi.status.clone().unwrap_or_default();
    set_condition(
        &mut st.conditions,
        condition::ISSUING,
        true,
        reason.as_str(),
        "requesting a certificate from the CA",
        mi.metadata.generation,
        now,
    );
    apply_status(&api, &name, &st).await?;

    let uri = super::model_uri(mi)?;
    let attestation = super::attestation(mi)?;
    let attestation_der = attestation.to_der()?;
    let (duration, renew_before) = super::lifetimes(mi)?;
    let key = nexus_mic::generate_model_key(&uri)?;
    let uid = mi.uid().ok_or(Error::MissingField {
        kind: "ModelIdentity",
        field: "metadata.uid",
    })?;
    let request_id = request_id(&uid, mi.metadata.generation, reason, &key.csr_der);
    let issued = ctx
        .issuer
        .issue(IssueRequest {
            tenant: super::tenant(mi)?,
            model: uri,
            csr_der: key.csr_der.clone(),
            attestation_der,
            validity: duration,
            request_id,
        })
        .await?;
    ctx.metrics.issued.inc();

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(mi.spec.secret_name.clone()),
            namespace: Some(ns.clone()),
            owner_references: owner_reference(mi).map(|o| vec![o]),
            annotations: Some(BTreeMap::from([
                (SPEC_HASH_ANNOTATION.to_owned(), super::spec_hash(mi)),
                (SERIAL_ANNOTATION.to_owned(), issued.serial.clone()),
            ])),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                MANAGER.to_owned(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(super::secret_data(
            &issued,
            &key.private_key_pem,
            &attestation,
        )?),
        ..Default::default()
    };
    // Server-side apply with our field manager: creates or replaces the keys we own, and a
    // Secret someone else took over in between is a conflict rather than silently overwritten.
    let mut body = serde_json::to_value(&secret)?;
    if let Some(o) = body.as_object_mut() {
        o.insert("apiVersion".into(), json!("v1"));
        o.insert("kind".into(), json!("Secret"));
    }
    secrets
        .patch(
            &mi.spec.secret_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;

    let renew_at = decide::renewal_time(issued.not_before, issued.not_after, renew_before);
    st.observed_generation = mi.metadata.generation;
    st.serial = Some(issued.serial.clone());
    st.fingerprint = Some(issued.fingerprint.clone());
    st.not_before = Some(time(issued.not_before));
    st.not_after = Some(time(issued.not_after));
    st.renewal_time = Some(time(renew_at));
    st.revoked = false;
    st.failed_issuance_attempts = 0;
    let gen_ = mi.metadata.generation;
    set_condition(
        &mut st.conditions,
        condition::READY,
        true,
        "Issued",
        format!(
            "certificate {} valid until {}",
            issued.serial,
            issued.not_after.to_rfc3339()
        ),
        gen_,
        now,
    );
    set_condition(
        &mut st.conditions,
        condition::ISSUING,
        false,
        reason.as_str(),
        "",
        gen_,
        now,
    );
    set_condition(
        &mut st.conditions,
        condition::FAILED,
        false,
        "Issued",
        "",
        gen_,
        now,
    );
    apply_status(&api, &name, &st).await?;
    publish(
        ctx,
        mi,
        EventType::Normal,
        "Issued",
        "Issue",
        format!(
            "issued certificate {} ({}), valid until {}, renews at {}",
            issued.serial,
            reason.as_str(),
            issued.not_after.to_rfc3339(),
            renew_at.to_rfc3339()
        ),
    )
    .await;
    let wait = (renew_at - now)
        .to_std()
        .unwrap_or_default()
        .min(decide::MAX_REQUEUE);
    Ok((issued, Action::requeue(wait.max(Duration::from_secs(1)))))
}

/// Records a failure in status and as a Warning event. Ready stays True while the current
/// certificate is still valid: a failed renewal is a warning, not an outage.
async fn fail(
    mi: &ModelIdentity,
    ctx: &Context,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let Some(ns) = mi.namespace() else {
        return Ok(());
    };
    let api: Api<ModelIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    let mut st: ModelIdentityStatus = mi.status.clone().unwrap_or_default();
    st.failed_issuance_attempts = st.failed_issuance_attempts.saturating_add(1);
    let gen_ = mi.metadata.generation;
    let still_valid = st
        .not_after
        .as_ref()
        .is_some_and(|t| t.0.as_second() > now.timestamp())
        && !st.revoked;
    if !still_valid {
        set_condition(
            &mut st.conditions,
            condition::READY,
            false,
            reason,
            message,
            gen_,
            now,
        );
    }
    set_condition(
        &mut st.conditions,
        condition::ISSUING,
        false,
        reason,
        message,
        gen_,
        now,
    );
    set_condition(
        &mut st.conditions,
        condition::FAILED,
        true,
        reason,
        message,
        gen_,
        now,
    );
    apply_status(&api, &mi.name_any(), &st).await?;
    publish(
        ctx,
        mi,
        EventType::Warning,
        reason,
        "Issue",
        message.to_owned(),
    )
    .await;
    Ok(())
}

async fn apply_status(
    api: &Api<ModelIdentity>,
    name: &str,
    status: &ModelIdentityStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": "nexus.dev/v1alpha1",
        "kind": "ModelIdentity",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    mi: &ModelIdentity,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &mi.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}

/// Patch parameters for merge patches (finalizers): with our field manager, so the API server
/// does not record them under `unknown`.
fn manager_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

fn owner_reference(mi: &ModelIdentity) -> Option<OwnerReference> {
    mi.controller_owner_ref(&())
}

fn owned_by(secret: &Secret, mi: &ModelIdentity) -> bool {
    let uid = mi.uid();
    secret
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| Some(&o.uid) == uid.as_ref())
}

/// The CA request id of an issuance: stable for one (object, generation, reason, key), so a
/// retried request is answered once; made only of the characters the CA accepts
/// (`nexus_ca_api::validate::check_request_id`: `[A-Za-z0-9._:-]`, at most 128).
pub fn request_id(
    uid: &str,
    generation: Option<i64>,
    reason: IssueReason,
    csr_der: &[u8],
) -> String {
    let key_tag = hex::encode(&sha2::Sha256::digest(csr_der)[..8]);
    let uid: String = uid
        .chars()
        .filter(|c| {
            c.is_ascii() && nexus_ca_api::validate::is_request_id_byte(*c as u8) && *c != ':'
        })
        .take(64)
        .collect();
    format!(
        "{uid}:{}:{}:{key_tag}",
        generation.unwrap_or_default(),
        reason.as_str()
    )
}

/// Back-off for failed reconciles: grows with the failures recorded in status.
pub fn error_policy(mi: Arc<ModelIdentity>, error: &Error, _ctx: Arc<Context>) -> Action {
    let failures = mi
        .status
        .as_ref()
        .map(|s| s.failed_issuance_attempts)
        .unwrap_or(0)
        .saturating_add(1);
    let wait = decide::backoff(failures);
    warn!(error = %error, ?wait, "reconcile failed; backing off");
    Action::requeue(wait)
}

/// What in a ModelIdentity makes it worth reconciling: spec (generation), finalizers and the
/// start of deletion. Status is not: the controller writes it itself, and reconciling on its own
/// status writes would bypass the error back-off (a hot loop on a real API server).
pub fn changes_that_matter(mi: &ModelIdentity) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    mi.metadata.generation.hash(&mut h);
    mi.finalizers().hash(&mut h);
    mi.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Runs the ModelIdentity controller until `shutdown` resolves: ModelIdentities filtered by
/// [`changes_that_matter`], plus the Secrets it owns.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::StreamExt;
    use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
    let identities: Api<ModelIdentity> = Api::all(ctx.client.clone());
    let secrets: Api<Secret> = Api::all(ctx.client.clone());
    let (reader, writer) = reflector::store();
    let stream = watcher(identities, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(changes_that_matter, Default::default());
    Controller::for_stream(stream, reader)
        .owns(
            secrets,
            watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}")),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile error");
            }
        })
        .await;
}
