#!/usr/bin/env bash
# Manual smoke check of faultfs under a real chatd (RocksDB underneath): chatd runs with its data
# dir on the mount; records are appended through it; chatd is killed with SIGKILL; the unsynced
# data is dropped (`power-loss`); chatd restarts on what was fsynced and every acknowledged
# record must still be there. A second round does the same with fsyncs failing (EIO) while the
# records are written. Not a cargo test: it needs the chatd build (RocksDB).
#
#   faultfs/smoke-chatd.sh            from the workspace root, as root, with /dev/fuse
#
# Binaries: FAULTFS (default: $CARGO_TARGET_DIR or target, release/chat-faultfs), and chatd and
# chatctl from BIN_DIR (default target/release). PORT (default 7491) is chatd's address.
set -euo pipefail

FAULTFS=${FAULTFS:-${CARGO_TARGET_DIR:-target}/release/chat-faultfs}
BIN_DIR=${BIN_DIR:-target/release}
PORT=${PORT:-7491}
RECORDS=${RECORDS:-40}

work=$(mktemp -d /tmp/faultfs-smoke.XXXXXX)
mnt=$work/mnt
mkdir "$work/backing" "$mnt"
fs_pid=
chatd_pid=
passed=

say() { echo "smoke: $*" >&2; }
fail() { say "FAILED: $*"; say "logs in $work"; exit 1; }

cleanup() {
  if [ -n "$chatd_pid" ]; then kill -9 "$chatd_pid" 2>/dev/null || true; wait "$chatd_pid" 2>/dev/null || true; fi
  if [ -n "$fs_pid" ]; then kill -TERM "$fs_pid" 2>/dev/null || true; wait "$fs_pid" 2>/dev/null || true; fi
  if [ -n "$passed" ] && ! mounted; then rm -rf "$work"; fi
}
trap cleanup EXIT

ctl() { "$FAULTFS" ctl --control "$work/ctl.sock" "$@"; }
admin() { "$BIN_DIR/chatctl" --addr "127.0.0.1:$PORT" --data-dir "$mnt/data" --timeout 10s "$@"; }
mounted() { awk -v m="$mnt" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

start_faultfs() {
  "$FAULTFS" mount --backing "$work/backing" --mountpoint "$mnt" --control "$work/ctl.sock" \
    >"$work/faultfs.log" 2>&1 &
  fs_pid=$!
  for _ in $(seq 100); do mounted && return 0; sleep 0.1; done
  fail "faultfs did not mount"
}

start_chatd() {
  "$BIN_DIR/chatd" --data-dir "$mnt/data" --listen "127.0.0.1:$PORT" --partitions 4 \
    >>"$work/chatd.log" 2>&1 &
  chatd_pid=$!
  for _ in $(seq 120); do
    admin health >/dev/null 2>&1 && return 0
    kill -0 "$chatd_pid" 2>/dev/null || fail "chatd exited (see $work/chatd.log)"
    sleep 0.5
  done
  fail "chatd did not become healthy"
}

crash_chatd() {
  kill -9 "$chatd_pid"
  wait "$chatd_pid" 2>/dev/null || true
  chatd_pid=
}

# Append up to $2 records tagged $1 one by one, stopping at the first refused; print the
# acknowledged ones.
append() {
  for i in $(seq "$2"); do
    admin append -p 0 "$1-$i" >/dev/null 2>&1 || return 0
    echo "$1-$i"
  done
}

# Every record named in file $1 must be in partition 0.
check_acked() {
  admin read -p 0 --limit 100000 >"$work/read.txt" 2>/dev/null
  local missing=0
  while read -r rec; do
    grep -q -- $'\t'"$rec\$" "$work/read.txt" || { say "lost acknowledged record $rec"; missing=1; }
  done <"$1"
  [ "$missing" = 0 ] || fail "acknowledged records lost"
}

start_faultfs
start_chatd
say "chatd serving on the mount: $(ctl status)"

append plain "$RECORDS" >"$work/acked1.txt"
say "round 1: $(wc -l <"$work/acked1.txt") of $RECORDS records acknowledged; $(ctl dirty)"
crash_chatd
say "round 1: $(ctl power-loss)"
start_chatd
check_acked "$work/acked1.txt"
say "round 1: chatd reopened after the power loss with every acknowledged record"

ctl fail fsync eio >/dev/null
append eio 3 >"$work/acked2.txt"
say "round 2 (fsync fails with EIO): $(wc -l <"$work/acked2.txt") records acknowledged before the first refusal"
crash_chatd
ctl fail clear >/dev/null
say "round 2: $(ctl power-loss)"
start_chatd
check_acked "$work/acked1.txt"
check_acked "$work/acked2.txt"
say "round 2: chatd reopened with every acknowledged record"

kill -TERM "$chatd_pid"; wait "$chatd_pid" 2>/dev/null || true; chatd_pid=
say "OK ($(ctl status))"
passed=1
