#!/usr/bin/env bash
# Benchmark (as root; not part of CI): one table from one run comparing
#   btrfs_to_s3 backup, btrfs send > /dev/null, btrfs send | aws s3 cp -, btrfs send | rclone rcat,
#   and btrfs_to_s3 restore (of the default and of the chunked backup),
# on a loop-device btrfs holding GIB GiB (default 2) of mixed data, uploading to a local
# s3s-fs 0.14.1 (or Garage: BENCH_SERVER below) on 127.0.0.1. Columns: MB/s of the send stream, CPU seconds (user+sys, the
# btrfs send child included) per GiB of stream, peak RSS, seconds, then the server's CPU
# seconds per GiB and the machine's busy and iowait shares over the row (the server shares
# the two CPUs: a row near 100 % busy is bound by CPU, whoever spends it). A 200 MiB subvolume is backed up
# too, to show that peak RSS does not grow with the stream. The big stream is also backed up
# with CHUNK_MIB chunks instead of the contract's 200 GiB default, to show what overlapping
# one chunk's CompleteMultipartUpload with the next chunk's parts buys and costs (chunks
# after the first need a second SHA-256, for the stream hash, computed in the same pass).
# A second table compares the two S3 transports on the same parts: rust-s3's own request
# path and ours (SigV4 from rust-s3's helpers, bytes over ureq), see
# examples/transport_bench.rs, directly and through examples/link_emulator as a home
# uplink (LINK_RATE bytes/s, default 25000000; LINK_RTT_MS, default 40 ms added round trip).
#
# A third table backs up compressible data (logs, a packed text tree, random bytes) from a
# compress=zstd btrfs with send_compressed_data = true, against btrfs send (protocol 1) |
# aws s3 cp -, and compares the bytes uploaded with the data's on-disk size (compsize).
# The main rows keep protocol 1 (SEND_COMPRESSED=false) so they compare like for like.
#
# A fourth table measures what a resume costs before it uses the link again: a full of
# RESUME_GIB + 0.25 GiB of random data with the default 200 GiB chunk is cut by a kill -9
# once RESUME_GIB GiB of its parts are stored, and the next run re-runs btrfs send and
# re-hashes that stored prefix before its first new byte (event=resume_first_new_byte);
# a second case is cut after everything is stored (kill between the manifest and the
# pointer), whose resume is all verification and compares builds (BENCH_BIN) that lack
# the event. Both start with dropped caches; `btrfs send > /dev/null` of the same snapshot
# is the disk's floor. These rows upload to moto (contrib/install-test-tools.sh installs
# it; MOTO_SERVER overrides), not s3s-fs: s3s-fs 0.14.1 answers ListParts without the
# parts' sizes and ETags, so an open upload cannot be checked against it for a resume.
#
# A fifth table measures the upload and download rate caps (s3.max_upload_rate and
# --limit-download): the 200 MiB subvolume backed up with --limit-upload 10MiB and 50MiB,
# and restored with --limit-download of the same, through examples/link_emulator with no
# cap of its own, whose byte counters are sampled every 50 ms: the rate achieved on the
# wire between 1 % and 99 % of the bytes, and the largest deviation from the cap over any
# 1 s and 10 s window of that span. On s3s-fs when it is installed, else on moto.
#
#   bash contrib/bench.sh [GIB]
# Env: BENCH_DIR (/var/tmp/btrfs_to_s3-bench), CONCURRENCY (4), PART_MIB (16),
#      CHUNK_MIB (512), ROUNDS (1): with ROUNDS=N the aws CLI row and both big backups are
#      measured N times, interleaved, and the ratio to the aws CLI is printed per round
#      (this shared machine varies by 10-20 % from run to run), the encrypted backup's
#      too (from round 2 on right after the unencrypted one; in round 1 after the restore
#      rows), with its CPU s/GiB over the unencrypted row's; BENCH_BIN: the binary to
#      measure (default: this tree's release build), for before/after comparisons;
#      BENCH_ENCRYPTED (1): 0 leaves the encrypted rows out (for a BENCH_BIN without them);
#      BENCH_RESUME (1): 0 leaves the resume table out, "only" measures nothing else;
#      RESUME_GIB (2): the stored prefix;
#      BENCH_CAP (1): 0 leaves the rate cap table out, "only" measures nothing else (and
#      then does not install s3s-fs: moto serves when s3s-fs is not there); CAP_MIBS
#      ("10 50 off"): the caps in MiB/s, "off" for the uncapped run (the setup's ceiling).
#      BENCH_EXTRA (1): 0 leaves out the rclone, 200 MiB, chunked, compressible, transport
#      and link rows (the aws CLI, backup and restore rows stay);
#      BENCH_RESTORE_ROUNDS (ROUNDS): rounds of the restore table below;
#      BENCH_SCALE_GIB (unset): the scale rows below, of that many GiB (8 to 10 shows it).
#
# A restore table (issue 26): the big backup's chunks, in order, through
# `aws s3 cp - | btrfs receive`, alternating with btrfs_to_s3 restore with
# --verify full (the default; the source snapshot is here, so every file is hashed on
# both sides) and --verify none; each row starts with dropped caches; the ratios to the
# aws CLI pipeline per round and their medians.
#
# Scale rows (BENCH_SCALE_GIB=N): a backup and a restore (--verify none) of N GiB of random
# data, each with the MB/s of every GiB from start to end (from progress reports every
# second, stamped as they arrive) and peak RSS, to show both stay flat.
#
# BENCH_SERVER=garage runs the upload rows (the aws CLI, the backup, the encrypted backup,
# ROUNDS of them) and the backups' restores against a single-node Garage 2.5.0 instead of
# s3s-fs, each upload row on a freshly started, empty server (Garage stores a block once
# per content hash: without the fresh start, a plain row that re-uploads bytes already
# stored would skip its writes while an encrypted row, new ciphertext every run, could
# not). Why a second server: s3s-fs answers CompleteMultipartUpload by copying every
# part into the object on one thread (about 3 s per GiB here, the same for both tools, with
# the other CPU idle), which pulls every ratio towards 1; Garage, like S3, completes
# by reference, so the ratio shows what the clients spend. Garage's own CPU (MD5,
# BLAKE2 and the block writes of every part; compression off) still shares the two CPUs.
# GARAGE: its binary (default .test-tools/garage/bin/garage, installed when missing:
# cargo install garage@2.5.0, 7-25 minutes). The other tables need s3s-fs (restore, scale)
# or moto (resume, caps): BENCH_SERVER=garage leaves them out.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
gib=${1:-2}
conc=${CONCURRENCY:-4}
part_mib=${PART_MIB:-16}
chunk_mib=${CHUNK_MIB:-512}
rounds=${ROUNDS:-1}
dir=${BENCH_DIR:-/var/tmp/btrfs_to_s3-bench}
resume=${BENCH_RESUME:-1}
resume_gib=${RESUME_GIB:-2}
cap=${BENCH_CAP:-1}
extra=${BENCH_EXTRA:-1}
rrounds=${BENCH_RESTORE_ROUNDS:-$rounds}
scale_gib=${BENCH_SCALE_GIB:-0}
server=${BENCH_SERVER:-s3s-fs}
case "$server" in
  s3s-fs) ;;
  garage) extra=0; resume=0; cap=0; scale_gib=0 ;;
  *) echo "bench.sh: BENCH_SERVER=$server: not a server this script runs; use s3s-fs (the default) or garage" >&2; exit 2 ;;
esac
main=1
[ "$resume" = only ] && main=0
if [ "$cap" = only ]; then main=0; resume=0; fi
[ "$resume" = only ] && cap=0

[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root" >&2; exit 1; }
need=()
[ -x /usr/bin/time ] || need+=(time)
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
if [ "$main" = 1 ]; then
  if [ "$extra" = 1 ]; then
    command -v rclone >/dev/null || need+=(rclone)
    command -v compsize >/dev/null || need+=(btrfs-compsize)
  fi
  command -v age-keygen >/dev/null || need+=(age)
fi
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
if [ "$main" = 1 ] && ! command -v aws >/dev/null; then
  python3 -m venv .test-tools/awscli && .test-tools/awscli/bin/pip install -q awscli
  PATH=$repo/.test-tools/awscli/bin:$PATH
fi
s3s=${S3S_FS:-$repo/.test-tools/s3s-fs/bin/s3s-fs}
garage=${GARAGE:-$repo/.test-tools/garage/bin/garage}
if [ "$server" = garage ] && [ ! -x "$garage" ]; then
  echo "==> installing Garage 2.5.0 (7-25 minutes)"
  cargo install garage@2.5.0 --locked --no-default-features --features bundled-libs,sqlite --root "$repo/.test-tools/garage" --quiet
fi
if [ "$server" = s3s-fs ] && [ ! -x "$s3s" ] && [ "$cap" != only ]; then
  echo "==> installing s3s-fs 0.14.1 (about 5 minutes)"
  cargo install s3s-fs@0.14.1 --features binary --root "$repo/.test-tools/s3s-fs" --quiet
fi
if [ "$main" = 1 ]; then
  cargo build --release --quiet --bin btrfs_to_s3 --example transport_bench --example link_emulator
elif [ "$cap" != 0 ]; then
  cargo build --release --quiet --bin btrfs_to_s3 --example link_emulator
else
  cargo build --release --quiet --bin btrfs_to_s3
fi
# BENCH_BIN measures another build (say, an earlier commit's) in the same rows.
bin=${BENCH_BIN:-$repo/target/release/btrfs_to_s3}

mnt=$dir/mnt
s3pid=
linkpid=
motopid=
samplerpid=
cleanup() {
  set +e
  [ -n "$samplerpid" ] && kill "$samplerpid" 2>/dev/null && wait "$samplerpid" 2>/dev/null
  [ -n "$linkpid" ] && kill "$linkpid" 2>/dev/null && wait "$linkpid" 2>/dev/null
  [ -n "$s3pid" ] && kill "$s3pid" 2>/dev/null && wait "$s3pid" 2>/dev/null
  [ -n "$motopid" ] && kill "$motopid" 2>/dev/null && wait "$motopid" 2>/dev/null
  mountpoint -q "$mnt" && { umount "$mnt" || umount -l "$mnt"; }
  mountpoint -q "$dir/zmnt" && { umount "$dir/zmnt" || umount -l "$dir/zmnt"; }
  losetup -j "$dir/fs.img" -O NAME -n 2>/dev/null | xargs -r -n1 losetup -d
  losetup -j "$dir/zfs.img" -O NAME -n 2>/dev/null | xargs -r -n1 losetup -d
  rm -rf "$dir"
}
trap cleanup EXIT
cleanup
mkdir -p "$mnt" "$dir/s3data/bench"

echo "==> building a ${gib} GiB btrfs with mixed data"
truncate -s "$(( gib * 3 + resume_gib + 3 + scale_gib * 2 ))G" "$dir/fs.img"
mkfs.btrfs -q -f "$dir/fs.img" >/dev/null 2>&1
mount -o loop "$dir/fs.img" "$mnt"
rnd() { { openssl enc -aes-128-ctr -pass "pass:$1" -nosalt -pbkdf2 < /dev/zero 2>/dev/null || true; } | head -c "$2"; }
btrfs -q subvolume create "$mnt/big"
[ "$main" = 1 ] || gib=0
total=$(( gib * 1024 * 1024 * 1024 ))
# 70% large random files, 20% compressible text, 10% many small files.
rnd big1 $(( total * 35 / 100 )) > "$mnt/big/random1.bin"
rnd big2 $(( total * 35 / 100 )) > "$mnt/big/random2.bin"
yes "btrfs_to_s3 benchmark line of compressible text" | head -c $(( total * 20 / 100 )) > "$mnt/big/text.log"
mkdir -p "$mnt/big/small"
rnd small $(( total * 10 / 100 )) | split -b 64k - "$mnt/big/small/f"
btrfs -q subvolume create "$mnt/small"
{ [ "$main" = 1 ] || [ "$cap" != 0 ]; } && rnd s200 $(( 200 * 1024 * 1024 )) > "$mnt/small/random.bin"
btrfs -q subvolume create "$mnt/resume"
[ "$resume" != 0 ] && rnd resume $(( (resume_gib * 1024 + 256) * 1024 * 1024 )) > "$mnt/resume/random.bin"
if [ "$scale_gib" -gt 0 ]; then
  btrfs -q subvolume create "$mnt/scale"
  rnd scale $(( scale_gib * 1024 * 1024 * 1024 )) > "$mnt/scale/random.bin"
fi
sync

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
# Garage wants a key id of 8 characters or more and a secret of 16 or more.
akey=benchkey01 skey=benchsecret0123456789
export AWS_ACCESS_KEY_ID=$akey AWS_SECRET_ACCESS_KEY=$skey AWS_DEFAULT_REGION=us-east-1
# fresh_server: in garage mode, stops the server, removes its data and starts an empty
# one on the same port (nothing in s3s-fs mode: its rows keep one server, as before).
fresh_server() {
  [ "$server" = garage ] || return 0
  local gd=$dir/garage g rpc
  rpc=$(free_port)
  if [ -n "$s3pid" ]; then kill "$s3pid" 2>/dev/null; wait "$s3pid" 2>/dev/null || true; s3pid=; fi
  # What the last server warned of (a stalled row is explained here, not lost with it).
  [ -f "$gd/garage.log" ] && sed 's/\x1b\[[0-9;]*m//g' "$gd/garage.log" | grep -E ' (WARN|ERROR) ' | head -n 5 | sed 's/^/garage: /' >&2 || true
  rm -rf "$gd"; mkdir -p "$gd/meta" "$gd/data"
  cat > "$gd/garage.toml" <<TOML
metadata_dir = "$gd/meta"
data_dir = "$gd/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$port"
[admin]
api_bind_addr = "127.0.0.1:$(free_port)"
TOML
  chmod 600 "$gd/garage.toml"
  g() { "$garage" -c "$gd/garage.toml" "$@"; }
  "$garage" -c "$gd/garage.toml" server > "$gd/garage.log" 2>&1 &
  s3pid=$!
  for _ in $(seq 1 100); do g status > /dev/null 2>&1 && break; sleep 0.2; done
  g layout assign -z dc1 -c 20G "$(g node id -q | cut -d@ -f1)" > /dev/null
  g layout apply --version 1 > /dev/null
  g key import --yes -n bench "$akey" "$skey" > /dev/null
  g bucket create bench > /dev/null
  g bucket allow --read --write --owner bench --key bench > /dev/null
  for _ in $(seq 1 100); do aws --endpoint-url "http://127.0.0.1:$port" s3 ls s3://bench > /dev/null 2>&1 && return 0; sleep 0.2; done
  echo "bench.sh: Garage did not start; see $gd/garage.log" >&2; exit 1
}
if [ "$server" = garage ]; then
  fresh_server
elif [ -x "$s3s" ]; then
"$s3s" --host 127.0.0.1 --port "$port" --access-key "$akey" --secret-key "$skey" "$dir/s3data" > "$dir/s3s.log" 2>&1 &
s3pid=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
fi
endpoint=http://127.0.0.1:$port

cfg() { # $1 = subvolume, $2 = state file, $3 = config name, $4 = extra [s3] line
  cat > "$dir/${3:-$1}.toml" <<TOML
[global]
state_path = "$dir/$2"
lock_path = "$dir/lock"
[snapshots]
base_dir = "$mnt/snapshots"
[subvolumes]
paths = ["$mnt/$1"]
[s3]
bucket = "bench"
region = "us-east-1"
prefix = "bench-${3:-$1}"
endpoint_url = "$endpoint"
storage_class_chunks = "STANDARD"
concurrency = $conc
send_compressed_data = ${SEND_COMPRESSED:-false}
part_size_bytes = $(( part_mib * 1024 * 1024 ))
${4:-}
[restore]
verify_mode = "none"
TOML
}
cfg big state-big.json
cfg small state-small.json
cfg big state-chunked.json chunked "chunk_size_bytes = $(( chunk_mib * 1024 * 1024 ))"
# The same backup encrypted to an age recipient (issue 23): CPU within +0.5 s/GiB of the
# unencrypted row is the target.
rm -f "$dir/age-key.txt"; age-keygen -o "$dir/age-key.txt" 2>/dev/null
cfg big state-enc.json enc
printf '[encryption]\nrecipients = ["%s"]\nidentity_files = ["%s"]\n' \
  "$(age-keygen -y "$dir/age-key.txt")" "$dir/age-key.txt" >> "$dir/enc.toml"

# cpu_snap: the machine's jiffies (all, idle, iowait) from /proc/stat and the s3s-fs
# server's (user+system, all its threads), for the columns that show whether a row is
# bound by the two CPUs it shares with the server, by the disk, or by neither.
cpu_snap() {
  local _c u n s i w q sq st sv=0
  read -r _c u n s i w q sq st _ < /proc/stat
  [ -n "$s3pid" ] && [ -r "/proc/$s3pid/stat" ] && sv=$(awk '{print $14 + $15}' "/proc/$s3pid/stat")
  echo "$(( u + n + s + i + w + q + sq + st )) $i $w $sv"
}
# measure NAME BYTES CMD...: runs CMD under /usr/bin/time, prints a table row: MB/s, CPU
# s/GiB of CMD and its children, peak RSS, seconds, then the server's CPU s/GiB and the
# machine's busy and iowait shares over the run (100 % busy: CPU-bound on this machine).
rows=()
measure() {
  local name=$1 bytes=$2; shift 2
  sync; [ "${warm:-0}" = 1 ] || echo 3 > /proc/sys/vm/drop_caches
  local before after
  before=$(cpu_snap)
  /usr/bin/time -f '%e %U %S %M' -o "$dir/time" "$@" > "$dir/out.log" 2>&1 || { cat "$dir/out.log"; echo "$name failed" >&2; exit 1; }
  after=$(cpu_snap)
  read -r el us sy rss < "$dir/time"
  rows+=("$(python3 - "$name" "$bytes" "$el" "$us" "$sy" "$rss" "$dir/out.log" "$before" "$after" "${s3pid:-}" <<'PY'
import os, re, sys
name, b, el, us, sy, rss = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:7])
# "log": the stream size is the total_bytes btrfs_to_s3 logged.
b = int(re.search(r"total_bytes=(\d+)", open(sys.argv[7]).read()).group(1)) if b == "log" else int(b)
gib = b / 2**30
t0, i0, w0, s0 = map(int, sys.argv[8].split())
t1, i1, w1, s1 = map(int, sys.argv[9].split())
dt = max(t1 - t0, 1)
hz = os.sysconf("SC_CLK_TCK")
server = f"{(s1 - s0) / hz / gib:6.2f}" if sys.argv[10] else "     -"
busy = 100 * (dt - (i1 - i0) - (w1 - w0)) / dt
print(f"| {name} | {b/1e6/el:8.1f} | {(us+sy)/gib:6.2f} | {rss/1024:8.1f} | {el:7.1f} | {server} | {busy:5.1f} | {100 * (w1 - w0) / dt:5.1f} |")
PY
)")
}

# last_mbps: the MB/s column of the last row measured (counted from the end: a row's name
# may hold a "|").
last_mbps() { awk -F'|' '{v = $(NF - 7); gsub(/ /, "", v); print v}' <<< "${rows[-1]}"; }
# last_cpu: its CPU s/GiB column.
last_cpu() { awk -F'|' '{v = $(NF - 6); gsub(/ /, "", v); print v}' <<< "${rows[-1]}"; }
ratios=()
# enc_ratio ROUND: the encrypted backup just measured against the aws CLI row and the
# unencrypted backup row of the same round (issue 23's targets: >= 1.3x, <= +0.5 s/GiB).
enc_ratios=()
enc_ratio() {
  enc_ratios+=("round $1: $(python3 -c "print(f'{$(last_mbps)/$aws_mbps:.2f}x the aws CLI ({$big_mbps/$aws_mbps:.2f}x unencrypted); CPU {$(last_cpu):.2f} s/GiB, {$(last_cpu) - $big_cpu:+.2f} over unencrypted ({$big_cpu:.2f})')")")
}

if [ "$main" = 1 ]; then
echo "==> measuring (each run starts with dropped caches)"
"$bin" backup --config "$dir/big.toml" --no-s3 --once > /dev/null 2>&1
snap=$(ls -d "$mnt"/snapshots/big__* | tail -n 1)
stream=$(btrfs send -q "$snap" | wc -c)
measure "btrfs send > /dev/null" "$stream" sh -c "btrfs send -q '$snap' > /dev/null"
aws_cp() { # $1 = read-only snapshot; prints the pipeline for sh -c
  echo "btrfs send -q '$1' | aws --endpoint-url '$endpoint' s3 cp - s3://bench/aws.bin --only-show-errors"
}
fresh_server
measure "btrfs send | aws s3 cp -" "$stream" sh -c "$(aws_cp "$snap")"
aws_mbps=$(last_mbps)
rm -rf "$dir/s3data/bench/aws.bin"
if [ "$extra" = 1 ]; then
measure "btrfs send | rclone rcat" "$stream" env -u AWS_CA_BUNDLE RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other \
  RCLONE_CONFIG_B_ENDPOINT="$endpoint" RCLONE_CONFIG_B_ACCESS_KEY_ID="$akey" RCLONE_CONFIG_B_SECRET_ACCESS_KEY="$skey" \
  sh -c "btrfs send -q '$snap' | rclone rcat b:bench/rclone.bin"
rm -rf "$dir/s3data/bench/rclone.bin"
fi
btrfs -q subvolume delete "$snap"
fresh_server
measure "btrfs_to_s3 backup (${gib} GiB)" log "$bin" backup --config "$dir/big.toml" --once
big_mbps=$(last_mbps)
big_cpu=$(last_cpu)
cp "$dir/out.log" "$dir/backup-big.log"
grep -o 'event=backup_metrics.*' "$dir/out.log"
measure "btrfs_to_s3 restore (${gib} GiB)" "$stream" "$bin" restore --config "$dir/big.toml" --subvolume big --target "$mnt/restored-big"
grep -o 'event=restore_metrics.*' "$dir/out.log"

# The restore table: the same chunks through the aws CLI into btrfs receive, and
# btrfs_to_s3 restore with full and with no verification, alternating (on s3s-fs: the
# chunk keys are read from its directory).
rrows=()
rratios=()
if [ "$server" = s3s-fs ]; then
big_snap=$(ls -d "$mnt"/snapshots/big__* | tail -n 1)
big_keys=$(python3 - "$dir/s3data/bench" <<'PY'
import json, sys
root = sys.argv[1]
cur = json.load(open(f"{root}/bench-big/subvol/big/current.json"))
m = json.load(open(f"{root}/{cur['manifest_key']}"))
print(" ".join(c["key"] for c in m["chunks"]))
PY
)
mkdir -p "$mnt/recv-aws"
for r in $(seq 1 "$rrounds"); do
  echo "==> restore round $r of $rrounds"
  rows_before=${#rows[@]}
  measure "aws s3 cp - | btrfs receive (round $r)" "$stream" sh -c \
    "for k in $big_keys; do aws --endpoint-url '$endpoint' s3 cp \"s3://bench/\$k\" - --only-show-errors || exit 1; done | btrfs receive -q '$mnt/recv-aws'"
  aws_r=$(last_mbps)
  btrfs -q subvolume delete "$mnt/recv-aws/$(basename "$big_snap")"
  btrfs subvolume sync "$mnt" > /dev/null
  measure "btrfs_to_s3 restore --verify full (round $r)" "$stream" "$bin" restore --config "$dir/big.toml" --subvolume big --target "$mnt/restored-full" --verify full
  grep -q 'event=verify_ok mode=full' "$dir/out.log" || { echo "the full verification did not run" >&2; exit 1; }
  full_r=$(last_mbps)
  btrfs -q subvolume delete "$mnt/restored-full"
  btrfs subvolume sync "$mnt" > /dev/null
  measure "btrfs_to_s3 restore --verify none (round $r)" "$stream" "$bin" restore --config "$dir/big.toml" --subvolume big --target "$mnt/restored-none" --verify none
  none_r=$(last_mbps)
  btrfs -q subvolume delete "$mnt/restored-none"
  btrfs subvolume sync "$mnt" > /dev/null
  rratios+=("$(python3 -c "print(f'{$full_r/$aws_r:.3f} {$none_r/$aws_r:.3f}')")")
  rrows+=("${rows[@]:$rows_before}")
  rows=("${rows[@]:0:$rows_before}")
done
fi
# BENCH_ENCRYPTED=0 leaves these rows out (a BENCH_BIN from before [encryption]).
if [ "${BENCH_ENCRYPTED:-1}" != 0 ]; then
fresh_server
measure "btrfs_to_s3 backup (${gib} GiB, encrypted to 1 age recipient)" log "$bin" backup --config "$dir/enc.toml" --once
grep -o 'event=backup_metrics.*' "$dir/out.log"
enc_ratio 1
btrfs -q subvolume delete "$mnt/restored-big"
btrfs subvolume sync "$mnt" > /dev/null
measure "btrfs_to_s3 restore (${gib} GiB, encrypted)" "$stream" "$bin" restore --config "$dir/enc.toml" --subvolume big --target "$mnt/restored-big"
fi
if [ "$extra" = 1 ]; then
measure "btrfs_to_s3 backup (200 MiB)" log "$bin" backup --config "$dir/small.toml" --once
grep -o 'event=backup_metrics.*' "$dir/out.log"
measure "btrfs_to_s3 backup (${gib} GiB, ${chunk_mib} MiB chunks)" log "$bin" backup --config "$dir/chunked.toml" --once
grep -o 'event=backup_metrics.*' "$dir/out.log"
ratios+=("round 1: $(python3 -c "print(f'{$big_mbps/$aws_mbps:.2f}x default, {$(last_mbps)/$aws_mbps:.2f}x ${chunk_mib} MiB chunks')")")
# Restoring the chunked backup checks every chunk's hash and the stream's, in one pass.
btrfs -q subvolume delete "$mnt/restored-big"
btrfs subvolume sync "$mnt" > /dev/null
measure "btrfs_to_s3 restore (${gib} GiB, ${chunk_mib} MiB chunks)" "$stream" "$bin" restore --config "$dir/chunked.toml" --subvolume big --target "$mnt/restored-chunked"
grep -o 'event=restore_metrics.*' "$dir/out.log"
btrfs -q subvolume delete "$mnt/restored-chunked"
else
ratios+=("round 1: $(python3 -c "print(f'{$big_mbps/$aws_mbps:.2f}x default')")")
fi

# Later rounds: each backup starts again from no state (a full), like round 1.
fresh() { # $1 = state file, $2 = prefix
  rm -f "$dir/$1"; rm -rf "$dir/s3data/bench/$2"
  for s in "$mnt"/snapshots/big__*; do [ -e "$s" ] && btrfs -q subvolume delete "$s"; done
}
if [ "$rounds" -gt 1 ]; then
  btrfs -q subvolume snapshot -r "$mnt/big" "$mnt/aws-snap"
  aws_stream=$(btrfs send -q "$mnt/aws-snap" | wc -c)
fi
for r in $(seq 2 "$rounds"); do
  echo "==> round $r of $rounds"
  fresh_server
  measure "btrfs send | aws s3 cp - (round $r)" "$aws_stream" sh -c "$(aws_cp "$mnt/aws-snap")"
  aws_mbps=$(last_mbps)
  rm -rf "$dir/s3data/bench/aws.bin"
  fresh state-big.json bench-big
  fresh_server
  measure "btrfs_to_s3 backup (${gib} GiB) (round $r)" log "$bin" backup --config "$dir/big.toml" --once
  big_mbps=$(last_mbps)
  big_cpu=$(last_cpu)
  if [ "${BENCH_ENCRYPTED:-1}" != 0 ]; then
  fresh state-enc.json bench-enc
  fresh_server
  measure "btrfs_to_s3 backup (${gib} GiB, encrypted to 1 age recipient) (round $r)" log "$bin" backup --config "$dir/enc.toml" --once
  enc_ratio "$r"
  fi
  if [ "$extra" = 1 ]; then
  fresh state-chunked.json bench-chunked
  measure "btrfs_to_s3 backup (${gib} GiB, ${chunk_mib} MiB chunks) (round $r)" log "$bin" backup --config "$dir/chunked.toml" --once
  ratios+=("round $r: $(python3 -c "print(f'{$big_mbps/$aws_mbps:.2f}x default, {$(last_mbps)/$aws_mbps:.2f}x ${chunk_mib} MiB chunks')")")
  else
  ratios+=("round $r: $(python3 -c "print(f'{$big_mbps/$aws_mbps:.2f}x default')")")
  fi
done
rm -rf "$dir/s3data/bench/"*

# The scale rows: per-GiB MB/s from start to end, and peak RSS.
scale_rows=()
if [ "$scale_gib" -gt 0 ]; then
  echo "==> scale: backup and restore of ${scale_gib} GiB"
  cfg scale state-scale.json
  sed -i "s|^\[global\]|[global]\nprogress_interval_seconds = 1|" "$dir/scale.toml"
  stamp() { python3 -u -c '
import sys, time
t0 = time.monotonic()
for line in sys.stdin:
    sys.stdout.write(f"{time.monotonic() - t0:.3f} {line}")
'; }
  scale_row() { # $1 = label, $2 = progress event, $3 = stamped log
    read -r el us sy rss < "$dir/time"
    scale_rows+=("$(python3 - "$1" "$2" "$3" "$el" "$us" "$sy" "$rss" <<'PY'
import re, sys
label, event, log = sys.argv[1:4]
el, us, sy, rss = map(float, sys.argv[4:8])
pts = [(0.0, 0)]
total = None
for line in open(log):
    m = re.match(r"([\d.]+) .*event=%s .*?\bbytes=(\d+)" % event, line)
    if m:
        pts.append((float(m.group(1)), int(m.group(2))))
    m = re.search(r"event=(backup|restore)_metrics .*?\btotal_bytes=(\d+)", line)
    if m:
        total = int(m.group(2))
if total is None:
    sys.exit(f"{label}: no metrics line in {log}")
pts.append((el, total))
G = 2**30
rates, k, last_t = [], 1, 0.0
for (t0, b0), (t1, b1) in zip(pts, pts[1:]):
    while k * G <= b1 and b1 > b0:
        t = t0 + (t1 - t0) * (k * G - b0) / (b1 - b0)
        rates.append(G / 1e6 / max(t - last_t, 1e-9))
        last_t, k = t, k + 1
per = " ".join(f"{r:.0f}" for r in rates)
print(f"| {label} | {total/1e6/el:.1f} | {(us+sy)/(total/G):.2f} | {rss/1024:.1f} | {el:.1f} | {per} |")
PY
)")
  }
  sync; echo 3 > /proc/sys/vm/drop_caches
  /usr/bin/time -f '%e %U %S %M' -o "$dir/time" "$bin" backup --config "$dir/scale.toml" --once 2>&1 | stamp > "$dir/scale-backup.log"
  [ "${PIPESTATUS[0]}" = 0 ] || { cat "$dir/scale-backup.log"; echo "scale backup failed" >&2; exit 1; }
  scale_row "btrfs_to_s3 backup (${scale_gib} GiB)" backup_progress "$dir/scale-backup.log"
  sync; echo 3 > /proc/sys/vm/drop_caches
  /usr/bin/time -f '%e %U %S %M' -o "$dir/time" "$bin" restore --config "$dir/scale.toml" --subvolume scale --target "$mnt/restored-scale" --verify none 2>&1 | stamp > "$dir/scale-restore.log"
  [ "${PIPESTATUS[0]}" = 0 ] || { cat "$dir/scale-restore.log"; echo "scale restore failed" >&2; exit 1; }
  scale_row "btrfs_to_s3 restore (${scale_gib} GiB, --verify none)" restore_progress "$dir/scale-restore.log"
  btrfs -q subvolume delete "$mnt/restored-scale"
  rm -rf "$dir/s3data/bench/"*
fi

if [ "$extra" = 1 ]; then
# Compressible data on a compress=zstd filesystem: generated web-server logs, a packed
# tree of text files from this machine, and incompressible random bytes. btrfs_to_s3 with
# send_compressed_data = true uploads the compressed extents as they are on disk; the aws
# CLI row pipes today's protocol-1 stream (decompressed).
echo "==> compressible data on a compress=zstd btrfs"
truncate -s 3G "$dir/zfs.img"
mkfs.btrfs -q -f "$dir/zfs.img" >/dev/null 2>&1
mkdir -p "$dir/zmnt"
mount -o loop,compress=zstd "$dir/zfs.img" "$dir/zmnt"
btrfs -q subvolume create "$dir/zmnt/z"
python3 - "$dir/zmnt/z/access.log" "$(( 400 * 1024 * 1024 ))" <<'PY'
import random, sys
r = random.Random(7)
paths = ["/", "/index.html", "/api/v1/items", "/static/app.js", "/login", "/search?q=btrfs"]
agents = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "Go-http-client/2.0"]
with open(sys.argv[1], "w") as f:
    n, limit = 0, int(sys.argv[2])
    while n < limit:
        line = (f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(256)} - - "
                f"[24/Nov/2026:{r.randrange(24):02}:{r.randrange(60):02}:{r.randrange(60):02} +0000] "
                f"\"GET {r.choice(paths)} HTTP/1.1\" {r.choice([200, 200, 200, 304, 404])} "
                f"{r.randrange(100000)} \"-\" \"{r.choice(agents)}\"\n")
        f.write(line)
        n += len(line)
PY
tar -c /usr/share/doc /usr/lib/python3* 2>/dev/null | head -c $(( 300 * 1024 * 1024 )) > "$dir/zmnt/z/text-tree.tar" || true
rnd zrand $(( 200 * 1024 * 1024 )) > "$dir/zmnt/z/random.bin"
sync
disk=$(compsize -b "$dir/zmnt/z" | awk '$1 == "TOTAL" {print $3}')
logical=$(compsize -b "$dir/zmnt/z" | awk '$1 == "TOTAL" {print $4}')
cat > "$dir/z.toml" <<TOML
[global]
state_path = "$dir/state-z.json"
lock_path = "$dir/lock"
[snapshots]
base_dir = "$dir/zmnt/snapshots"
[subvolumes]
paths = ["$dir/zmnt/z"]
[s3]
bucket = "bench"
region = "us-east-1"
prefix = "bench-z"
endpoint_url = "$endpoint"
storage_class_chunks = "STANDARD"
concurrency = $conc
part_size_bytes = $(( part_mib * 1024 * 1024 ))
chunk_size_bytes = $(( chunk_mib * 1024 * 1024 ))
send_compressed_data = true
[restore]
verify_mode = "none"
TOML
btrfs -q subvolume snapshot -r "$dir/zmnt/z" "$dir/zmnt/z-snap"
zstream1=$(btrfs send -q "$dir/zmnt/z-snap" | wc -c)
zrows=()
rows_before=${#rows[@]}
measure "btrfs send | aws s3 cp - (compressible, protocol 1)" "$zstream1" sh -c "$(aws_cp "$dir/zmnt/z-snap")"
rm -rf "$dir/s3data/bench/aws.bin"
measure "btrfs_to_s3 backup (compressible, compressed send)" log "$bin" backup --config "$dir/z.toml" --once
zbytes=$(grep -o 'total_bytes=[0-9]*' "$dir/out.log" | head -n 1 | cut -d= -f2)
grep -o 'event=backup_metrics.*' "$dir/out.log"
zrows=("${rows[@]:$rows_before}")
rows=("${rows[@]:0:$rows_before}")
umount "$dir/zmnt"

echo "==> transports: 48 parts of ${part_mib} MiB on ${conc} threads, one multipart upload each"
transport=$("$repo/target/release/examples/transport_bench" "$endpoint" bench 48 "$part_mib" "$conc")
fi
fi

if [ "$main" = 1 ] && [ "$extra" = 1 ]; then
# A home uplink: examples/link_emulator (the tests' link emulator) at LINK_RATE bytes/s
# with LINK_RTT_MS added round trip in front of the same server; the share of the link
# the transports fill.
link_rate=${LINK_RATE:-25000000}
link_rtt=${LINK_RTT_MS:-40}
echo "==> transports through a ${link_rate} B/s link with ${link_rtt} ms added round trip"
"$repo/target/release/examples/link_emulator" --target "127.0.0.1:$port" \
  "rate up $link_rate" "rtt $link_rtt" > "$dir/link.out" 2>&1 &
linkpid=$!
for _ in $(seq 1 100); do grep -q '^listening' "$dir/link.out" 2>/dev/null && break; sleep 0.1; done
link_addr=$(sed -n 's/^listening //p' "$dir/link.out")
linked=$("$repo/target/release/examples/transport_bench" "http://$link_addr" bench 12 "$part_mib" "$conc")
kill "$linkpid"; wait "$linkpid" 2>/dev/null || true; linkpid=
fi

# The resume: what it spends before its first new byte.
resume_rows=()
if [ "$resume" != 0 ]; then
  echo "==> resume of a ${resume_gib} GiB stored prefix (each resume starts with dropped caches)"
  # The contract's 200 GiB chunk raises the parts to 21 MiB (10,000 parts at most).
  eff_part=$(( part_mib > 21 ? part_mib : 21 ))
  cut_at=$(( resume_gib * 1024 / eff_part ))
  moto=${MOTO_SERVER:-}
  [ -n "$moto" ] || moto=$(bash contrib/install-test-tools.sh | tail -n 1)
  s3s_endpoint=$endpoint
  resume_case() { # $1 = label, $2 = failpoint that cuts the first run, $3 = warm|spool|
    rm -f "$dir/state-resume.json" "$dir/state-resume.json.resume-resume.jsonl"
    for s in "$mnt"/snapshots/resume__*; do [ -e "$s" ] && btrfs -q subvolume delete "$s"; done
    # A fresh moto (in memory) for each case.
    [ -n "${motopid:-}" ] && { kill "$motopid"; wait "$motopid" 2>/dev/null || true; }
    mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$moto" -H 127.0.0.1 -p "$mport" > "$dir/moto.log" 2>&1 &
    motopid=$!
    for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$mport/" && break; sleep 0.1; done
    curl -s -X PUT "http://127.0.0.1:$mport/bench" > /dev/null
    endpoint=http://127.0.0.1:$mport
    cfg resume state-resume.json
    endpoint=$s3s_endpoint
    if [ "${3:-}" = spool ]; then
      sed -i -e "s|^\[global\]|[global]\nspool_dir = \"$dir/spool\"|" \
        -e "s|^\[s3\]|[s3]\nspool_enabled = true|" "$dir/resume.toml"
    fi
    if BTRFS_TO_S3_FAILPOINT=$2 "$bin" backup --config "$dir/resume.toml" --once > "$dir/cut.log" 2>&1; then
      echo "the first run was not cut at $2" >&2; exit 1
    fi
    if [ "${3:-}" = warm ]; then
      # The snapshot in the page cache: what the CPU allows when the disk is not the limit.
      btrfs send -q "$(ls -d "$mnt"/snapshots/resume__* | tail -n 1)" > /dev/null
      warm=1 measure "btrfs_to_s3 resume ($1)" log "$bin" backup --config "$dir/resume.toml"
    else
      measure "btrfs_to_s3 resume ($1)" log "$bin" backup --config "$dir/resume.toml"
    fi
    grep -o 'event=backup_resumed.*' "$dir/out.log"
    grep -o 'event=resume_first_new_byte.*' "$dir/out.log" || true
    grep -o 'event=backup_metrics.*' "$dir/out.log"
    read -r el us sy rss < "$dir/time"
    resume_rows+=("$(python3 - "$1" "$el" "$us" "$sy" "$dir/out.log" <<'PY'
import re, sys
label, el, us, sy, log = sys.argv[1], *map(float, sys.argv[2:5]), open(sys.argv[5]).read()
def field(event, key):
    m = re.search(r"event=%s .*?\b%s=([^ \n]+)" % (event, key), log)
    return m.group(1) if m else None
stored = int(field("backup_resumed", "bytes_stored"))
total = int(field("backup_metrics", "total_bytes"))
first = field("resume_first_new_byte", "seconds") or field("backup_metrics", "first_new_byte_seconds")
gib = stored / 2**30
if first is None:
    cell, rate, tib = "n/a (this build says nothing)", "", ""
else:
    f = float(first)
    cell, rate, tib = f"{f:.1f}", f"{stored / f / 1e6:.0f}", f"{f / gib * 1024 / 3600:.2f}"
print(f"| {label} | {gib:.2f} of {total / 2**30:.2f} | {cell} | {rate} | {tib} | {el:.1f} | {(us + sy) / (total / 2**30):.2f} |")
PY
)")
  }
  resume_case "${resume_gib} GiB stored, the rest sent" "after_part_journaled:$cut_at"
  resume_case "everything stored" between_manifest_and_pointer
  resume_case "everything stored, page cache warm" between_manifest_and_pointer warm
  resume_case "everything stored, s3.spool_enabled" between_manifest_and_pointer spool
  kill "$motopid"; wait "$motopid" 2>/dev/null || true; motopid=
  snap=$(ls -d "$mnt"/snapshots/resume__* | tail -n 1)
  rstream=$(btrfs send -q "$snap" | wc -c)
  rows_before=${#rows[@]}
  measure "btrfs send > /dev/null (the resume's snapshot)" "$rstream" sh -c "btrfs send -q '$snap' > /dev/null"
  floor=("${rows[@]:$rows_before}")
  rows=("${rows[@]:0:$rows_before}")
fi

# The rate caps, measured on the wire by the link emulator's byte counters.
cap_rows=()
if [ "$cap" != 0 ]; then
  if [ -x "$s3s" ]; then
    cap_server="s3s-fs 0.14.1"; cap_port=$port
  else
    cap_server="moto 5.1.22 (s3s-fs is not installed)"
    moto=${MOTO_SERVER:-}
    [ -n "$moto" ] || moto=$(bash contrib/install-test-tools.sh | tail -n 1)
    cap_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$moto" -H 127.0.0.1 -p "$cap_port" > "$dir/moto.log" 2>&1 &
    motopid=$!
    for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$cap_port/" && break; sleep 0.1; done
    curl -s -X PUT "http://127.0.0.1:$cap_port/bench" > /dev/null
  fi
  ctl_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$repo/target/release/examples/link_emulator" --target "127.0.0.1:$cap_port" \
    --control "127.0.0.1:$ctl_port" > "$dir/caplink.out" 2>&1 &
  linkpid=$!
  for _ in $(seq 1 100); do grep -q '^control' "$dir/caplink.out" 2>/dev/null && break; sleep 0.1; done
  cap_link=$(sed -n 's/^listening //p' "$dir/caplink.out")
  sampler() { # $1 = samples file: "monotonic-seconds up_bytes down_bytes" every 50 ms
    rm -f "$1"
    python3 - "$ctl_port" "$1" <<'PY' &
import re, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rw")
out = open(sys.argv[2], "w")
while True:
    f.write("status\n"); f.flush()
    m = re.search(r"up_bytes=(\d+) down_bytes=(\d+)", f.readline())
    out.write(f"{time.monotonic():.4f} {m.group(1)} {m.group(2)}\n"); out.flush()
    time.sleep(0.05)
PY
    samplerpid=$!
    # The run starts after the first sample, so the counts start at its first byte.
    for _ in $(seq 1 100); do [ -s "$1" ] && break; sleep 0.05; done
  }
  cap_row() { # $1 = label, $2 = samples, $3 = column (1 up, 2 down), $4 = cap bytes/s
    python3 - "$@" <<'PY'
import sys
label, path, col, cap = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
pts = [(float(l.split()[0]), int(l.split()[col])) for l in open(path) if len(l.split()) == 3]
b0, moved = pts[0][1], pts[-1][1] - pts[0][1]
# The span between 1 % and 99 % of the bytes: no start-up, no CompleteMultipartUpload tail.
lo = max(i for i, (t, b) in enumerate(pts) if b - b0 <= 0.01 * moved)
hi = min(i for i, (t, b) in enumerate(pts) if b - b0 >= 0.99 * moved)
span = pts[lo:hi + 1]
(t0, c0), (t1, c1) = span[0], span[-1]
rate = (c1 - c0) / (t1 - t0)
def at(t):  # bytes at time t, linear between samples
    for (ta, ba), (tb, bb) in zip(span, span[1:]):
        if ta <= t <= tb:
            return ba + (bb - ba) * (t - ta) / (tb - ta) if tb > ta else bb
    return span[-1][1]
def dev(w):
    ds = [(at(t + w) - at(t)) / w / cap - 1 for t, _ in span if t + w <= t1]
    return "n/a (shorter span)" if not ds else f"{min(ds) * 100:+.1f} % / {max(ds) * 100:+.1f} %"
if cap == 0:  # the uncapped run: what the server and this machine allow
    print(f"| {label} | off | {rate / 2**20:.2f} | | | | {moved / 2**20:.1f} | {t1 - t0:.1f} |")
else:
    print(f"| {label} | {cap / 2**20:.0f} | {rate / 2**20:.2f} | {(rate / cap - 1) * 100:+.1f} % | {dev(1.0)} | {dev(10.0)} | {moved / 2**20:.1f} | {t1 - t0:.1f} |")
PY
  }
  s3s_endpoint=$endpoint
  endpoint=http://$cap_link
  for mib in ${CAP_MIBS:-10 50 off}; do
    if [ "$mib" = off ]; then flag=off; bps=0; else flag=${mib}MiB; bps=$(( mib * 1024 * 1024 )); fi
    echo "==> rate cap ${flag}: backup and restore of 200 MiB through the link emulator"
    for sn in "$mnt"/snapshots/small__*; do [ -e "$sn" ] && btrfs -q subvolume delete "$sn"; done
    cfg small "state-cap$mib.json" "cap$mib"
    sampler "$dir/cap-up.txt"
    "$bin" backup --config "$dir/cap$mib.toml" --once --limit-upload "$flag" > "$dir/cap.log" 2>&1 \
      || { cat "$dir/cap.log"; echo "capped backup failed" >&2; exit 1; }
    kill "$samplerpid"; wait "$samplerpid" 2>/dev/null || true
    grep -o 'event=backup_metrics.*' "$dir/cap.log"
    cap_rows+=("$(cap_row "backup --limit-upload $flag" "$dir/cap-up.txt" 1 "$bps")")
    # A download is paced where the restore reads its sockets; what the link passes on
    # runs ahead of that by what the TCP buffers between them hold.
    sampler "$dir/cap-down.txt"
    "$bin" restore --config "$dir/cap$mib.toml" --subvolume small --target "$mnt/restored-cap$mib" \
      --limit-download "$flag" > "$dir/cap.log" 2>&1 \
      || { cat "$dir/cap.log"; echo "capped restore failed" >&2; exit 1; }
    kill "$samplerpid"; wait "$samplerpid" 2>/dev/null || true
    grep -o 'event=restore_metrics.*' "$dir/cap.log"
    cap_rows+=("$(cap_row "restore --limit-download $flag" "$dir/cap-down.txt" 2 "$bps")")
    btrfs -q subvolume delete "$mnt/restored-cap$mib"
  done
  endpoint=$s3s_endpoint
  kill "$linkpid"; wait "$linkpid" 2>/dev/null || true; linkpid=
  if [ -n "${motopid:-}" ]; then kill "$motopid"; wait "$motopid" 2>/dev/null || true; motopid=; fi
fi

if [ "$main" = 1 ]; then
echo
eff=$(grep -o 'part_size=[0-9]*' "$dir/backup-big.log" | head -n 1 | cut -d= -f2)
eff_mib=$(( eff / 1024 / 1024 ))
if [ "$server" = garage ]; then echo "server: Garage 2.5.0, single node, compression off, started empty before each upload row"; else echo "server: s3s-fs 0.14.1"; fi
echo "stream ${stream} bytes; concurrency ${conc}; part size ${eff_mib} MiB (configured ${part_mib} MiB, raised for the 200 GiB default chunk to stay within 10,000 parts)"
echo "buffers (concurrency+1) x part = $(( (conc + 1) * eff_mib )) MiB; RSS target concurrency x part + 64 = $(( conc * eff_mib + 64 )) MiB"
echo "| command | MB/s | CPU s/GiB | peak RSS MiB | seconds | server CPU s/GiB | busy % | iowait % |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${rows[@]}"
echo
echo "btrfs_to_s3 backup throughput over the aws CLI's in the same round:"
printf '  %s\n' "${ratios[@]}"
if [ "${#enc_ratios[@]}" -gt 0 ]; then
echo "The encrypted backup in the same round (targets: >= 1.3x the aws CLI, CPU within +0.5 s/GiB):"
printf '  %s\n' "${enc_ratios[@]}"
# Medians from round 2 on (round 1's encrypted row follows the restore rows, not the
# unencrypted backup).
python3 - "${enc_ratios[@]}" <<'PY'
import re, statistics, sys
rows = [re.match(r"round (\d+): ([\d.]+)x .*\(([\d.]+)x unencrypted\); CPU [\d.]+ s/GiB, ([-+][\d.]+)", a) for a in sys.argv[1:]]
later = [m for m in rows if m and int(m.group(1)) >= 2]
if later:
    med = lambda i: statistics.median(float(m.group(i)) for m in later)
    print(f"  medians of rounds 2-{len(rows)}: encrypted {med(2):.2f}x, unencrypted {med(3):.2f}x the aws CLI; CPU {med(4):+.2f} s/GiB over unencrypted")
PY
fi
echo
if [ "${#rratios[@]}" -gt 0 ]; then
echo "Restore: the same chunks through aws s3 cp - | btrfs receive, and btrfs_to_s3 restore (each row with dropped caches):"
echo "| command | MB/s | CPU s/GiB | peak RSS MiB | seconds | server CPU s/GiB | busy % | iowait % |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${rrows[@]}"
python3 - "${rratios[@]}" <<'PY'
import statistics, sys
pairs = [tuple(map(float, a.split())) for a in sys.argv[1:]]
for i, (f, n) in enumerate(pairs, 1):
    print(f"  round {i}: --verify full {f:.2f}x, --verify none {n:.2f}x the aws CLI pipeline")
print(f"  medians: --verify full {statistics.median(p[0] for p in pairs):.2f}x, --verify none {statistics.median(p[1] for p in pairs):.2f}x")
PY
fi
if [ "${#scale_rows[@]}" -gt 0 ]; then
  echo
  echo "Scale (${scale_gib} GiB of random data; MB/s of each GiB from start to end):"
  echo "| command | MB/s | CPU s/GiB | peak RSS MiB | seconds | MB/s per GiB, in order |"
  echo "| --- | ---: | ---: | ---: | ---: | --- |"
  printf '%s\n' "${scale_rows[@]}"
fi
if [ "$extra" = 1 ]; then
echo
echo "Compressible data (compress=zstd): logical ${logical} bytes, on disk ${disk} bytes (compsize);"
echo "protocol-1 stream ${zstream1} bytes; btrfs_to_s3 uploaded ${zbytes} bytes = $(python3 -c "print(f'{$zbytes/$disk:.3f}')") x the on-disk size (target <= 1.05)"
echo "| command | MB/s of its stream | CPU s/GiB | peak RSS MiB | seconds | server CPU s/GiB | busy % | iowait % |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${zrows[@]}"
echo
echo "| transport (client CPU only) | MB/s | CPU s/GiB |"
echo "| --- | ---: | ---: |"
echo "$transport"
echo
echo "Through the link emulator (${link_rate} B/s up, ${link_rtt} ms added round trip; 12 parts):"
echo "| transport | MB/s | CPU s/GiB | share of the link |"
echo "| --- | ---: | ---: | ---: |"
echo "$linked" | while IFS='|' read -r _ name mbs cpu _; do
  printf '|%s|%s|%s| %s |\n' "$name" "$mbs" "$cpu" "$(python3 -c "print(f'{float(\"$mbs\")*1e6/$link_rate*100:.0f} %')")"
done
fi
fi
if [ "$resume" != 0 ]; then
  echo
  echo "Resume: a full of $(( resume_gib * 1024 + 256 )) MiB of random data (default chunk, ${eff_part} MiB parts, concurrency ${conc}) cut by kill -9; the next run's time before its first new byte (the whole run when everything was stored):"
  echo "| resume | GiB stored of the stream | seconds to first new byte | verify MB/s | hours per TiB stored | run seconds | CPU s/GiB of stream |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${resume_rows[@]}"
  echo "| command | MB/s | CPU s/GiB | peak RSS MiB | seconds | server CPU s/GiB | busy % | iowait % |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${floor[@]}"
fi
if [ "$cap" != 0 ]; then
  echo
  echo "Rate caps on ${cap_server}, measured on the wire (link emulator byte counters sampled every 50 ms; span: 1 % to 99 % of the bytes; concurrency ${conc}, ${part_mib} MiB parts):"
  echo "| run | cap MiB/s | achieved MiB/s | vs cap | 1 s windows min / max | 10 s windows min / max | MiB on the wire | span s |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${cap_rows[@]}"
fi
