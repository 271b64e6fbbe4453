#!/usr/bin/env bash
# The one command that runs every test on a fresh Debian machine, as root:
#   bash contrib/test.sh
# It installs what is missing (btrfs-progs, a Python venv with moto[server]==5.1.22 in
# .test-tools/venv, systemd for `systemd-analyze verify`), then runs cargo fmt --check,
# cargo clippy -D warnings, the module-layer and gateway check, and every unit and integration test.
# Nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "contrib/test.sh: the integration tests mount loop devices: run as root (sudo bash contrib/test.sh)" >&2
  exit 1
fi

moto=$(bash contrib/install-test-tools.sh | tail -n 1)
export BTRFS_TO_S3_MOTO_SERVER="$moto"
unset BTRFS_TO_S3_SKIP_ROOT_TESTS

say "cargo fmt --check"
cargo fmt --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
say "no async runtime in the normal dependency tree"
if cargo tree -e normal | grep -Eq '(^|[^a-z_])(tokio|async-std|smol|futures-executor) v'; then
  echo "an async runtime is in cargo tree -e normal: the design is synchronous threads" >&2
  exit 1
fi
say "module layers: no upward import, no cycle, the store only in repo/ (contrib/check-layers.py)"
python3 contrib/check-layers.py --self-test
python3 contrib/check-layers.py
say "cargo test (unit and integration)"
cargo test --all-targets -- --test-threads="${TEST_THREADS:-2}"
