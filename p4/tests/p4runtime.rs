//! The `p4.v1.P4Runtime` service over real gRPC on loopback: arbitration between two
//! controllers, the specification's error codes, write atomicity, pipeline configs, and 10,000
//! entries written and read back.

mod common;

use std::time::Duration;

use common::*;
use nexus_p4::client::{ApplyError, Controller};
use nexus_p4::compile::compile;
use nexus_p4::p4info::nexroute_p4info;
use nexus_p4::proto::p4::v1 as pb;
use nexus_p4::proto::p4::v1::p4_runtime_client::P4RuntimeClient;
use nexus_p4::{Code, Schema, Target};
use pb::update::Type;
use pb::write_request::Atomicity;

fn schema() -> Schema {
    Schema::new(nexroute_p4info().expect("parses")).expect("consistent")
}

fn exact(id: u32, v: &[u8]) -> pb::FieldMatch {
    pb::FieldMatch {
        field_id: id,
        field_match_type: Some(pb::field_match::FieldMatchType::Exact(
            pb::field_match::Exact { value: v.to_vec() },
        )),
    }
}

fn act(id: u32, params: &[&[u8]]) -> Option<pb::TableAction> {
    Some(pb::TableAction {
        r#type: Some(pb::table_action::Type::Action(pb::Action {
            action_id: id,
            params: params
                .iter()
                .enumerate()
                .map(|(i, v)| pb::action::Param {
                    param_id: i as u32 + 1,
                    value: v.to_vec(),
                })
                .collect(),
        })),
    })
}

/// A `tenant` table entry: tenant id → set_tenant(index).
fn tenant_entry(s: &Schema, tenant: u32, index: u16) -> pb::TableEntry {
    pb::TableEntry {
        table_id: s.id("tenant").expect("table"),
        r#match: vec![exact(1, &tenant.to_le_bytes())],
        action: act(s.id("set_tenant").expect("action"), &[&index.to_be_bytes()]),
        ..Default::default()
    }
}

fn update(ty: Type, te: pb::TableEntry) -> pb::Update {
    pb::Update {
        r#type: ty as i32,
        entity: Some(pb::Entity {
            entity: Some(pb::entity::Entity::TableEntry(te)),
        }),
    }
}

async fn entries(c: &mut Controller) -> Vec<pb::TableEntry> {
    c.read(vec![pb::Entity {
        entity: Some(pb::entity::Entity::TableEntry(pb::TableEntry::default())),
    }])
    .await
    .expect("reads")
    .into_iter()
    .filter_map(|e| match e.entity {
        Some(pb::entity::Entity::TableEntry(t)) => Some(t),
        _ => None,
    })
    .collect()
}

async fn loaded_target() -> (std::sync::Arc<Target>, String) {
    let target = Target::new(1);
    target.load_nexroute().await.expect("loads");
    let url = serve(target.clone()).await;
    (target, url)
}

#[tokio::test]
async fn capabilities_and_device_checks() {
    let target = Target::new(1);
    let url = serve(target).await;
    let mut raw = P4RuntimeClient::connect(url.clone())
        .await
        .expect("connects");
    let caps = raw
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .expect("answers")
        .into_inner();
    assert!(caps.p4runtime_api_version.starts_with("1."));
    let err = raw
        .get_forwarding_pipeline_config(pb::GetForwardingPipelineConfigRequest {
            device_id: 9,
            response_type: 0,
        })
        .await
        .expect_err("wrong device");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // No pipeline yet: a primary's write is refused with FAILED_PRECONDITION.
    let mut c = Controller::connect(url.clone(), 1, 5)
        .await
        .expect("connects");
    let e = c
        .write(
            vec![update(Type::Insert, tenant_entry(&schema(), 1, 0))],
            Atomicity::ContinueOnError,
        )
        .await
        .expect_err("no pipeline");
    assert_eq!(e.status.code(), tonic::Code::FailedPrecondition);

    // An arbitration for another device ends that stream with NOT_FOUND.
    let e = Controller::connect(url, 2, 5)
        .await
        .expect_err("wrong device");
    assert!(e.to_string().contains("device"), "{e}");
}

#[tokio::test]
async fn only_the_primary_writes_and_a_backup_takes_over() {
    let (_t, url) = loaded_target().await;
    let s = schema();
    let mut low = Controller::connect(url.clone(), 1, 10)
        .await
        .expect("connects");
    assert!(low.is_primary(), "alone, it is primary");
    let mut high = Controller::connect(url.clone(), 1, 20)
        .await
        .expect("connects");
    assert!(high.is_primary());
    // The former primary is told it is a backup now.
    assert!(!low.next_arbitration().await.expect("notified"));

    let e = low
        .write(
            vec![update(Type::Insert, tenant_entry(&s, 1, 1))],
            Atomicity::ContinueOnError,
        )
        .await
        .expect_err("backup");
    assert_eq!(e.status.code(), tonic::Code::PermissionDenied);
    assert!(entries(&mut low).await.is_empty(), "nothing applied");
    high.write(
        vec![update(Type::Insert, tenant_entry(&s, 2, 2))],
        Atomicity::ContinueOnError,
    )
    .await
    .expect("primary writes");
    assert_eq!(entries(&mut low).await.len(), 1, "anyone may read");

    // A third controller with the primary's election id is refused.
    let e = Controller::connect(url.clone(), 1, 20)
        .await
        .expect_err("duplicate election id");
    assert!(
        matches!(e, nexus_p4::Error::Rpc(ref s) if s.code() == tonic::Code::InvalidArgument),
        "{e}"
    );

    // The primary goes away: the backup is promoted and its writes are accepted.
    drop(high);
    let promoted = tokio::time::timeout(Duration::from_secs(10), low.next_arbitration())
        .await
        .expect("promotion arrives")
        .expect("stream alive");
    assert!(promoted);
    low.write(
        vec![update(Type::Insert, tenant_entry(&s, 1, 1))],
        Atomicity::ContinueOnError,
    )
    .await
    .expect("new primary writes");
    assert_eq!(entries(&mut low).await.len(), 2);
}

#[tokio::test]
async fn bad_updates_get_the_spec_error_codes_and_change_nothing() {
    let (_t, url) = loaded_target().await;
    let s = schema();
    let mut c = Controller::connect(url, 1, 1).await.expect("connects");
    c.write(
        vec![update(Type::Insert, tenant_entry(&s, 1, 1))],
        Atomicity::ContinueOnError,
    )
    .await
    .expect("ok");

    let tenant = s.id("tenant").expect("table");
    let set_tenant = s.id("set_tenant").expect("action");
    let mut unknown_table = tenant_entry(&s, 3, 3);
    unknown_table.table_id = 0x0200_0001;
    let mut too_wide = tenant_entry(&s, 4, 4);
    too_wide.r#match = vec![exact(1, &[1, 2, 3, 4, 5])];
    let mut param_too_wide = tenant_entry(&s, 5, 5);
    param_too_wide.action = act(set_tenant, &[&[1, 0, 0]]);
    let mut no_action = tenant_entry(&s, 6, 6);
    no_action.action = None;
    let mut unknown_action = tenant_entry(&s, 7, 7);
    unknown_action.action = act(0x0100_0001, &[]);
    let mut foreign_action = tenant_entry(&s, 8, 8);
    foreign_action.action = act(s.id("set_route").expect("action"), &[&[1]]);
    let mut missing_field = tenant_entry(&s, 9, 9);
    missing_field.r#match.clear();
    let mut wrong_kind = tenant_entry(&s, 10, 10);
    wrong_kind.r#match = vec![pb::FieldMatch {
        field_id: 1,
        field_match_type: Some(pb::field_match::FieldMatchType::Ternary(
            pb::field_match::Ternary {
                value: vec![1],
                mask: vec![1],
            },
        )),
    }];
    let mut with_priority = tenant_entry(&s, 11, 11);
    with_priority.priority = 10;
    let cases: Vec<(pb::Update, Code)> = vec![
        (update(Type::Insert, unknown_table), Code::NotFound),
        (update(Type::Insert, too_wide), Code::OutOfRange),
        (update(Type::Insert, param_too_wide), Code::OutOfRange),
        (update(Type::Insert, no_action), Code::InvalidArgument),
        (update(Type::Insert, unknown_action), Code::NotFound),
        (update(Type::Insert, foreign_action), Code::InvalidArgument),
        (update(Type::Insert, missing_field), Code::InvalidArgument),
        (update(Type::Insert, wrong_kind), Code::InvalidArgument),
        (update(Type::Insert, with_priority), Code::InvalidArgument),
        (
            update(Type::Insert, tenant_entry(&s, 1, 9)),
            Code::AlreadyExists,
        ),
        (
            update(Type::Modify, tenant_entry(&s, 12, 1)),
            Code::NotFound,
        ),
        (
            update(Type::Delete, tenant_entry(&s, 13, 1)),
            Code::NotFound,
        ),
        (
            pb::Update {
                r#type: Type::Unspecified as i32,
                entity: None,
            },
            Code::InvalidArgument,
        ),
        (
            pb::Update {
                r#type: Type::Insert as i32,
                entity: Some(pb::Entity { entity: None }),
            },
            Code::Unimplemented,
        ),
    ];
    let n = cases.len();
    let (updates, codes): (Vec<_>, Vec<_>) = cases.into_iter().unzip();
    let e = c
        .write(updates, Atomicity::ContinueOnError)
        .await
        .expect_err("all bad");
    assert_eq!(
        e.status.code(),
        tonic::Code::Unknown,
        "a failed batch is UNKNOWN with details"
    );
    assert_eq!(e.errors.len(), n, "one p4.v1.Error per update");
    for (i, (err, want)) in e.errors.iter().zip(&codes).enumerate() {
        assert_eq!(
            err.canonical_code, *want as i32,
            "update {i}: {}",
            err.message
        );
        assert!(!err.message.is_empty());
    }
    let all = entries(&mut c).await;
    assert_eq!(all.len(), 1, "nothing applied");
    assert_eq!(all[0].table_id, tenant);
    assert_eq!(
        all[0],
        {
            let mut t = tenant_entry(&s, 1, 1);
            t.action = act(set_tenant, &[&[1]]);
            t
        },
        "read back in canonical form"
    );

    // Zero-padded values are accepted and read back canonical.
    let mut padded = tenant_entry(&s, 0x0100, 0);
    padded.r#match = vec![exact(1, &[0, 0, 1, 0])];
    padded.action = act(set_tenant, &[&[0, 0]]);
    c.write(
        vec![update(Type::Insert, padded)],
        Atomicity::ContinueOnError,
    )
    .await
    .expect("padding accepted");
    let e = c
        .read(vec![pb::Entity {
            entity: Some(pb::entity::Entity::TableEntry(pb::TableEntry {
                table_id: tenant,
                r#match: vec![exact(1, &[1, 0])],
                ..Default::default()
            })),
        }])
        .await
        .expect("read one");
    assert_eq!(e.len(), 1);
}

#[tokio::test]
async fn atomicity_modes() {
    let (_t, url) = loaded_target().await;
    let s = schema();
    let mut c = Controller::connect(url, 1, 1).await.expect("connects");
    let mut bad = tenant_entry(&s, 99, 0);
    bad.action = None;
    let batch = |base: u32| {
        vec![
            update(Type::Insert, tenant_entry(&s, base, 1)),
            update(Type::Insert, bad.clone()),
            update(Type::Insert, tenant_entry(&s, base + 1, 2)),
        ]
    };
    // CONTINUE_ON_ERROR: the good updates are applied, the bad one reported.
    let e = c
        .write(batch(100), Atomicity::ContinueOnError)
        .await
        .expect_err("one bad");
    let codes: Vec<i32> = e.errors.iter().map(|x| x.canonical_code).collect();
    assert_eq!(
        codes,
        [
            Code::Ok as i32,
            Code::InvalidArgument as i32,
            Code::Ok as i32
        ]
    );
    assert_eq!(entries(&mut c).await.len(), 2);
    // ROLLBACK_ON_ERROR and DATAPLANE_ATOMIC: nothing is applied.
    for mode in [Atomicity::RollbackOnError, Atomicity::DataplaneAtomic] {
        let e = c.write(batch(200), mode).await.expect_err("one bad");
        let codes: Vec<i32> = e.errors.iter().map(|x| x.canonical_code).collect();
        assert_eq!(
            codes,
            [
                Code::Aborted as i32,
                Code::InvalidArgument as i32,
                Code::Aborted as i32
            ],
            "{mode:?}"
        );
        assert_eq!(entries(&mut c).await.len(), 2, "{mode:?}: nothing applied");
    }
    c.write(
        batch(300)
            .into_iter()
            .filter(|u| u != &update(Type::Insert, bad.clone()))
            .collect(),
        Atomicity::DataplaneAtomic,
    )
    .await
    .expect("all good");
    assert_eq!(entries(&mut c).await.len(), 4);
}

#[tokio::test]
async fn a_rejected_table_version_keeps_the_old_tables() {
    let (target, url) = loaded_target().await;
    let mut c = Controller::connect(url, 1, 1).await.expect("connects");
    let v1 = compile(&schema(), &[demo_domain(demo_endpoints())]).expect("compiles");
    c.apply(&v1).await.expect("v1 programs");

    // v2 is broken on the way (a member whose action parameter does not fit its width).
    let mut v2 = compile(
        &schema(),
        &[demo_domain(
            demo_endpoints()
                .into_iter()
                .filter(|e| e.name != "coder-b")
                .collect(),
        )],
    )
    .expect("compiles");
    for e in &mut v2.entities {
        if let Some(pb::entity::Entity::ActionProfileMember(m)) = &mut e.entity
            && let Some(a) = m.action.as_mut()
        {
            a.params[2].value = vec![0xff, 0xff]; // port is bit<9>
        }
    }
    let err = c.apply(&v2).await.expect_err("refused");
    let ApplyError::Refused(f) = err else {
        panic!("{err}")
    };
    assert!(
        f.errors
            .iter()
            .any(|e| e.canonical_code == Code::OutOfRange as i32),
        "{f}"
    );
    // The node still runs v1, entirely.
    assert_eq!(
        c.programmed_version().await.expect("reads").as_deref(),
        Some(v1.version.as_str())
    );
    let loaded = target.loaded().expect("loaded");
    let mut hits = std::collections::HashSet::new();
    for stream in 0..400 {
        let mut p = routed_packet(TENANT, stream, "code-generation", 0);
        assert!(matches!(
            loaded.process(&mut p),
            nexus_p4::Verdict::Routed { .. }
        ));
        hits.insert(dst_of(&p));
    }
    assert!(
        hits.contains(&"10.20.0.18:7400".parse().expect("addr")),
        "coder-b still routed under v1"
    );
}

#[tokio::test]
async fn pipeline_configs() {
    let target = Target::new(1);
    let url = serve(target.clone()).await;
    let mut c = Controller::connect(url, 1, 1).await.expect("connects");
    let req = |action: pb::set_forwarding_pipeline_config_request::Action,
               p4info: Option<nexus_p4::proto::p4::config::v1::P4Info>,
               cookie: u64| {
        #[allow(deprecated)]
        pb::SetForwardingPipelineConfigRequest {
            device_id: 1,
            election_id: Some(pb::Uint128 { high: 0, low: 1 }),
            action: action as i32,
            config: p4info.map(|p| pb::ForwardingPipelineConfig {
                p4info: Some(p),
                p4_device_config: vec![1, 2, 3],
                cookie: Some(pb::forwarding_pipeline_config::Cookie { cookie }),
            }),
            ..Default::default()
        }
    };
    use pb::set_forwarding_pipeline_config_request::Action as A;
    let mut bad = nexroute_p4info().expect("parses");
    bad.tables.remove(0);
    let e = c
        .client()
        .set_forwarding_pipeline_config(req(A::Verify, Some(bad), 1))
        .await
        .expect_err("cannot run");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    c.client()
        .set_forwarding_pipeline_config(req(A::Verify, Some(nexroute_p4info().expect("parses")), 1))
        .await
        .expect("verifies");
    assert!(target.loaded().is_none(), "VERIFY changes nothing");
    let e = c
        .client()
        .set_forwarding_pipeline_config(req(A::Commit, None, 0))
        .await
        .expect_err("nothing saved");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    c.client()
        .set_forwarding_pipeline_config(req(
            A::VerifyAndSave,
            Some(nexroute_p4info().expect("parses")),
            7,
        ))
        .await
        .expect("saves");
    // Writes after SAVE go to the saved config's tables, which do not forward yet.
    let s = schema();
    c.write(
        vec![update(Type::Insert, tenant_entry(&s, 1, 0))],
        Atomicity::DataplaneAtomic,
    )
    .await
    .expect("writes to saved");
    assert!(target.loaded().is_none());
    c.client()
        .set_forwarding_pipeline_config(req(A::Commit, None, 0))
        .await
        .expect("commits");
    assert_eq!(
        target
            .loaded()
            .expect("loaded")
            .snapshot
            .store
            .entry_count(),
        1
    );
    assert_eq!(c.pipeline_cookie().await.expect("reads"), Some(7));
    // RECONCILE with the same P4Info keeps the entries; a new VERIFY_AND_COMMIT clears them.
    c.client()
        .set_forwarding_pipeline_config(req(
            A::ReconcileAndCommit,
            Some(nexroute_p4info().expect("parses")),
            8,
        ))
        .await
        .expect("reconciles");
    assert_eq!(entries(&mut c).await.len(), 1);
    assert_eq!(c.pipeline_cookie().await.expect("reads"), Some(8));
    c.set_pipeline(nexroute_p4info().expect("parses"), 9)
        .await
        .expect("commits");
    assert!(entries(&mut c).await.is_empty());
    let got = c
        .client()
        .get_forwarding_pipeline_config(pb::GetForwardingPipelineConfigRequest {
            device_id: 1,
            response_type: 2,
        })
        .await
        .expect("gets")
        .into_inner()
        .config
        .expect("config");
    assert_eq!(got.p4info, Some(nexroute_p4info().expect("parses")));
    assert!(got.p4_device_config.is_empty(), "P4INFO_AND_COOKIE");
}

#[tokio::test]
async fn ten_thousand_entries_written_and_read_back() {
    let (_t, url) = loaded_target().await;
    let s = schema();
    let mut c = Controller::connect(url, 1, 1).await.expect("connects");
    let table = s.id("capability_class").expect("table");
    let set_route = s.id("set_route").expect("action");
    let entry = |i: u32| pb::TableEntry {
        table_id: table,
        r#match: vec![
            exact(1, &((i % 100) as u16 + 1).to_be_bytes()),
            exact(2, &(i / 100 + 1).to_le_bytes()),
        ],
        action: act(set_route, &[&i.to_be_bytes()]),
        ..Default::default()
    };
    let want: Vec<pb::TableEntry> = (0..10_000).map(entry).collect();
    for chunk in want.chunks(2_500) {
        c.write(
            chunk
                .iter()
                .cloned()
                .map(|e| update(Type::Insert, e))
                .collect(),
            Atomicity::DataplaneAtomic,
        )
        .await
        .expect("writes");
    }
    let got = entries(&mut c).await;
    assert_eq!(got.len(), 10_000);
    let canon = |mut e: pb::TableEntry| {
        for m in &mut e.r#match {
            if let Some(pb::field_match::FieldMatchType::Exact(x)) = &mut m.field_match_type {
                x.value = nexus_p4::bytes::canonical(&x.value);
            }
        }
        if let Some(pb::TableAction {
            r#type: Some(pb::table_action::Type::Action(a)),
        }) = &mut e.action
        {
            for p in &mut a.params {
                p.value = nexus_p4::bytes::canonical(&p.value);
            }
        }
        prost::Message::encode_to_vec(&e)
    };
    let mut a: Vec<Vec<u8>> = want.into_iter().map(canon).collect();
    let mut b: Vec<Vec<u8>> = got.into_iter().map(canon).collect();
    a.sort();
    b.sort();
    assert!(a == b, "read back exactly what was written");
}
