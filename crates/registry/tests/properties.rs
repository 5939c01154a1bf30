//! Property tests of version numbering and alias compare-and-set, against a
//! reference model, on the domain API over a real sled store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use evergreen_proto::v1::VersionHeader;
use evergreen_registry::artifacts::LocalDirStore;
use evergreen_registry::error::RegistryError;
use evergreen_registry::names::{Selector, VersionSpec};
use evergreen_registry::service::{Caller, Registry};
use evergreen_registry::store::{Store, StoreOptions};
use proptest::prelude::*;

fn open(dir: &std::path::Path) -> Registry {
    let store = Arc::new(
        Store::open(
            &dir.join("db"),
            StoreOptions {
                history: 1000,
                watch_buffer: 64,
            },
        )
        .unwrap(),
    );
    let artifacts = Arc::new(LocalDirStore::open(&dir.join("artifacts")).unwrap());
    Registry::new(store, artifacts, 1 << 20)
}

fn caller() -> Caller {
    Caller {
        actor: "prop".into(),
        reason: String::new(),
    }
}

async fn register(r: &Registry, payload: &[u8]) -> Result<u64, RegistryError> {
    let header = VersionHeader {
        model: "m".into(),
        ..Default::default()
    };
    let chunks = futures::stream::iter(vec![Ok(payload.to_vec())]);
    r.register_version(caller(), header, chunks)
        .await
        .map(|v| v.version)
}

const ALIASES: [&str; 3] = ["production", "champion", "challenger"];

#[derive(Debug, Clone)]
enum Op {
    Register,
    DeleteVersion(u64),
    /// alias index, target version, expected (None = unconditional).
    SetAlias(usize, u64, Option<u64>),
    DeleteAlias(usize, Option<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Register),
        1 => (1u64..8).prop_map(Op::DeleteVersion),
        3 => (0usize..3, 1u64..8, proptest::option::of(0u64..8)).prop_map(|(a, v, e)| Op::SetAlias(a, v, e)),
        1 => (0usize..3, proptest::option::of(0u64..8)).prop_map(|(a, e)| Op::DeleteAlias(a, e)),
    ]
}

/// What the registry should hold.
#[derive(Default)]
struct Reference {
    counter: u64,
    versions: BTreeSet<u64>,
    aliases: BTreeMap<String, u64>,
}

fn cas_ok(expected: Option<u64>, current: Option<u64>) -> bool {
    match expected {
        None => true,
        Some(0) => current.is_none(),
        Some(v) => current == Some(v),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn numbering_and_cas_follow_the_reference_model(ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let r = open(dir.path());
            r.create_model(caller(), "m".into(), String::new(), Default::default()).await.unwrap();
            let mut want = Reference::default();
            for (i, op) in ops.iter().enumerate() {
                match op.clone() {
                    Op::Register => {
                        let v = register(&r, format!("artifact {i}").as_bytes()).await.unwrap();
                        want.counter += 1;
                        assert_eq!(v, want.counter, "numbers are 1, 2, 3… never reused");
                        want.versions.insert(v);
                    }
                    Op::DeleteVersion(v) => {
                        let spec = VersionSpec { model: "m".into(), selector: Selector::Version(v) };
                        let got = r.delete_version(caller(), spec, false).await;
                        let aliased = want.aliases.values().any(|t| *t == v);
                        match (want.versions.contains(&v), aliased) {
                            (false, _) => assert!(matches!(got, Err(RegistryError::VersionNotFound { .. })), "{got:?}"),
                            (true, true) => assert!(matches!(got, Err(RegistryError::FailedPrecondition(_))), "{got:?}"),
                            (true, false) => {
                                got.unwrap();
                                want.versions.remove(&v);
                            }
                        }
                    }
                    Op::SetAlias(a, v, expected) => {
                        let alias = ALIASES[a].to_string();
                        let current = want.aliases.get(&alias).copied();
                        let got = r.set_alias(caller(), "m".into(), alias.clone(), v, expected).await;
                        if !cas_ok(expected, current) {
                            match got {
                                Err(RegistryError::AliasMismatch { actual, .. }) => assert_eq!(actual, current),
                                other => panic!("expected a CAS mismatch, got {other:?}"),
                            }
                        } else if !want.versions.contains(&v) {
                            assert!(matches!(got, Err(RegistryError::VersionNotFound { .. })), "{got:?}");
                        } else {
                            assert_eq!(got.unwrap().version, v);
                            want.aliases.insert(alias, v);
                        }
                    }
                    Op::DeleteAlias(a, expected) => {
                        let alias = ALIASES[a].to_string();
                        let current = want.aliases.get(&alias).copied();
                        let got = r.delete_alias(caller(), "m".into(), alias.clone(), expected).await;
                        match current {
                            None => assert!(matches!(got, Err(RegistryError::AliasNotFound { .. })), "{got:?}"),
                            Some(_) if !cas_ok(expected, current) => {
                                assert!(matches!(got, Err(RegistryError::AliasMismatch { .. })), "{got:?}")
                            }
                            Some(_) => {
                                got.unwrap();
                                want.aliases.remove(&alias);
                            }
                        }
                    }
                }
                let model = r.get_model("m").unwrap();
                let aliases: BTreeMap<String, u64> = model.aliases.into_iter().collect();
                assert_eq!(aliases, want.aliases);
                assert_eq!(model.latest_version, want.counter);
                let (listed, _) = r.list_versions("m").await.unwrap();
                let listed: BTreeSet<u64> = listed.iter().map(|v| v.version).collect();
                assert_eq!(listed, want.versions);
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_concurrent_compare_and_sets_from_the_same_state_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let r = Arc::new(open(dir.path()));
    r.create_model(caller(), "m".into(), String::new(), Default::default())
        .await
        .unwrap();
    for i in 0..17u8 {
        register(&r, &[i]).await.unwrap();
    }
    r.set_alias(caller(), "m".into(), "production".into(), 1, Some(0))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for v in 2..=17u64 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            r.set_alias(caller(), "m".into(), "production".into(), v, Some(1))
                .await
        }));
    }
    let mut winners = Vec::new();
    let mut losers = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(a) => winners.push(a.version),
            Err(RegistryError::AliasMismatch { actual, .. }) => {
                losers += 1;
                assert_ne!(actual, Some(1), "a loser saw the alias moved");
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    assert_eq!(losers, 15);
    assert_eq!(r.get_model("m").unwrap().aliases["production"], winners[0]);
}
