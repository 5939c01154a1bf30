//! The full lifecycle, end to end: the demo's narrative (the library
//! function behind `evergreen up --demo` and `evergreen demo`) played
//! against the sandbox's real daemons. Each of its steps checks its own
//! outcome; this test checks the end state independently, through the
//! daemons' APIs and the archive on disk.

use evergreen_cli::demo::{self, Endpoints, Options, WINDOW_ROWS};
use evergreen_e2e::{dataset, req, Sandbox};
use evergreen_proto::v1::{
    GetModelRequest, GetVersionRequest, ListSignalsRequest, PredictRequest, SignalKind,
    VersionStatus,
};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

async fn channel(url: String) -> evergreen_runtime::client::Channel {
    let ch = Channel::from_shared(url).unwrap().connect().await.unwrap();
    evergreen_runtime::client::Client::default().wrap(ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_story_train_to_archive_every_step_checked() {
    let sb = Sandbox::builder()
        .trainer()
        .monitor_with(|c| {
            c.window_rows = WINDOW_ROWS as u64;
            c.window_seconds = 3600;
        })
        .server(|_| {})
        .start()
        .await;
    let ep = Endpoints {
        registry: channel(sb.registry_url()).await,
        trainer: channel(sb.trainer_url()).await,
        server: channel(sb.server_url()).await,
        monitor: channel(format!("http://{}", sb.monitor_addr.unwrap())).await,
    };
    let opts = Options {
        data: dataset("breast_cancer.csv"),
        model: None,
        progress: false,
    };
    let mut narrative = Vec::new();
    let outcome = match demo::run(&ep, &opts, &mut narrative).await {
        Ok(o) => o,
        Err(e) => panic!("{e}\n{}", String::from_utf8_lossy(&narrative)),
    };
    let text = String::from_utf8(narrative).unwrap();
    assert_eq!(outcome.model, "cancer");
    assert_eq!(outcome.steps, 19, "{text}");
    for chapter in 1..=19 {
        assert!(text.contains(&format!("\n==> {chapter}. ")), "{text}");
    }

    // Production is the retrained version, and the server serves it.
    let mut reg = sb.registry().await;
    let model = reg
        .get_model(GetModelRequest {
            name: "cancer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.aliases.get("production"), Some(&outcome.retrained));
    assert!(model.policy.is_none_or(|p| p.weights.is_empty()));
    let served = sb
        .predictor()
        .await
        .predict(PredictRequest {
            model: "cancer".into(),
            rows: vec![crate::closed_loop::to_row(&outcome.sample_row)],
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.version, outcome.retrained);

    // The retrained version descends from the old one, by the monitor's
    // RETRAIN, whose job produced it.
    let new = reg
        .get_version(GetVersionRequest {
            r#ref: req::version("cancer", outcome.retrained),
        })
        .await
        .unwrap()
        .into_inner();
    let lineage = new.lineage.unwrap();
    assert_eq!(lineage.parent_version, outcome.old);
    let signals = sb
        .monitor()
        .await
        .list_signals(ListSignalsRequest {
            model: "cancer".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .signals;
    let retrain = signals
        .iter()
        .find(|s| s.kind() == SignalKind::Retrain)
        .expect("a RETRAIN signal");
    assert_eq!(retrain.version, outcome.old);
    assert!(
        retrain.action.contains(&lineage.run_id),
        "{} vs {}",
        retrain.action,
        lineage.run_id
    );

    // The old version: retired by the phase-out, archived, restored.
    let old = reg
        .get_version(GetVersionRequest {
            r#ref: req::version("cancer", outcome.old),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.status(), VersionStatus::Retired);
    assert_eq!(old.archive_uri, outcome.archive_uri);
    let dir = sb
        .data_dir()
        .join(format!("archive/cancer/{}", outcome.old));
    assert_eq!(outcome.archive_uri, format!("file://{}/", dir.display()));
    let archived = std::fs::read(dir.join("artifact.evgm")).unwrap();
    assert_eq!(
        format!("{:x}", Sha256::digest(&archived)),
        old.artifact.unwrap().sha256
    );
    assert!(dir.join("manifest.json").is_file());
    assert!(dir.join("data").is_dir(), "the training data went along");
}
