//! Gradual phase-out (#6), end to end: the registry's scheduler moves
//! traffic step by step through the traffic policy, asks the real monitor
//! before each step, halts on a regression, survives a restart, and refuses
//! bad schedules without storing anything.

use evergreen_e2e::Channel;
use evergreen_e2e::{dataset, req, Sandbox};
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    EventKind, Feedback, GetModelRequest, GetPhaseoutRequest, GetReportRequest, GetVersionRequest,
    HistoryRequest, Model, Phaseout, PhaseoutAction, PhaseoutState, Policy, PredictRequest,
    RecordFeedbackRequest, SetAliasRequest, SetPolicyRequest, SetTrafficPolicyRequest,
    SetVersionStatusRequest, StartPhaseoutRequest, TrafficPolicy, UpdatePhaseoutRequest,
    VersionStatus, VersionWeight, WindowKind,
};
use tonic::{Code, Request};

use crate::closed_loop::{flipped_dataset, load, sample, to_row, train, until};

type Registry = RegistryClient<Channel>;

fn as_actor<T>(msg: T, actor: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-evergreen-actor", actor.parse().unwrap());
    r
}

/// A model with `n` versions (opaque artifacts: no server or monitor
/// reads them in these tests), `production` on version 1.
async fn model_with_versions(reg: &mut Registry, name: &str, n: u64) {
    reg.create_model(req::create(name)).await.unwrap();
    for i in 1..=n {
        let body = format!("artifact {name} {i}");
        let v = reg
            .register_version(tokio_stream::iter(req::register(
                req::header(name),
                body.as_bytes(),
                64,
            )))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.version, i);
    }
    set_production(reg, name, 1).await;
}

async fn set_production(reg: &mut Registry, name: &str, version: u64) {
    reg.set_alias(SetAliasRequest {
        model: name.into(),
        alias: "production".into(),
        version,
        ..Default::default()
    })
    .await
    .unwrap();
}

fn start(name: &str, from: u64, to: u64, steps: &[u32], every: u64) -> StartPhaseoutRequest {
    StartPhaseoutRequest {
        model: name.into(),
        from_version: from,
        to_version: to,
        steps: steps.to_vec(),
        every_seconds: every,
        retire_after_seconds: 0,
        reason: String::new(),
    }
}

async fn phaseout(reg: &mut Registry, name: &str) -> Phaseout {
    reg.get_phaseout(GetPhaseoutRequest { model: name.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn update(
    reg: &mut Registry,
    name: &str,
    action: PhaseoutAction,
) -> Result<Phaseout, tonic::Status> {
    reg.update_phaseout(as_actor(
        UpdatePhaseoutRequest {
            model: name.into(),
            action: action as i32,
            reason: String::new(),
        },
        "tester",
    ))
    .await
    .map(|r| r.into_inner())
}

async fn model(reg: &mut Registry, name: &str) -> Model {
    reg.get_model(GetModelRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

/// The model's traffic weights as (version, weight).
async fn weights(reg: &mut Registry, name: &str) -> Option<Vec<(u64, u32)>> {
    model(reg, name)
        .await
        .policy
        .map(|p| p.weights.iter().map(|w| (w.version, w.weight)).collect())
}

async fn version(reg: &mut Registry, name: &str, v: u64) -> evergreen_proto::v1::ModelVersion {
    reg.get_version(GetVersionRequest {
        r#ref: req::version(name, v),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn history(reg: &mut Registry, name: &str) -> Vec<evergreen_proto::v1::Event> {
    reg.history(HistoryRequest {
        model: name.into(),
        limit: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .entries
}

fn kinds(events: &[evergreen_proto::v1::Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind().short_name()).collect()
}

async fn until_state(reg: &Registry, name: &str, want: PhaseoutState) -> Phaseout {
    until(&format!("the phase-out of {name} is {want:?}"), || async {
        let p = phaseout(&mut reg.clone(), name).await;
        (p.state() == want).then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phaseout_shifts_traffic_step_by_step_then_moves_the_alias_and_deprecates_the_old_version(
) {
    // A real monitor that has seen nothing of version 2: "no data yet" is
    // healthy, and the step says so.
    let sb = Sandbox::builder().monitor().start().await;
    let mut reg = sb.registry().await;
    model_with_versions(&mut reg, "po", 2).await;
    reg.set_alias(SetAliasRequest {
        model: "po".into(),
        alias: "stable".into(),
        version: 1,
        ..Default::default()
    })
    .await
    .unwrap();

    let mut request = start("po", 1, 2, &[50, 100], 1);
    request.reason = "v2 is better".into();
    let p = reg
        .start_phaseout(as_actor(request, "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (p.state(), p.step, p.steps.clone()),
        (PhaseoutState::Running, 1, vec![50, 100])
    );
    assert_eq!(p.started_by, "alice");
    assert_eq!(p.history.len(), 1);
    assert_eq!(
        (
            p.history[0].step,
            p.history[0].weight,
            p.history[0].health.as_str()
        ),
        (1, 50, "first step: no health check")
    );
    assert!(p.next_step_at.is_some());
    // Step 1: half of the default traffic on 2.
    assert_eq!(weights(&mut reg, "po").await, Some(vec![(1, 50), (2, 50)]));

    // Step 2 (100 %) a second later completes it.
    let done = until_state(&reg, "po", PhaseoutState::Done).await;
    assert_eq!(done.step, 2);
    assert_eq!(done.next_step_at, None);
    assert_eq!(done.retire_at, None, "no --retire-after");
    assert_eq!(done.history.len(), 2);
    assert_eq!(done.history[1].weight, 100);
    let health = &done.history[1].health;
    assert!(
        health.starts_with("no monitoring window of po/2 closed yet (")
            && health.ends_with("): treated as healthy"),
        "{health}"
    );
    let m = model(&mut reg, "po").await;
    assert_eq!(m.policy, None, "the weights are cleared");
    assert_eq!(m.aliases.get("production"), Some(&2));
    assert_eq!(m.aliases.get("stable"), Some(&2), "every alias on 1 moved");
    let v1 = version(&mut reg, "po", 1).await;
    assert_eq!(v1.status(), VersionStatus::Deprecated);
    assert_eq!(v1.replacement_version, 2);
    assert_eq!(
        v1.status_reason,
        "phased out in favour of po/2 by the phase-out 1 -> 2 started by alice"
    );
    assert_eq!(
        version(&mut reg, "po", 2).await.status(),
        VersionStatus::Active
    );

    // Audited: who started it and why, each step, the moves and the notice.
    let h = history(&mut reg, "po").await;
    let tail = &h[h.len() - 5..];
    assert_eq!(
        kinds(tail),
        [
            "PHASEOUT_STARTED",
            "ALIAS_SET",
            "ALIAS_SET",
            "VERSION_STATUS_CHANGED",
            "PHASEOUT_DONE"
        ]
    );
    assert_eq!(tail[0].actor, "alice");
    assert_eq!(
        tail[0].reason,
        "phase-out po 1 -> 2: step 1/2, 50% of traffic on 2; first step: no health check (v2 is better)"
    );
    assert_eq!(tail[0].version, 1);
    let mut moved: Vec<(&str, u64)> = tail[1..3]
        .iter()
        .map(|e| (e.alias.as_str(), e.version))
        .collect();
    moved.sort();
    assert_eq!(moved, [("production", 2), ("stable", 2)]);
    assert!(tail[1..].iter().all(|e| e.actor == "evergreen-registry"));
    assert_eq!(tail[1].reason, "phase-out po 1 -> 2 complete");
    assert!(
        tail[4].reason.starts_with(
            "phase-out po 1 -> 2: step 2/2, 100% of traffic on 2; no monitoring window of po/2"
        ) && tail[4]
            .reason
            .ends_with("moved production, stable to 2; po/1 DEPRECATED"),
        "{}",
        tail[4].reason
    );
    let after: serde_json::Value = serde_json::from_str(&tail[4].after).unwrap();
    assert_eq!(after["state"], "DONE");
    assert_eq!(
        after["aliases_moved"],
        serde_json::json!(["production", "stable"])
    );
    let before: serde_json::Value = serde_json::from_str(&tail[4].before).unwrap();
    assert_eq!(before["weight"], 50);

    // A finished phase-out no longer blocks the next one.
    let e = reg
        .update_phaseout(UpdatePhaseoutRequest {
            model: "po".into(),
            action: PhaseoutAction::Abort as i32,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        "cannot abort the phase-out po 1 -> 2: it is DONE (abort applies to a RUNNING or PAUSED one, or to a DONE one with a retirement pending)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phaseout_resumes_after_a_registry_restart_and_retires_after_the_grace_period() {
    // No monitor: steps advance on time ("not checked").
    let mut sb = Sandbox::start().await;
    let mut reg = sb.registry().await;
    model_with_versions(&mut reg, "pr", 2).await;
    let mut request = start("pr", 1, 2, &[25, 50, 100], 2);
    request.retire_after_seconds = 1;
    reg.start_phaseout(request).await.unwrap();
    assert_eq!(weights(&mut reg, "pr").await, Some(vec![(1, 75), (2, 25)]));
    // Mid-way: the second step is applied, the third is not yet due.
    let mid = until("step 2 is applied", || async {
        let p = phaseout(&mut reg.clone(), "pr").await;
        (p.step == 2).then_some(p)
    })
    .await;
    assert_eq!(
        mid.history[1].health,
        "not checked (registry.monitor_url is empty)"
    );

    sb.restart().await; // graceful: the scheduler stops with the registry
    let mut reg = sb.registry().await;
    let after = phaseout(&mut reg, "pr").await;
    assert_eq!(after, mid, "the schedule comes back exactly as it was");
    assert_eq!(weights(&mut reg, "pr").await, Some(vec![(1, 50), (2, 50)]));

    let done = until_state(&reg, "pr", PhaseoutState::Done).await;
    assert_eq!(done.step, 3);
    assert_eq!(
        done.history.iter().map(|e| e.weight).collect::<Vec<_>>(),
        [25, 50, 100]
    );
    assert!(done.retire_at.is_some());
    let v1 = version(&mut reg, "pr", 1).await;
    assert_eq!(
        model(&mut reg, "pr").await.aliases.get("production"),
        Some(&2)
    );
    // DEPRECATED with the sunset of the retirement, then RETIRED after it.
    assert!(
        v1.status() == VersionStatus::Retired
            || (v1.status() == VersionStatus::Deprecated && v1.sunset_at == done.retire_at),
        "{v1:?}"
    );
    let retired = until("1 is retired after the grace period", || async {
        let p = phaseout(&mut reg.clone(), "pr").await;
        p.retired_at.map(|_| p)
    })
    .await;
    assert_eq!(retired.state(), PhaseoutState::Done);
    assert_eq!(
        version(&mut reg, "pr", 1).await.status(),
        VersionStatus::Retired
    );
    let h = history(&mut reg, "pr").await;
    let last = h.last().unwrap();
    assert_eq!(last.kind(), EventKind::VersionStatusChanged);
    assert_eq!(
        (last.version, last.actor.as_str(), last.reason.as_str()),
        (
            1,
            "evergreen-registry",
            "phase-out pr 1 -> 2: retired after the grace period of 1s"
        )
    );
    let steps: Vec<&str> = kinds(&h)
        .into_iter()
        .filter(|k| k.starts_with("PHASEOUT_"))
        .collect();
    assert_eq!(
        steps,
        ["PHASEOUT_STARTED", "PHASEOUT_STEP", "PHASEOUT_DONE"],
        "each step once, across the restart"
    );
    assert!(sb.is_running());
}

#[tokio::test]
async fn bad_phaseouts_are_refused_with_the_reason_and_nothing_is_stored() {
    let sb = Sandbox::start().await;
    let mut reg = sb.registry().await;
    model_with_versions(&mut reg, "pb", 4).await;
    for (v, status) in [(3, VersionStatus::Deprecated), (4, VersionStatus::Retired)] {
        reg.set_version_status(SetVersionStatusRequest {
            r#ref: req::version("pb", v),
            status: status as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let shape = "expected percentages of traffic on to_version, strictly increasing in (0, 100] and ending at 100, e.g. 10,25,50,100";
    let ok = || start("pb", 1, 2, &[50, 100], 60);
    let with = |f: &dyn Fn(&mut StartPhaseoutRequest)| {
        let mut r = ok();
        f(&mut r);
        r
    };
    let cases: Vec<(StartPhaseoutRequest, Code, String)> = vec![
        (
            with(&|r| r.model = "no such/model".into()),
            Code::InvalidArgument,
            "invalid model name \"no such/model\": expected 1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit".into(),
        ),
        (
            with(&|r| r.from_version = 0),
            Code::InvalidArgument,
            "from_version is required: the version to phase out (1, 2, ...)".into(),
        ),
        (
            with(&|r| r.to_version = 0),
            Code::InvalidArgument,
            "to_version is required: the version that takes over the traffic (1, 2, ...)".into(),
        ),
        (
            with(&|r| r.to_version = 1),
            Code::InvalidArgument,
            "from_version and to_version are both 1: a version cannot replace itself".into(),
        ),
        (
            with(&|r| r.steps = vec![]),
            Code::InvalidArgument,
            format!("steps is empty: {shape}"),
        ),
        (
            with(&|r| r.steps = vec![0, 100]),
            Code::InvalidArgument,
            format!("steps[0] = 0: {shape}"),
        ),
        (
            with(&|r| r.steps = vec![50, 150]),
            Code::InvalidArgument,
            format!("steps[1] = 150: {shape}"),
        ),
        (
            with(&|r| r.steps = vec![50, 25, 100]),
            Code::InvalidArgument,
            format!("steps[1] = 25 after steps[0] = 50: {shape}"),
        ),
        (
            with(&|r| r.steps = vec![10, 50]),
            Code::InvalidArgument,
            format!("steps end at 50: {shape}"),
        ),
        (
            with(&|r| r.every_seconds = 0),
            Code::InvalidArgument,
            "every_seconds = 0: expected at least 1 second between steps".into(),
        ),
        (
            with(&|r| r.retire_after_seconds = u64::MAX),
            Code::InvalidArgument,
            format!(
                "retire_after_seconds = {}: expected at most 315360000 (10 years)",
                u64::MAX
            ),
        ),
        (
            with(&|r| r.model = "nope".into()),
            Code::NotFound,
            "model \"nope\" not found".into(),
        ),
        (
            with(&|r| r.from_version = 9),
            Code::NotFound,
            "version 9 of model \"pb\" not found".into(),
        ),
        (
            with(&|r| r.to_version = 9),
            Code::NotFound,
            "version 9 of model \"pb\" not found".into(),
        ),
        (
            with(&|r| r.to_version = 3),
            Code::FailedPrecondition,
            "cannot move traffic to pb/3: it is DEPRECATED; the version taking over must be ACTIVE"
                .into(),
        ),
        (
            with(&|r| r.to_version = 4),
            Code::FailedPrecondition,
            "cannot move traffic to pb/4: it is RETIRED; the version taking over must be ACTIVE"
                .into(),
        ),
        (
            with(&|r| r.from_version = 4),
            Code::FailedPrecondition,
            "cannot phase out pb/4: it is RETIRED; only an ACTIVE or DEPRECATED version has traffic to move".into(),
        ),
    ];
    for (request, code, message) in cases {
        let what = format!("{request:?}");
        let e = reg.start_phaseout(request).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (code, message.as_str()), "{what}");
    }
    // A policy that also sends traffic elsewhere.
    reg.set_traffic_policy(SetTrafficPolicyRequest {
        model: "pb".into(),
        policy: Some(TrafficPolicy {
            weights: vec![
                VersionWeight {
                    version: 1,
                    weight: 90,
                },
                VersionWeight {
                    version: 3,
                    weight: 10,
                },
            ],
            shadow_version: 0,
        }),
        reason: String::new(),
    })
    .await
    .unwrap();
    let e = reg.start_phaseout(ok()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        "the traffic policy of \"pb\" also sends traffic to version(s) [3]; a phase-out moves traffic between two versions only: change or clear the policy first (evergreen policy clear pb)"
    );

    // Nothing was stored or changed.
    let e = reg
        .get_phaseout(GetPhaseoutRequest { model: "pb".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        e.message(),
        "model \"pb\" has no phase-out; start one with StartPhaseout (evergreen phaseout pb --from V --to W --steps 10,25,50,100 --every 10m)"
    );
    assert_eq!(weights(&mut reg, "pb").await, Some(vec![(1, 90), (3, 10)]));
    assert!(!kinds(&history(&mut reg, "pb").await)
        .iter()
        .any(|k| k.starts_with("PHASEOUT_")));
    assert_eq!(
        model(&mut reg, "pb").await.aliases.get("production"),
        Some(&1)
    );
    let e = reg
        .get_phaseout(GetPhaseoutRequest {
            model: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "model \"nope\" not found")
    );
    assert!(sb.is_running());
}

#[tokio::test]
async fn one_phaseout_per_model_and_it_can_be_paused_resumed_and_aborted() {
    let sb = Sandbox::start().await;
    let mut reg = sb.registry().await;
    model_with_versions(&mut reg, "pp", 3).await;
    let p = reg
        .start_phaseout(start("pp", 1, 2, &[10, 50, 100], 3600))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.state(), PhaseoutState::Running);
    assert_eq!(weights(&mut reg, "pp").await, Some(vec![(1, 90), (2, 10)]));

    // A second one is refused, naming the first.
    for second in [start("pp", 1, 2, &[100], 1), start("pp", 2, 3, &[100], 1)] {
        let e = reg.start_phaseout(second).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            e.message(),
            "model \"pp\" already has a phase-out in progress: pp 1 -> 2 (RUNNING, step 1/3, 10% of traffic on 2); one phase-out per model at a time: abort it first (evergreen phaseout abort pp)"
        );
    }
    // Actions that do not apply, and bad actions.
    let e = update(&mut reg, "pp", PhaseoutAction::Resume)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::FailedPrecondition,
            "cannot resume the phase-out pp 1 -> 2: it is RUNNING (resume applies to a PAUSED one)"
        )
    );
    let e = update(&mut reg, "pp", PhaseoutAction::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::InvalidArgument,
            "action is required: expected PAUSE, RESUME or ABORT"
        )
    );
    let e = reg
        .update_phaseout(UpdatePhaseoutRequest {
            model: "pp".into(),
            action: 9,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::InvalidArgument,
            "unknown action 9: expected PAUSE (1), RESUME (2) or ABORT (3)"
        )
    );

    // Pause, resume.
    let p = update(&mut reg, "pp", PhaseoutAction::Pause).await.unwrap();
    assert_eq!(
        (p.state(), p.step, p.next_step_at),
        (PhaseoutState::Paused, 1, None)
    );
    let e = update(&mut reg, "pp", PhaseoutAction::Pause)
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "cannot pause the phase-out pp 1 -> 2: it is PAUSED (pause applies to a RUNNING one)"
    );
    let p = update(&mut reg, "pp", PhaseoutAction::Resume)
        .await
        .unwrap();
    assert_eq!(p.state(), PhaseoutState::Running);
    let next = p.next_step_at.unwrap().seconds - p.updated_at.unwrap().seconds;
    assert!((3599..=3600).contains(&next), "{next}");
    assert_eq!(weights(&mut reg, "pp").await, Some(vec![(1, 90), (2, 10)]));

    // Abort: all traffic back on 1, audited with who and why.
    let p = reg
        .update_phaseout(as_actor(
            UpdatePhaseoutRequest {
                model: "pp".into(),
                action: PhaseoutAction::Abort as i32,
                reason: "not now".into(),
            },
            "bob",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.state(), PhaseoutState::Aborted);
    assert_eq!(p.reason, "aborted by bob: not now");
    assert_eq!(weights(&mut reg, "pp").await, Some(vec![(1, 100), (2, 0)]));
    let h = history(&mut reg, "pp").await;
    let tail = &h[h.len() - 4..];
    assert_eq!(
        kinds(tail),
        [
            "PHASEOUT_STARTED",
            "PHASEOUT_PAUSED",
            "PHASEOUT_RESUMED",
            "PHASEOUT_ABORTED"
        ]
    );
    assert_eq!(
        (tail[3].actor.as_str(), tail[3].reason.as_str()),
        (
            "bob",
            "phase-out pp 1 -> 2 aborted at step 1/3 (not now); all traffic back on 1"
        )
    );
    assert_eq!(
        tail[1].reason,
        "phase-out pp 1 -> 2 paused at step 1/3 (10% of traffic on 2)"
    );
    assert_eq!(
        model(&mut reg, "pp").await.aliases.get("production"),
        Some(&1),
        "aliases untouched"
    );
    let e = update(&mut reg, "pp", PhaseoutAction::Abort)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Once it has ended, another may start.
    let p = reg
        .start_phaseout(start("pp", 1, 3, &[50, 100], 3600))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.to_version, p.state()), (3, PhaseoutState::Running));
    assert_eq!(weights(&mut reg, "pp").await, Some(vec![(1, 50), (3, 50)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_monitor_holds_the_next_step_and_status_says_why() {
    // Nothing listens on port 1.
    let sb = Sandbox::builder()
        .registry(|c| c.monitor_url = "http://127.0.0.1:1".into())
        .start()
        .await;
    let mut reg = sb.registry().await;
    model_with_versions(&mut reg, "pu", 2).await;
    reg.start_phaseout(start("pu", 1, 2, &[50, 100], 1))
        .await
        .unwrap();
    let waiting = until("the step waits for the monitor", || async {
        let p = phaseout(&mut reg.clone(), "pu").await;
        (!p.waiting.is_empty()).then_some(p)
    })
    .await;
    assert!(
        waiting
            .waiting
            .starts_with("step 2/2 waits for a health check: monitor at http://127.0.0.1:1 ")
            && waiting.waiting.ends_with("; retrying every second"),
        "{}",
        waiting.waiting
    );
    // It keeps waiting: no step without a health check.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let p = phaseout(&mut reg, "pu").await;
    assert_eq!((p.state(), p.step), (PhaseoutState::Running, 1));
    assert!(!p.waiting.is_empty());
    assert_eq!(weights(&mut reg, "pu").await, Some(vec![(1, 50), (2, 50)]));
    // Abort still works, and clears the note.
    let p = update(&mut reg, "pu", PhaseoutAction::Abort).await.unwrap();
    assert_eq!(
        (p.state(), p.waiting.as_str()),
        (PhaseoutState::Aborted, "")
    );
    assert_eq!(weights(&mut reg, "pu").await, Some(vec![(1, 100), (2, 0)]));
}

// --------------------------------------------------------- the regression ---

const MODEL: &str = "pq";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_regression_of_the_new_version_halts_the_phaseout_and_returns_all_traffic() {
    let sb = Sandbox::builder()
        .trainer()
        .monitor_with(|c| {
            c.window_rows = 20;
            c.window_seconds = 3600;
        })
        .server(|_| {})
        .start()
        .await;
    let data = load();
    let v1 = train(&sb, MODEL, &dataset("breast_cancer.csv")).await;
    let dir = tempfile::tempdir().unwrap();
    let v2 = train(&sb, MODEL, &flipped_dataset(dir.path())).await;
    let mut reg = sb.registry().await;
    set_production(&mut reg, MODEL, v1).await;
    // Small windows judged on few labels; the monitor itself does nothing.
    sb.monitor()
        .await
        .set_policy(SetPolicyRequest {
            policy: Some(Policy {
                model: MODEL.into(),
                min_rows: 20,
                min_labels: 10,
                drift_breaches: Some(false),
                retrain: Some(false),
                rollback: Some(false),
                retire: Some(false),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut predictor = sb.predictor().await;
    until("the server serves v1", || async {
        let r = predictor
            .clone()
            .predict(PredictRequest {
                model: MODEL.into(),
                rows: vec![to_row(&data[0].0)],
                request_id: String::new(),
            })
            .await
            .ok()?;
        (r.into_inner().version == v1).then_some(())
    })
    .await;

    // Step 1 (half the traffic on the bad version), then held there while
    // traffic and labels arrive.
    reg.start_phaseout(start(MODEL, v1, v2, &[50, 100], 1))
        .await
        .unwrap();
    let p = update(&mut reg, MODEL, PhaseoutAction::Pause)
        .await
        .unwrap();
    assert_eq!((p.state(), p.step), (PhaseoutState::Paused, 1));
    assert_eq!(
        weights(&mut reg, MODEL).await,
        Some(vec![(v1, 50), (v2, 50)])
    );

    // Traffic by name: the policy sends about half of it to v2 (once the
    // server has loaded it). 40 of v2's answers, labeled with the truth.
    let rows = sample(&data, 0, 400);
    let mut on_v2 = Vec::new();
    for (i, (x, label)) in rows.iter().enumerate() {
        let id = format!("po-{i}");
        let r = predictor
            .predict(PredictRequest {
                model: MODEL.into(),
                rows: vec![to_row(x)],
                request_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if r.version == v2 {
            on_v2.push((id, label.clone()));
            if on_v2.len() == 40 {
                break;
            }
        }
    }
    assert_eq!(on_v2.len(), 40, "the policy sends traffic to v2");
    let mut monitor = sb.monitor().await;
    until("the monitor has v2's rows", || async {
        let r = monitor
            .clone()
            .get_report(GetReportRequest {
                model: MODEL.into(),
                version: v2,
                window: WindowKind::Long as i32,
            })
            .await
            .ok()?
            .into_inner();
        (r.drift?.rows >= 40).then_some(())
    })
    .await;
    let feedback: Vec<Feedback> = on_v2
        .iter()
        .map(|(id, label)| Feedback {
            request_id: id.clone(),
            label: label.clone(),
            ..Default::default()
        })
        .collect();
    let r = monitor
        .record_feedback(RecordFeedbackRequest { feedback })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.matched, 40);
    let breaches = until("v2's last window breaches", || async {
        let r = monitor
            .clone()
            .get_report(GetReportRequest {
                model: MODEL.into(),
                version: v2,
                window: WindowKind::Last as i32,
            })
            .await
            .ok()?
            .into_inner();
        let b = r.summary?.breaches;
        (!b.is_empty()).then_some(b)
    })
    .await;
    assert!(
        breaches.iter().any(|b| b.contains("realized accuracy")),
        "{breaches:?}"
    );

    // Resume: the check before step 2 finds the regression and halts.
    update(&mut reg, MODEL, PhaseoutAction::Resume)
        .await
        .unwrap();
    let halted = until_state(&reg, MODEL, PhaseoutState::Halted).await;
    assert_eq!(halted.step, 1, "step 2 never happened");
    assert_eq!(halted.evidence, breaches, "the monitor's breaches");
    assert!(
        halted.reason.starts_with("regression: window ") && halted.reason.contains(&breaches[0]),
        "{}",
        halted.reason
    );
    assert_eq!(
        weights(&mut reg, MODEL).await,
        Some(vec![(v1, 100), (v2, 0)]),
        "all traffic back on v1"
    );
    let m = model(&mut reg, MODEL).await;
    assert_eq!(m.aliases.get("production"), Some(&v1));
    assert_eq!(
        version(&mut reg, MODEL, v1).await.status(),
        VersionStatus::Active
    );
    // The audit trail carries the evidence.
    let h = history(&mut reg, MODEL).await;
    let last = h.last().unwrap();
    assert_eq!(last.kind(), EventKind::PhaseoutHalted);
    assert_eq!(last.actor, "evergreen-registry");
    assert!(
        last.reason.starts_with(&format!(
            "phase-out {MODEL} {v1} -> {v2} halted before step 2/2: regression: window"
        )) && last.reason.contains(&breaches[0])
            && last
                .reason
                .ends_with(&format!("; all traffic back on {v1}")),
        "{}",
        last.reason
    );
    let after: serde_json::Value = serde_json::from_str(&last.after).unwrap();
    assert_eq!(after["state"], "HALTED");
    assert_eq!(after["evidence"], serde_json::json!(breaches));
    // And the server follows: the requests that went to v2 go to v1.
    let (id, _) = &on_v2[0];
    until("the server routes everything to v1", || async {
        let r = predictor
            .clone()
            .predict(PredictRequest {
                model: MODEL.into(),
                rows: vec![to_row(&rows[0].0)],
                request_id: id.clone(),
            })
            .await
            .ok()?;
        (r.into_inner().version == v1).then_some(())
    })
    .await;
}
