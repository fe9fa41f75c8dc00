//! Table programming through P4Runtime over real gRPC on loopback: 10,000 entries written (in
//! DATAPLANE_ATOMIC batches of 1,000) and read back, beside the same updates applied to the
//! software tables in process (no gRPC) in the same run.
//!
//! Run: `cargo bench -p nexus-p4 --bench p4runtime`. Criterion prints entries/s.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nexus_p4::client::Controller;
use nexus_p4::p4info::nexroute_p4info;
use nexus_p4::proto::p4::v1 as pb;
use nexus_p4::server::P4RuntimeService;
use nexus_p4::store::Store;
use nexus_p4::{Schema, Target};

const N: u32 = 10_000;

fn updates(s: &Schema) -> Vec<pb::Update> {
    let table = s.id("capability_class").expect("table");
    let set_route = s.id("set_route").expect("action");
    (0..N)
        .map(|i| pb::Update {
            r#type: pb::update::Type::Insert as i32,
            entity: Some(pb::Entity {
                entity: Some(pb::entity::Entity::TableEntry(pb::TableEntry {
                    table_id: table,
                    r#match: vec![
                        pb::FieldMatch {
                            field_id: 1,
                            field_match_type: Some(pb::field_match::FieldMatchType::Exact(
                                pb::field_match::Exact {
                                    value: ((i % 100) as u16 + 1).to_be_bytes().to_vec(),
                                },
                            )),
                        },
                        pb::FieldMatch {
                            field_id: 2,
                            field_match_type: Some(pb::field_match::FieldMatchType::Exact(
                                pb::field_match::Exact {
                                    value: (i / 100 + 1).to_le_bytes().to_vec(),
                                },
                            )),
                        },
                    ],
                    action: Some(pb::TableAction {
                        r#type: Some(pb::table_action::Type::Action(pb::Action {
                            action_id: set_route,
                            params: vec![pb::action::Param {
                                param_id: 1,
                                value: i.to_be_bytes().to_vec(),
                            }],
                        })),
                    }),
                    ..Default::default()
                })),
            }),
        })
        .collect()
}

fn p4runtime(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let schema = Schema::new(nexroute_p4info().expect("p4info")).expect("schema");
    let all = updates(&schema);
    let target = Target::new(1);
    let mut ctl = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(P4RuntimeService::server(target.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Controller::connect(format!("http://{addr}"), 1, 1)
            .await
            .expect("connects")
    });

    let mut g = c.benchmark_group("p4runtime_10k_entries");
    g.throughput(Throughput::Elements(u64::from(N)));
    g.sample_size(10);
    let mut read_time = Duration::ZERO;
    let mut reads = 0u32;
    g.bench_function("write_grpc", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rt.block_on(async {
                    ctl.set_pipeline(nexroute_p4info().expect("p4info"), 1)
                        .await
                        .expect("clears");
                    let t = Instant::now();
                    for chunk in all.chunks(1_000) {
                        ctl.write(
                            chunk.to_vec(),
                            pb::write_request::Atomicity::DataplaneAtomic,
                        )
                        .await
                        .expect("writes");
                    }
                    total += t.elapsed();
                    let t = Instant::now();
                    let got = ctl
                        .read(vec![pb::Entity {
                            entity: Some(pb::entity::Entity::TableEntry(pb::TableEntry::default())),
                        }])
                        .await
                        .expect("reads");
                    read_time += t.elapsed();
                    reads += 1;
                    assert_eq!(got.len(), N as usize);
                });
            }
            total
        })
    });
    g.bench_function("read_grpc", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rt.block_on(async {
                    let t = Instant::now();
                    let got = ctl
                        .read(vec![pb::Entity {
                            entity: Some(pb::entity::Entity::TableEntry(pb::TableEntry::default())),
                        }])
                        .await
                        .expect("reads");
                    total += t.elapsed();
                    assert_eq!(got.len(), N as usize);
                });
            }
            total
        })
    });
    g.bench_function("apply_in_process_baseline", |b| {
        b.iter(|| {
            let mut store = Store::new(&schema);
            for u in &all {
                store.apply(&schema, u).expect("valid");
            }
            store.entry_count()
        })
    });
    g.finish();
    if reads > 0 {
        let per = read_time / reads;
        println!(
            "read back after each write pass: {:.0} entries/s",
            f64::from(N) / per.as_secs_f64()
        );
    }
}

criterion_group!(benches, p4runtime);
criterion_main!(benches);
