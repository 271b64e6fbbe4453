#!/usr/bin/env bash
# Interop matrix (as root; not part of CI): runs contrib/e2e.sh (full, incremental,
# restore, compare, verify, verify --deep, wrong-key rejection) against each S3 server
# that installs on this machine, each on 127.0.0.1 with signature checking on, and prints
# one markdown table row per server.
#
#   bash contrib/interop.sh [SERVER...]     SERVER: moto s3s-fs ceph garage (default: all)
#
# moto       .test-tools/venv (contrib/install-test-tools.sh), signatures on via
#            tests/it/support/moto_iam.py. Seconds.
# s3s-fs     .test-tools/s3s-fs/bin/s3s-fs, else `cargo install s3s-fs@0.14.1 --features
#            binary` (about 5 minutes). Keeps neither SSE nor classes: run with sse = "none".
# ceph       Debian's radosgw, ceph-mon, ceph-osd, ceph-mgr (apt-get), one mon, one memstore
#            OSD, beast on 127.0.0.1:7480 (contrib/testing/ceph.sh). Several minutes.
#            Refuses SSE headers over plain HTTP: sse = "none". A second row, "ceph +
#            Object Lock", runs e2e.sh with [object_lock] (GOVERNANCE, 1 day) into a
#            bucket created with Object Lock, and checks that a bucket without it is refused.
# garage     only when `garage` is on PATH or in .test-tools/garage/bin (its build takes
#            about 23 minutes: cargo install garage@2.5.0 --locked --no-default-features
#            --features bundled-libs,sqlite --root .test-tools/garage). Else "not installed".
# Logs stay in $INTEROP_DIR (/var/tmp/btrfs_to_s3-interop).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "$(id -u)" = 0 ] || { echo "contrib/interop.sh: run as root (e2e.sh mounts a loop device)" >&2; exit 1; }
servers=("$@")
[ ${#servers[@]} -gt 0 ] || servers=(moto s3s-fs ceph garage)
dir=${INTEROP_DIR:-/var/tmp/btrfs_to_s3-interop}
mkdir -p "$dir"
cargo build --release --quiet || exit 1
bin=$repo/target/release/btrfs_to_s3
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
}
trap stop_all EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 "${2:-300}"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 1; done; return 1; }

rows=()
# run_e2e NAME ENDPOINT BUCKET KEY SECRET SSE [LOCK NO_LOCK_BUCKET]: one row of the
# matrix; with LOCK (MODE:DAYS) e2e.sh backs up with [object_lock] (E2E_OBJECT_LOCK).
run_e2e() {
  local name=$1 endpoint=$2 bucket=$3 key=$4 secret=$5 sse=$6 lock=${7:-} nolock=${8:-}
  local log="$dir/${1// /-}.log" t0=$SECONDS notes
  echo "==> $name: contrib/e2e.sh against $endpoint (log: $log)"
  if env -u AWS_PROFILE -u AWS_SESSION_TOKEN AWS_ACCESS_KEY_ID="$key" AWS_SECRET_ACCESS_KEY="$secret" \
      E2E_BIN="$bin" E2E_BUCKET="$bucket" E2E_ENDPOINT_URL="$endpoint" E2E_SSE="$sse" \
      E2E_OBJECT_LOCK="$lock" E2E_NO_LOCK_BUCKET="$nolock" \
      bash contrib/e2e.sh > "$log" 2>&1; then
    local refused
    refused=$(grep -A1 'wrong secret key is refused' "$log" | tail -n 1)
    notes="sse=$sse"
    [ -n "$lock" ] && notes="$notes; [object_lock] $lock: every object locked (verify), prune --confirm deleted nothing locked${nolock:+, a bucket without Object Lock refused (exit 2)}"
    rows+=("| $name | $(server_version "$name") | pass | pass | pass | pass | pass | pass ($refused) | $notes, $((SECONDS - t0)) s |")
  else
    local at
    at=$(grep -o 'E2E FAILED at step: .*' "$log" | sed 's/E2E FAILED at step: //')
    rows+=("| $name | $(server_version "$name") | FAILED at: ${at:-see log} | | | | | | $log |")
  fi
}
server_version() {
  case $1 in
    moto) "$repo/.test-tools/venv/bin/python" -c 'import moto; print("moto", moto.__version__)' ;;
    s3s-fs) echo "s3s-fs 0.14.1" ;;
    ceph*) radosgw --version 2>/dev/null | awk '{print "ceph", $3}' ;;
    garage) garage_bin --version 2>/dev/null | head -n 1 ;;
  esac
}
garage_bin() {
  if command -v garage >/dev/null; then garage "$@"; else "$repo/.test-tools/garage/bin/garage" "$@"; fi
}

for s in "${servers[@]}"; do
  case $s in
  moto)
    moto=$(bash contrib/install-test-tools.sh | tail -n 1)
    port=$(free_port)
    INITIAL_NO_AUTH_ACTION_COUNT=inf "$moto" -H 127.0.0.1 -p "$port" > "$dir/moto-server.log" 2>&1 &
    pids+=($!)
    wait_port "$port" 60
    read -r key secret _ < <("$(dirname "$moto")/python" tests/it/support/moto_iam.py "http://127.0.0.1:$port" interop)
    run_e2e moto "http://127.0.0.1:$port" interop "$key" "$secret" AES256
    stop_all
    ;;
  s3s-fs)
    s3s=$repo/.test-tools/s3s-fs/bin/s3s-fs
    [ -x "$s3s" ] || cargo install s3s-fs@0.14.1 --features binary --root "$repo/.test-tools/s3s-fs" --quiet
    port=$(free_port)
    data=$(mktemp -d "$dir/s3s-data.XXXX")
    mkdir -p "$data/interop"
    "$s3s" --host 127.0.0.1 --port "$port" --access-key interopkey --secret-key interopsecret1234 "$data" > "$dir/s3s-server.log" 2>&1 &
    pids+=($!)
    wait_port "$port" 60
    run_e2e s3s-fs "http://127.0.0.1:$port" interop interopkey interopsecret1234 none
    stop_all
    rm -rf "$data"
    ;;
  ceph)
    bash contrib/testing/ceph.sh start "$dir/ceph" > "$dir/ceph-setup.log" 2>&1 || {
      rows+=("| ceph | | FAILED to start (see $dir/ceph-setup.log) | | | | | | |"); continue; }
    read -r key secret < "$dir/ceph/s3-keys"
    run_e2e ceph "http://127.0.0.1:7480" interop "$key" "$secret" none
    run_e2e "ceph + Object Lock" "http://127.0.0.1:7480" interop-lock "$key" "$secret" none GOVERNANCE:1 interop
    bash contrib/testing/ceph.sh stop "$dir/ceph" >> "$dir/ceph-setup.log" 2>&1
    ;;
  garage)
    if ! garage_bin --version >/dev/null 2>&1; then
      rows+=("| garage | not installed | | | | | | | see the comment at the top |")
      continue
    fi
    bash contrib/testing/garage.sh start "$dir/garage" > "$dir/garage-setup.log" 2>&1 || {
      rows+=("| garage | | FAILED to start (see $dir/garage-setup.log) | | | | | | |"); continue; }
    read -r key secret port < "$dir/garage/s3-keys"
    run_e2e garage "http://127.0.0.1:$port" interop "$key" "$secret" none
    bash contrib/testing/garage.sh stop "$dir/garage" >> "$dir/garage-setup.log" 2>&1
    ;;
  *) echo "unknown server $s (moto, s3s-fs, ceph, garage)" >&2; exit 2 ;;
  esac
done

echo
echo "| server | version | full | incremental | restore + diff | verify | verify --deep | wrong key refused | notes |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
