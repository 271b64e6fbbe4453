#!/usr/bin/env bash
# The whole job in one command on a fresh machine (as root): build the binary, make a
# loop-device btrfs with a little data, start a local S3 server on 127.0.0.1, run a full
# backup, change data, run an incremental, restore the chain to a new subvolume, show that
# the trees match, print the metrics, and clean everything up. It first says what it
# installs when missing (Debian packages; a Python venv with moto in .test-tools/venv,
# about 350 MB) and where the binary is built ($CARGO_TARGET_DIR when set, else target/),
# and shows cargo's progress while it builds.
set -euo pipefail
cd "$(dirname "$0")/.."
unset E2E_BUCKET E2E_ENDPOINT_URL E2E_PREFIX
start=$(date +%s)
E2E_DATA_MIB=${DEMO_DATA_MIB:-24} bash contrib/e2e.sh
echo "demo finished in $(( $(date +%s) - start )) s"
