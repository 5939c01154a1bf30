//! The Watch stream: replay then live, in order, exactly once; resumable;
//! compacted history; slow watchers never block writers.

use evergreen_e2e::Channel;
use evergreen_e2e::{req, Sandbox};
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{watch_response::Kind, UpdateModelRequest, WatchRequest, WatchResponse};
use tonic::Streaming;

async fn watch(
    c: &mut RegistryClient<Channel>,
    from: Option<u64>,
    model: &str,
) -> Streaming<WatchResponse> {
    c.watch(WatchRequest {
        from_revision: from,
        model: model.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn next_kind(s: &mut Streaming<WatchResponse>) -> Kind {
    s.message()
        .await
        .unwrap()
        .expect("stream still open")
        .kind
        .unwrap()
}

/// Revisions of the next `n` events.
async fn revisions(s: &mut Streaming<WatchResponse>, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        match next_kind(s).await {
            Kind::Event(e) => out.push(e.revision),
            other => panic!("expected an event, got {other:?}"),
        }
    }
    out
}

async fn touch(c: &mut RegistryClient<Channel>, model: &str, reason: String) {
    c.update_model(UpdateModelRequest {
        name: model.into(),
        reason,
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn replays_history_then_follows_live_events_in_order_exactly_once() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    c.create_model(req::create("a")).await.unwrap(); // rev 1
    touch(&mut c, "a", "x".into()).await; // rev 2
    touch(&mut c, "a", "y".into()).await; // rev 3

    let mut from_zero = watch(&mut c, Some(0), "").await;
    assert!(matches!(
        next_kind(&mut from_zero).await,
        Kind::StartRevision(0)
    ));
    assert_eq!(revisions(&mut from_zero, 3).await, [1, 2, 3]);

    let mut resumed = watch(&mut c, Some(2), "").await;
    assert!(matches!(
        next_kind(&mut resumed).await,
        Kind::StartRevision(2)
    ));
    let mut from_now = watch(&mut c, None, "").await;
    assert!(matches!(
        next_kind(&mut from_now).await,
        Kind::StartRevision(3)
    ));

    // Live events, concurrent writers.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = sb.registry().await;
        tasks.push(tokio::spawn(async move {
            touch(&mut c, "a", format!("w{i}")).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        revisions(&mut from_zero, 20).await,
        (4..=23).collect::<Vec<_>>()
    );
    assert_eq!(
        revisions(&mut resumed, 21).await,
        (3..=23).collect::<Vec<_>>()
    );
    assert_eq!(
        revisions(&mut from_now, 20).await,
        (4..=23).collect::<Vec<_>>()
    );

    // Nothing more arrives (no duplicates) until the next mutation.
    touch(&mut c, "a", "last".into()).await;
    assert_eq!(revisions(&mut from_zero, 1).await, [24]);
}

#[tokio::test]
async fn a_model_filter_sees_only_that_model() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    let mut only_b = watch(&mut c, Some(0), "b").await;
    assert!(matches!(
        next_kind(&mut only_b).await,
        Kind::StartRevision(0)
    ));
    c.create_model(req::create("a")).await.unwrap();
    c.create_model(req::create("b")).await.unwrap();
    touch(&mut c, "a", String::new()).await;
    touch(&mut c, "b", String::new()).await;
    let Kind::Event(e1) = next_kind(&mut only_b).await else {
        panic!()
    };
    let Kind::Event(e2) = next_kind(&mut only_b).await else {
        panic!()
    };
    assert_eq!(
        (
            e1.model.as_str(),
            e1.revision,
            e2.model.as_str(),
            e2.revision
        ),
        ("b", 2, "b", 4)
    );
}

#[tokio::test]
async fn history_older_than_retention_is_answered_with_compacted() {
    let sb = Sandbox::builder()
        .registry(|c| c.watch.history = 5)
        .start()
        .await;
    let mut c = sb.registry().await;
    c.create_model(req::create("a")).await.unwrap();
    for i in 0..9 {
        touch(&mut c, "a", format!("{i}")).await;
    }
    // Revisions 1..=10 happened; only 6..=10 are retained.
    let mut s = watch(&mut c, Some(2), "").await;
    match next_kind(&mut s).await {
        Kind::Compacted(c) => assert_eq!((c.compact_revision, c.current_revision), (5, 10)),
        other => panic!("expected compacted, got {other:?}"),
    }
    assert!(
        s.message().await.unwrap().is_none(),
        "the stream ends after compacted"
    );

    let mut s = watch(&mut c, Some(5), "").await;
    assert!(matches!(next_kind(&mut s).await, Kind::StartRevision(5)));
    assert_eq!(revisions(&mut s, 5).await, [6, 7, 8, 9, 10]);
    // The audit trail is not compacted.
    let h = c
        .history(evergreen_proto::v1::HistoryRequest {
            model: "a".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.entries.len(), 10);
}

#[tokio::test]
async fn a_slow_watcher_never_blocks_writers_and_resumes_where_it_fell_behind() {
    let sb = Sandbox::builder()
        .registry(|c| c.watch.buffer = 8)
        .start()
        .await;
    let mut c = sb.registry().await;
    c.create_model(req::create("a")).await.unwrap();
    let mut slow = watch(&mut c, None, "").await;
    assert!(matches!(next_kind(&mut slow).await, Kind::StartRevision(1)));

    // 300 fat events while the watcher reads nothing: every write completes.
    let fat = "r".repeat(4096);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = sb.registry().await;
        let fat = fat.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..30 {
                touch(&mut c, "a", fat.clone()).await;
            }
        }));
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("writers were never blocked by the slow watcher");

    let mut seen = Vec::new();
    let status = loop {
        match slow.message().await {
            Ok(Some(WatchResponse {
                kind: Some(Kind::Event(e)),
            })) => seen.push(e.revision),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let resume: u64 = status
        .metadata()
        .get("x-evergreen-resume-revision")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        status
            .message()
            .contains(&format!("from_revision={resume}")),
        "{}",
        status.message()
    );
    assert_eq!(resume, seen.last().copied().unwrap_or(1));
    assert!(resume < 301, "it did fall behind");

    let mut again = watch(&mut c, Some(resume), "").await;
    assert!(matches!(next_kind(&mut again).await, Kind::StartRevision(r) if r == resume));
    let rest = revisions(&mut again, (301 - resume) as usize).await;
    seen.extend(rest);
    assert_eq!(
        seen,
        (2..=301).collect::<Vec<_>>(),
        "nothing missed, nothing twice"
    );
}
