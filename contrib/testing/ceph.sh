#!/usr/bin/env bash
# A throwaway single-node Ceph with the RADOS Gateway on 127.0.0.1:7480, for
# contrib/interop.sh (as root): one mon, one mgr, one memstore OSD (RAM only), cephx on.
#
#   bash contrib/testing/ceph.sh start DIR   installs the Debian packages if missing, starts
#                                             everything under DIR, creates the S3 user, the
#                                             bucket "interop" and the bucket "interop-lock"
#                                             (created with Object Lock enabled, so versioned),
#                                             writes "KEY SECRET" to DIR/s3-keys
#   bash contrib/testing/ceph.sh stop DIR    stops the daemons (by the pids in DIR/run) and
#                                             removes DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
cmd=${1:?start or stop}
D=${2:?directory}

# Only the daemons this script started, by the pids they wrote under DIR/run.
stop() {
  local pids=() f p
  for f in "$D"/run/*.pid; do
    [ -e "$f" ] || continue
    p=$(cat "$f")
    [[ $p =~ ^[0-9]+$ ]] && pids+=("$p")
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$D"
}
if [ "$cmd" = stop ]; then stop; exit 0; fi

if ! command -v radosgw >/dev/null || ! command -v ceph-mon >/dev/null || ! command -v ceph-osd >/dev/null; then
  echo "==> installing radosgw ceph-mon ceph-osd ceph-mgr ceph-common"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq radosgw ceph-mon ceph-osd ceph-mgr ceph-common uuid-runtime >/dev/null
fi
[ -d "$D" ] && stop
mkdir -p "$D"/{run,log,mon,osd,mgr,rgw}
conf=$D/ceph.conf
template=contrib/testing/ceph.conf.template
sed "s#CEPH_DIR#$D#g" "$template" > "$conf"
fsid=$(awk '/^fsid/ {print $3}' "$conf")
c=(-c "$conf")

echo "==> monitor"
ceph-authtool --create-keyring "$D/keyring.mon.a" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$D/keyring.client.admin" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$D/keyring.mon.a" --import-keyring "$D/keyring.client.admin" >/dev/null
monmaptool --create --add a 127.0.0.1:6789 --fsid "$fsid" "$D/monmap" >/dev/null
ceph-mon "${c[@]}" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring.mon.a"
ceph-mon "${c[@]}" -i a
for _ in $(seq 1 60); do timeout 10 ceph "${c[@]}" -s >/dev/null 2>&1 && break; sleep 1; done

echo "==> manager"
mkdir -p "$D/mgr/ceph-a"
ceph "${c[@]}" auth get-or-create mgr.a mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$D/keyring.mgr.a"
ceph-mgr "${c[@]}" -i a

echo "==> memstore OSD"
uuid=$(uuidgen)
secret=$(ceph-authtool --gen-print-key)
id=$(echo "{\"cephx_secret\": \"$secret\"}" | ceph "${c[@]}" osd new "$uuid" -i -)
mkdir -p "$D/osd/ceph-$id"
ceph-authtool --create-keyring "$D/keyring.osd.$id" --name "osd.$id" --add-key "$secret" >/dev/null
ceph-osd "${c[@]}" -i "$id" --mkfs --osd-uuid "$uuid" >/dev/null 2>&1
ceph-osd "${c[@]}" -i "$id"
for _ in $(seq 1 120); do
  ceph "${c[@]}" osd stat 2>/dev/null | grep -q '1 up' && break
  sleep 1
done

echo "==> RADOS gateway on 127.0.0.1:7480"
ceph "${c[@]}" auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' mgr 'allow rw' -o "$D/keyring.client.rgw.a"
radosgw "${c[@]}" -n client.rgw.a
for _ in $(seq 1 300); do
  curl -s -o /dev/null http://127.0.0.1:7480/ && break
  sleep 1
done
curl -s -o /dev/null http://127.0.0.1:7480/ || { echo "radosgw did not answer on 127.0.0.1:7480" >&2; exit 1; }
key=INTEROP$(openssl rand -hex 6 | tr a-f A-F)
sec=$(openssl rand -hex 20)
radosgw-admin "${c[@]}" user create --uid=interop --display-name=interop --access-key="$key" --secret-key="$sec" >/dev/null
echo "$key $sec" > "$D/s3-keys"
# The buckets, with boto3 from the test venv (contrib/install-test-tools.sh).
py=$(dirname "$(bash contrib/install-test-tools.sh | tail -n 1)")/python
"$py" -c 'import sys, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:7480", region_name="us-east-1",
                  aws_access_key_id=sys.argv[1], aws_secret_access_key=sys.argv[2])
s3.create_bucket(Bucket="interop")
s3.create_bucket(Bucket="interop-lock", ObjectLockEnabledForBucket=True)
print("interop-lock:", s3.get_object_lock_configuration(Bucket="interop-lock")["ObjectLockConfiguration"])' "$key" "$sec"
echo "==> ceph is up: buckets interop and interop-lock, keys in $D/s3-keys"
