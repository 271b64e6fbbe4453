#!/usr/bin/env bash
# Installs what the tests, the demo and the e2e harness need on a fresh Debian machine
# (as root): btrfs-progs, util-linux, attr, systemd, curl, openssl, stunnel4 (a TLS front
# for moto with a private CA), python3-venv, and
# moto[server]==5.1.22 in .test-tools/venv, with contrib/testing/patch-moto.py applied (its
# SigV4 checker then reads the query as sent). Prints the moto_server path on its last line.
# It says what it is about to install, and where, before it does.
#   bash contrib/install-test-tools.sh --plan   # only say what would be installed
set -euo pipefail
cd "$(dirname "$0")/.."
plan_only=0
[ "${1:-}" = --plan ] && plan_only=1

need_apt=()
command -v mkfs.btrfs >/dev/null || need_apt+=(btrfs-progs)
command -v losetup >/dev/null || need_apt+=(util-linux)
command -v getfattr >/dev/null || need_apt+=(attr)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v stunnel4 >/dev/null || need_apt+=(stunnel4)
command -v age-keygen >/dev/null || need_apt+=(age)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
venv=.test-tools/venv
need_venv=0
"$venv/bin/python" -c 'import moto, sys; sys.exit(moto.__version__ != "5.1.22")' 2>/dev/null || need_venv=1
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> will install Debian packages with apt-get: ${need_apt[*]}" >&2
fi
if [ "$need_venv" = 1 ]; then
  echo "==> will create a Python venv with moto[server]==5.1.22 (from PyPI) in $PWD/$venv (about 350 MB)" >&2
fi
if [ ${#need_apt[@]} -eq 0 ] && [ "$need_venv" = 0 ]; then
  echo "==> test tools: nothing to install (moto in $PWD/$venv)" >&2
fi
if [ "$plan_only" = 1 ]; then
  exit 0
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ "$need_venv" = 1 ]; then
  echo "==> installing moto[server]==5.1.22 into $venv" >&2
  rm -rf "$venv"
  mkdir -p .test-tools
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]==5.1.22' >&2
fi
"$venv/bin/python" contrib/testing/patch-moto.py "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$PWD/$venv/bin/moto_server"
