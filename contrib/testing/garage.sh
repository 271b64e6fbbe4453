#!/usr/bin/env bash
# A throwaway single-node Garage (replication_factor = 1, sqlite) on 127.0.0.1, for
# contrib/interop.sh. Garage must be installed (on PATH or in .test-tools/garage/bin):
#   cargo install garage@2.5.0 --locked --no-default-features --features bundled-libs,sqlite --root .test-tools/garage
#
#   bash contrib/testing/garage.sh start DIR   starts it under DIR, makes the key and bucket
#                                               "interop", writes "KEY SECRET PORT" to DIR/s3-keys
#   bash contrib/testing/garage.sh stop DIR    stops it and removes DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
cmd=${1:?start or stop}
D=${2:?directory}
if command -v garage >/dev/null; then g=$(command -v garage); else g=$PWD/.test-tools/garage/bin/garage; fi

if [ "$cmd" = stop ]; then
  [ -f "$D/pid" ] && kill "$(cat "$D/pid")" 2>/dev/null || true
  sleep 1
  rm -rf "$D"
  exit 0
fi

[ -x "$g" ] || { echo "garage is not installed (see the top of this file)" >&2; exit 1; }
rm -rf "$D"
mkdir -p "$D/meta" "$D/data"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3=$(free_port); rpc=$(free_port); admin=$(free_port)
cat > "$D/garage.toml" <<TOML
metadata_dir = "$D/meta"
data_dir = "$D/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
chmod 0600 "$D/garage.toml"
G=("$g" -c "$D/garage.toml")
"${G[@]}" server > "$D/server.log" 2>&1 &
echo $! > "$D/pid"
for _ in $(seq 1 60); do "${G[@]}" status >/dev/null 2>&1 && break; sleep 1; done
node=$("${G[@]}" node id -q 2>/dev/null | cut -d@ -f1)
"${G[@]}" layout assign -z dc1 -c 2G "$node" >/dev/null
"${G[@]}" layout apply --version 1 >/dev/null
key=GK$(openssl rand -hex 12)
sec=$(openssl rand -hex 32)
"${G[@]}" key import --yes -n interop "$key" "$sec" >/dev/null
"${G[@]}" bucket create interop >/dev/null
"${G[@]}" bucket allow --read --write --owner interop --key interop >/dev/null
for _ in $(seq 1 30); do (exec 3<>"/dev/tcp/127.0.0.1/$s3") 2>/dev/null && break; sleep 1; done
echo "$key $sec $s3" > "$D/s3-keys"
echo "==> garage is up on 127.0.0.1:$s3: bucket interop"
