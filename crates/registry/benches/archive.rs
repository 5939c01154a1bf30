//! Archive / restore benchmark (issue #6): a 200 MiB artifact archived to a
//! real S3-compatible server (s3s-fs over HTTP, in this process) and
//! restored, through the registry's gRPC API. Prints throughput and peak
//! resident-memory growth next to a baseline run in the same invocation:
//! a plain file copy of the same bytes on the same disk.
//!
//!   cargo bench -p evergreen-registry --bench archive
//!
//! Env: EVERGREEN_BENCH_MIB (artifact size, default 200).

use std::time::Instant;

use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    register_version_request::Part, version_ref::Selector, ArchiveRequest, CreateModelRequest,
    RegisterVersionRequest, RestoreRequest, SetVersionStatusRequest, VersionHeader, VersionRef,
    VersionStatus,
};
use evergreen_registry::RegistryConfig;
use evergreen_s3::testing::TestS3;

/// Peak resident set (VmHWM) in MiB.
fn peak_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets the peak to the current RSS (Linux ≥ 4.0).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn chunk(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| {
            ((i * len + j) as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(7) as u8
        })
        .collect()
}

fn vref(v: u64) -> Option<VersionRef> {
    Some(VersionRef {
        model: "big".into(),
        selector: Some(Selector::Version(v)),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib: usize = std::env::var("EVERGREEN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let s3 = TestS3::start(&dir.path().join("s3")).await;
    s3.create_bucket("archive");
    let config = RegistryConfig {
        metrics_listen: String::new(),
        data_dir: dir.path().join("registry"),
        max_artifact_bytes: 1 << 40,
        monitor_url: String::new(),
        archive: evergreen_registry::config::ArchiveConfig {
            s3: s3.config("archive"),
            ..Default::default()
        },
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(evergreen_registry::run(
        config,
        listener,
        std::future::pending(),
    ));
    let mut c = RegistryClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    c.create_model(CreateModelRequest {
        name: "big".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let size = mib << 20;
    let piece = 1 << 20;
    let msgs = std::iter::once(RegisterVersionRequest {
        part: Some(Part::Header(VersionHeader {
            model: "big".into(),
            ..Default::default()
        })),
    })
    .chain((0..mib).map(move |i| RegisterVersionRequest {
        part: Some(Part::Chunk(chunk(i, piece))),
    }));
    let v = c
        .register_version(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner()
        .version;
    c.set_version_status(SetVersionStatusRequest {
        r#ref: vref(v),
        status: VersionStatus::Retired as i32,
        ..Default::default()
    })
    .await
    .unwrap();

    // Baseline: copy the stored artifact file on the same disk.
    let stored = walk(&dir.path().join("registry/artifacts/sha256"));
    let t = Instant::now();
    std::fs::copy(&stored, dir.path().join("copy")).unwrap();
    let copy = t.elapsed();
    let _ = std::fs::remove_file(dir.path().join("copy"));

    reset_peak();
    let base = peak_mib();
    let t = Instant::now();
    c.archive(ArchiveRequest {
        r#ref: vref(v),
        reason: "bench".into(),
        include_data: false,
    })
    .await
    .unwrap();
    let archive = t.elapsed();
    let archive_peak = peak_mib() - base;

    reset_peak();
    let base = peak_mib();
    let t = Instant::now();
    c.restore(RestoreRequest {
        r#ref: vref(v),
        reason: "bench".into(),
        activate: false,
    })
    .await
    .unwrap();
    let restore = t.elapsed();
    let restore_peak = peak_mib() - base;

    let mbps = |d: std::time::Duration| size as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!(
        "artifact: {mib} MiB; S3: s3s-fs over HTTP on loopback (same process); part size 5 MiB"
    );
    println!("archive = read the local artifact and check it, multipart upload, read back and verify sha256, mark ARCHIVED, free; restore = download, verify, re-install, mark RETIRED");
    println!();
    println!("| operation | time | MiB/s | vs file copy | peak RSS growth |");
    println!("|---|---|---|---|---|");
    println!(
        "| file copy (baseline) | {:.2} s | {:.0} | 1.00 | — |",
        copy.as_secs_f64(),
        mbps(copy)
    );
    println!(
        "| Archive | {:.2} s | {:.0} | {:.2} | {:.1} MiB |",
        archive.as_secs_f64(),
        mbps(archive),
        mbps(archive) / mbps(copy),
        archive_peak
    );
    println!(
        "| Restore | {:.2} s | {:.0} | {:.2} | {:.1} MiB |",
        restore.as_secs_f64(),
        mbps(restore),
        mbps(restore) / mbps(copy),
        restore_peak
    );
}

fn walk(dir: &std::path::Path) -> std::path::PathBuf {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            return walk(&p);
        }
        return p;
    }
    panic!("no artifact file under {}", dir.display())
}
