#!/bin/sh
# Builds a fuzz target with libFuzzer coverage instrumentation (the flags cargo-fuzz passes,
# without needing cargo-fuzz or nightly) and runs it for a given time.
#   fuzz/run.sh TARGET [SECONDS]     e.g. fuzz/run.sh qcow2_open 600
# Corpus: fuzz/corpus/TARGET (seeded by fuzz/make_corpus.sh when empty); crashes and
# hangs (an input running over 30 s) go to fuzz/artifacts/TARGET/. Exit status is
# libFuzzer's (non-zero on a crash).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
target=${1:?usage: fuzz/run.sh TARGET [SECONDS]}
secs=${2:-600}
corpus=$here/corpus/$target
artifacts=$here/artifacts/$target
mkdir -p "$corpus" "$artifacts"
if [ -z "$(ls -A "$corpus")" ] && [ -x "$here/make_corpus.sh" ]; then
	"$here/make_corpus.sh" "$target"
fi
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
	cargo build --release --manifest-path "$here/Cargo.toml" --bin "$target" \
	--target x86_64-unknown-linux-gnu --target-dir "$here/target"
exec "$here/target/x86_64-unknown-linux-gnu/release/$target" -max_total_time="$secs" -print_final_stats=1 \
	-artifact_prefix="$artifacts/" -rss_limit_mb=2048 -timeout=30 "$corpus"
