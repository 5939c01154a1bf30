# Thin wrappers over cargo; see README.md.

# Run the registry on embedded defaults (sled + artifacts under ./.evergreen).
run:
    cargo run --release -p evergreen-registry

# Run the trainer (job records under ./.evergreen/trainer, registry on 7400).
run-trainer:
    cargo run --release -p evergreen-trainer

# Run the prediction server (port 7402, registry on 7400).
run-server:
    cargo run --release -p evergreen-server

# The whole stack in one process on embedded defaults (ports 7400-7403,
# state under ./.evergreen) until Ctrl-C.
up:
    cargo run --release --bin evergreen -- up

# The same stack, then a model's whole life played against it, narrated; the
# stack stays up to explore (Ctrl-C stops it).
demo:
    cargo run --release --bin evergreen -- up --demo

# The demo on a throwaway stack; exit 0 when every step did what it should.
demo-check:
    cargo run --release --bin evergreen -- demo

# The whole test suite (what .ci/run runs).
test:
    cargo test --workspace

# The fuzz targets (artifact decoding, CSV ingest, V2 tensors) for CASES
# cases each instead of cargo test's few thousand.
fuzz CASES="1000000":
    EVERGREEN_FUZZ_CASES={{CASES}} cargo test --release -p evergreen-model --test artifact fuzz_
    EVERGREEN_FUZZ_CASES={{CASES}} cargo test --release -p evergreen-trainer --test fuzz_csv fuzz_
    EVERGREEN_FUZZ_CASES={{CASES}} cargo test --release -p evergreen-server --lib fuzz_

# Evergreen side by side with scikit-learn, Flask+gunicorn, MLflow, a
# Triton-style poller and Evidently, in one run: writes BENCHMARKS.md and
# bench/results.json (creates its own Python env from bench/python).
bench-compare *ARGS:
    cargo build --release --bins
    cargo run --release -p evergreen-bench -- {{ARGS}}

# The whole stack (`evergreen up`) under mixed load for SECS seconds:
# errors, latency drift and memory growth; writes bench/SOAK.md.
bench-soak SECS="600":
    cargo build --release --bins
    cargo run --release -p evergreen-bench --bin bench-soak -- --secs {{SECS}}

# Archive/restore of a 200 MiB artifact to in-process S3: MiB/s, peak memory.
bench-archive:
    cargo bench -p evergreen-registry --bench archive


fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets
