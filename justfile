# Thin wrappers over cargo; see README.md.

# Run the registry on embedded defaults (sled + artifacts under ./.evergreen).
run:
    cargo run --release -p evergreen-registry

# Start a throwaway registry and walk a model through the lifecycle with the CLI.
demo:
    scripts/demo.sh

# The whole test suite (what .ci/run runs).
test:
    cargo test --workspace

# Registry benchmark: prints a table with ratios to in-run baselines and MLflow.
bench:
    cargo bench -p evergreen-registry --bench registry

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets
