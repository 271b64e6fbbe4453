#!/usr/bin/env bash
# End-to-end check (as root): full backup -> change data -> incremental -> restore ->
# compare -> verify (HEAD of every chunk) -> verify --deep (every byte read back and
# hashed) -> a wrong secret key is refused, on a scratch loop-device btrfs, against any S3
# endpoint, always with the STANDARD storage class. Prints "E2E OK" or
# "E2E FAILED at step: ...". contrib/interop.sh runs it against each local S3 server.
#
#   E2E_BUCKET        bucket; unset: a local moto server on 127.0.0.1 is started and used
#   E2E_REGION        region (us-east-1)
#   E2E_PREFIX        test prefix (btrfs_to_s3-e2e/<host>-<UTC time>); artifacts stay there
#   E2E_ENDPOINT_URL  optional S3-compatible endpoint
#   E2E_CLEANUP=1     delete the prefix afterwards (aws CLI, s3:DeleteObject)
#   E2E_DATA_MIB      size of the large test file (24)
#   E2E_SSE           s3.sse (AES256; "none" for servers that refuse or drop SSE headers)
#   E2E_CHECKSUM      s3.checksum (crc32c; sha256; none)
#   E2E_BIN           binary to test (default: build target/release/btrfs_to_s3)
#   E2E_OBJECT_LOCK   MODE:DAYS (e.g. GOVERNANCE:1): back up with [object_lock] into
#                     E2E_BUCKET, which must have Object Lock enabled; adds the steps:
#                     --dry-run finds the lock, verify checks every object's lock, and
#                     after a new full, prune --confirm deletes nothing locked
#   E2E_NO_LOCK_BUCKET with E2E_OBJECT_LOCK: a bucket on the same endpoint without Object
#                     Lock; a backup into it must be refused (exit 2) before any upload
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN / AWS_PROFILE: credentials
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

step_name=setup
fail() { echo "E2E FAILED at step: $step_name" >&2; }
trap 'fail' ERR
step() { step_name=$1; printf '\n==> %s\n' "$1"; }

[ "$(id -u)" = 0 ] || { echo "contrib/e2e.sh: run as root (it mounts a loop device)" >&2; exit 1; }

work=$(mktemp -d /tmp/btrfs_to_s3-e2e.XXXXXX)
mnt=$work/mnt
moto_pid=
cleanup() {
  set +e
  if mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
  losetup -j "$work/fs.img" -O NAME -n 2>/dev/null | xargs -r -n1 losetup -d
  [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
  rm -rf "$work"
}
trap 'cleanup' EXIT

step "build"
if [ -n "${E2E_BIN:-}" ]; then
  bin=$E2E_BIN
else
  cargo build --release --quiet
  bin=$repo/target/release/btrfs_to_s3
fi
"$bin" --version

step "make a btrfs filesystem on a loop device"
command -v mkfs.btrfs >/dev/null || bash contrib/install-test-tools.sh >/dev/null
truncate -s 1G "$work/fs.img"
mkfs.btrfs -q -f "$work/fs.img" >/dev/null 2>&1
mkdir -p "$mnt"
mount -o loop "$work/fs.img" "$mnt"
btrfs -q subvolume create "$mnt/demo"
{ openssl enc -aes-128-ctr -pass pass:e2e -nosalt -pbkdf2 < /dev/zero 2>/dev/null || true; } | head -c "$(( ${E2E_DATA_MIB:-24} * 1024 * 1024 ))" > "$mnt/demo/large.bin"
mkdir -p "$mnt/demo/docs"
for i in $(seq 1 20); do echo "document $i" > "$mnt/demo/docs/doc$i.txt"; done
ln -s docs/doc1.txt "$mnt/demo/link"
ln "$mnt/demo/docs/doc2.txt" "$mnt/demo/hardlink"
du -sh "$mnt/demo"

bucket=${E2E_BUCKET:-}
region=${E2E_REGION:-us-east-1}
prefix=${E2E_PREFIX:-btrfs_to_s3-e2e/$(hostname)-$(date -u +%Y%m%dT%H%M%SZ)}
endpoint=${E2E_ENDPOINT_URL:-}
if [ -z "$bucket" ]; then
  step "start a local S3 server (moto) on 127.0.0.1"
  # The one contrib/test.sh installed (it exports its path), else install one.
  if [ -n "${BTRFS_TO_S3_MOTO_SERVER:-}" ] && [ -x "$BTRFS_TO_S3_MOTO_SERVER" ]; then
    moto=$BTRFS_TO_S3_MOTO_SERVER
  else
    moto=$(bash contrib/install-test-tools.sh | tail -n 1)
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # Signature checking on: an IAM user and key made through the server, then reset-auth
  # (tests/it/support/moto_iam.py).
  INITIAL_NO_AUTH_ACTION_COUNT=inf "$moto" -H 127.0.0.1 -p "$port" > "$work/moto.log" 2>&1 &
  moto_pid=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/moto-api/" && break; sleep 0.1; done
  bucket=e2e-bucket
  endpoint=http://127.0.0.1:$port
  read -r AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY _ < <("$(dirname "$moto")/python" tests/it/support/moto_iam.py "$endpoint" "$bucket")
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  unset AWS_SESSION_TOKEN AWS_PROFILE
fi
echo "bucket=$bucket region=$region prefix=$prefix endpoint=${endpoint:-AWS}"

cfg=$work/config.toml
cat > "$cfg" <<TOML
[global]
state_path = "$work/state.json"
lock_path = "$work/btrfs_to_s3.lock"
[schedule]
full_every_days = 30
incremental_every_days = 1
[snapshots]
base_dir = "$mnt/snapshots"
retain = 2
[subvolumes]
paths = ["$mnt/demo"]
[s3]
bucket = "$bucket"
region = "$region"
prefix = "$prefix"
storage_class_chunks = "STANDARD"
storage_class_manifest = "STANDARD"
chunk_size_bytes = 16777216
part_size_bytes = 5242880
concurrency = 4
sse = "${E2E_SSE:-AES256}"
checksum = "${E2E_CHECKSUM:-crc32c}"
${endpoint:+endpoint_url = \"$endpoint\"}
[restore]
verify_mode = "full"
TOML
lock=${E2E_OBJECT_LOCK:-}
if [ -n "$lock" ]; then
  printf '[object_lock]\nmode = "%s"\nretain_days = %s\n' "${lock%%:*}" "${lock##*:}" >> "$cfg"

  if [ -n "${E2E_NO_LOCK_BUCKET:-}" ]; then
    step "a bucket without Object Lock is refused before any upload (exit 2)"
    sed "s/^bucket = .*/bucket = \"$E2E_NO_LOCK_BUCKET\"/" "$cfg" > "$work/nolock.toml"
    code=0
    "$bin" backup --config "$work/nolock.toml" > "$work/nolock.log" 2>&1 || code=$?
    grep -E 'Object Lock' "$work/nolock.log" | tail -n 1
    [ "$code" = 2 ]
    grep -q 'nothing was uploaded' "$work/nolock.log"
  fi

  step "backup --dry-run finds Object Lock on the bucket"
  "$bin" backup --config "$cfg" --dry-run 2>&1 | tee "$work/dry.log" | grep -i 'object lock'
fi

step "full backup"
"$bin" backup --config "$cfg" 2>&1 | tee "$work/full.log" | grep -E 'event=(plan|backup_metrics|backup_summary)|ERROR|error:'
grep -q 'action=full' "$work/full.log"

step "change data"
printf 'changed in the middle' | dd of="$mnt/demo/large.bin" bs=1 seek=$((5 * 1024 * 1024)) conv=notrunc status=none
echo "new file" > "$mnt/demo/docs/new.txt"
rm "$mnt/demo/docs/doc3.txt"
mv "$mnt/demo/docs/doc4.txt" "$mnt/demo/docs/renamed.txt"
sleep 1

step "incremental backup"
"$bin" backup --config "$cfg" --once 2>&1 | tee "$work/inc.log" | grep -E 'event=(plan|backup_metrics|backup_summary)|ERROR|error:'
grep -q 'action=incremental' "$work/inc.log"

step "restore the chain (full + incremental) into a new subvolume"
"$bin" restore --config "$cfg" --subvolume demo --target "$mnt/restored" 2>&1 | tee "$work/restore.log" | grep -E 'event=(restore_chain|verify_ok|restore_metrics)'

step "compare the restored tree with the source snapshot (diff -r)"
snap=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["subvolumes"]["demo"]["last_snapshot"])' "$work/state.json")
diff -r --no-dereference "$snap" "$mnt/restored"
cmp "$mnt/demo/large.bin" "$mnt/restored/large.bin"
echo "restored tree matches $snap"

step "verify: every chunk present, of its size, class and encryption"
"$bin" verify --config "$cfg" 2>&1 | tail -n 3
if [ -n "$lock" ]; then
  step "verify with [object_lock]: every manifest and chunk locked as long as the chain needs"
  "$bin" verify --config "$cfg" > "$work/verify-lock.log" 2>&1
  grep 'Object Lock:' "$work/verify-lock.log"
  grep -q 'Object Lock: all [0-9]* objects locked until at least' "$work/verify-lock.log"
fi

step "verify --deep: every chunk read back and its SHA-256 checked"
"$bin" verify --config "$cfg" --deep 2>&1 | tail -n 3

step "a wrong secret key is refused by the server"
if AWS_SECRET_ACCESS_KEY="wrong-$RANDOM$RANDOM" "$bin" list --config "$cfg" > "$work/wrong.log" 2>&1; then
  echo "the server accepted a request signed with a wrong secret key" >&2
  false
fi
grep -Eo 'SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied|Forbidden' "$work/wrong.log" | head -n 1

if [ -n "$lock" ]; then
  step "a new full, then prune --confirm deletes nothing locked"
  "$bin" backup --config "$cfg" --full 2>&1 | grep -E 'event=(plan|object_lock_chain)|ERROR|error:'
  "$bin" prune --config "$cfg" --confirm 2>&1 | tee "$work/prune.log" | grep -E 'locked until|deleted|kept'
  grep -q 'deleted 0 objects' "$work/prune.log"
  grep -q 'locked until' "$work/prune.log"
fi

if [ "${E2E_CLEANUP:-0}" = 1 ] && [ -z "$moto_pid" ]; then
  step "delete the test prefix"
  aws s3 rm --recursive ${endpoint:+--endpoint-url "$endpoint"} "s3://$bucket/$prefix/"
elif [ -z "$moto_pid" ]; then
  echo "artifacts left under s3://$bucket/$prefix/ (set E2E_CLEANUP=1 to delete them)"
fi
trap - ERR
echo
echo "E2E OK"
