#!/usr/bin/env bash
# scripts/stack.sh — private local stack for flashsync development and tests.
#
#   scripts/stack.sh up     [SERVICE...]   start (idempotent; fast when already up)
#   scripts/stack.sh down   [SERVICE...]   stop what this script started; keeps data
#   scripts/stack.sh status [SERVICE...]   print service, address, up/down
#                                          (exit 0 if all listed are up, 3 otherwise)
#   scripts/stack.sh seed                  load stack/sql/demo.sql (+ demo cache keys)
#   scripts/stack.sh services              list service names
#
# Without SERVICE arguments every service is affected. Services:
#   mariadb                        MariaDB 10.11, 127.0.0.1:13306, root / empty password,
#                                  ROW binlog, FULL row image and row metadata, server_id 1
#   redis-16379 redis-16380        Redis group hot-a
#   redis-16381 redis-16382        Redis group hot-b
#   redis-16383                    the seckill reservation counters (not a cache group:
#                                  the binlog path never touches it); append-only file on,
#                                  fsync every second
#   nsqlookupd                     nsqlookupd, TCP 127.0.0.1:14160, HTTP 127.0.0.1:14161
#   nsqd                           nsqd, TCP 127.0.0.1:14150, HTTP 127.0.0.1:14151
#   nsqd-2                         nsqd, TCP 127.0.0.1:14152, HTTP 127.0.0.1:14153
#                                  (both nsqd register with nsqlookupd, which starts first)
#   demo-backend                   `flashsync-demo backend`, 127.0.0.1:16090: item pages from
#                                  shop.item with xkey headers (binary built into .stack/bin)
#   varnish-16081 varnish-16082    Varnish 7 + xkey (configs/varnish/flashsync.vcl) in front of
#                                  demo-backend; HTTP group "varnish"; admin port disabled
#
# Everything (data, logs, pid files, the nsqd and nsqlookupd binaries) lives
# under $REPO/.stack/, wherever the repository is checked out: no server
# needs another user to reach the checkout (all of them, varnishd's
# processes included, run as the user who ran `up`). A running service whose
# command line in this script has changed since `up` started it is restarted
# by the next `up`.
# Each server runs under scripts/stack-supervise.sh, which wait()s on it, because
# PID 1 on our machines does not reap orphans. Liveness is decided by probing the
# service (ping), never by `kill -0` alone.
#
# Adding a service (e.g. varnish): append its name to SERVICES, add its commands to
# REQUIRES, and define <kind>_addr, <kind>_exe, <kind>_ping and <kind>_cmd (plus the
# optional <kind>_prepare, <kind>_cleanup, <kind>_after_start, <kind>_start_timeout).
# <kind> is the part of the service name before the first '-'.
#
# FLASHSYNC_STACK_PORT_OFFSET=N (default 0) runs a second, separate stack, e.g.
# for a test next to the shared one: N is added to every port above (MariaDB,
# Redis, nsqlookupd, nsqd, the demo backend, the Varnish listen ports and the
# backend port in Varnish's VCL) while the service names stay the same
# (varnish-16081 listens on 16081+N). Such a stack keeps its state in
# $REPO/.stack/offset-N/ (its own lock, pid files and data) so that it can
# never mistake the shared stack's servers for its own, and its demo backend
# and `seed` use a copy of configs/dev.toml with the stack's addresses moved
# by N (.stack/offset-N/dev.toml). With N=0 nothing changes. Keep every port
# below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768 and
# up by default), i.e. N <= 16384: a port in it may be taken at any moment by
# some client connection's local end, and the server then fails to bind.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
SUPERVISE=$SCRIPT_DIR/stack-supervise.sh
export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

# The stack's ports without offset. Redis and Varnish take theirs from the
# service name (redis-16379, varnish-16081).
BASE_PORTS=(13306 14150 14151 14152 14153 14160 14161 16379 16380 16381 16382 16383 16090 16081 16082)
PORT_OFFSET=${FLASHSYNC_STACK_PORT_OFFSET:-0}
if [[ ! $PORT_OFFSET =~ ^[0-9]{1,5}$ ]] || ((10#$PORT_OFFSET + 16383 > 65535)); then
  printf 'stack: error: FLASHSYNC_STACK_PORT_OFFSET=%s is not a number from 0 to %d\n' \
    "$PORT_OFFSET" $((65535 - 16383)) >&2
  exit 2
fi
PORT_OFFSET=$((10#$PORT_OFFSET))
# port BASE: the port the service with port BASE listens on in this stack.
port() { echo $(($1 + PORT_OFFSET)); }

if ((PORT_OFFSET == 0)); then
  STACK=$REPO/.stack
  STACK_CONFIG=$REPO/configs/dev.toml
else
  STACK=$REPO/.stack/offset-$PORT_OFFSET
  STACK_CONFIG=$STACK/dev.toml
fi

MARIADB_PORT=$(port 13306)
NSQLOOKUPD_TCP_PORT=$(port 14160)
NSQLOOKUPD_HTTP_PORT=$(port 14161)
declare -A NSQD_TCP_PORT=([nsqd]=$(port 14150) [nsqd-2]=$(port 14152))
declare -A NSQD_HTTP_PORT=([nsqd]=$(port 14151) [nsqd-2]=$(port 14153))
declare -A REDIS_GROUP=([16379]=hot-a [16380]=hot-a [16381]=hot-b [16382]=hot-b [16383]=seckill)
DEMO_BACKEND_PORT=$(port 16090)

# Start order: nsqlookupd before the nsqd that register with it.
SERVICES=(mariadb redis-16379 redis-16380 redis-16381 redis-16382 redis-16383 nsqlookupd nsqd nsqd-2
  demo-backend varnish-16081 varnish-16082)

# "command apt-package" pairs; missing commands (or, for an absolute path,
# missing files) are installed with apt.
REQUIRES=(
  "mariadbd mariadb-server"
  "mariadb-install-db mariadb-server"
  "mariadb mariadb-client"
  "mariadb-admin mariadb-client"
  "redis-server redis-server"
  "redis-cli redis-tools"
  "curl curl"
  "varnishd varnish"
  "/usr/lib/x86_64-linux-gnu/varnish/vmods/libvmod_xkey.so varnish-modules"
  "nginx nginx-light"
  "chromium chromium"
)

DEFAULT_START_TIMEOUT=30 # seconds to wait for a service to answer
STOP_TIMEOUT=60          # seconds to wait for a service to exit after SIGTERM

log() { printf '%s\n' "stack: $*"; }
warn() { printf '%s\n' "stack: $*" >&2; }
die() {
  warn "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------
# Generic process helpers
# ---------------------------------------------------------------------------

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
  local pid=$1 stat
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

# pid_runs PID EXE: PID is alive and runs the executable EXE.
pid_runs() {
  local pid=$1 want have
  pid_alive "$pid" || return 1
  want=$(readlink -f "$2" 2>/dev/null) || return 1
  have=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  have=${have% (deleted)}
  [[ $have == "$want" ]]
}

# pid_is_supervisor PID: PID is alive and is one of our supervisors.
pid_is_supervisor() {
  local pid=$1
  pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$SUPERVISE"
}

pidfile() { echo "$STACK/$1.pid"; }
logfile() { echo "$STACK/logs/$1.log"; }
read_pid() { cat "$1" 2>/dev/null || true; }

now() { echo "${EPOCHREALTIME//[^0-9]/}"; } # microseconds

# ---------------------------------------------------------------------------
# Service dispatch
# ---------------------------------------------------------------------------

kind_of() { echo "${1%%-*}"; }

# hook NAME HOOK [ARGS...]: call <kind>_<hook> NAME if defined.
hook() {
  local fn
  fn="$(kind_of "$1")_$2"
  if declare -F "$fn" >/dev/null; then
    "$fn" "$1" "${@:3}"
  fi
}
svc_ping() { "$(kind_of "$1")_ping" "$1"; }
svc_addr() { "$(kind_of "$1")_addr" "$1"; }
svc_exe() { "$(kind_of "$1")_exe" "$1"; }
svc_start_timeout() {
  local fn
  fn="$(kind_of "$1")_start_timeout"
  if declare -F "$fn" >/dev/null; then "$fn"; else echo "$DEFAULT_START_TIMEOUT"; fi
}

# svc_pid NAME: prints the recorded server PID if that process is alive and ours.
svc_pid() {
  local pid
  pid=$(read_pid "$(pidfile "$1")")
  if [[ -n $pid ]] && pid_runs "$pid" "$(svc_exe "$1")"; then
    echo "$pid"
  fi
}

check_services() {
  local s t ok
  for s in "$@"; do
    ok=
    for t in "${SERVICES[@]}"; do [[ $s == "$t" ]] && ok=1; done
    [[ -n $ok ]] || die "unknown service '$s' (known: ${SERVICES[*]})"
  done
}

# spawn NAME: start the service under a supervisor in its own session.
spawn() {
  local name=$1 pf lf
  pf=$(pidfile "$name")
  lf=$(logfile "$name")
  CMD=()
  "$(kind_of "$name")_cmd" "$name"
  mkdir -p "$STACK/logs"
  printf '%s\n' "${CMD[@]}" >"$pf.cmd"
  # 9>&-: never let servers inherit the stack lock.
  # shellcheck disable=SC2094 # the supervisor only appends to the log
  setsid -f "$SUPERVISE" "$pf" "$lf" -- "${CMD[@]}" </dev/null >>"$lf" 2>&1 9>&-
}

# svc_cmd_changed NAME: the running server was started (by spawn, which
# records it) with another command line than the one this script builds now.
# A server without a record counts as unchanged.
svc_cmd_changed() {
  local rec
  rec="$(pidfile "$1").cmd"
  [[ -f $rec && -n $(svc_pid "$1") ]] || return 1
  CMD=()
  "$(kind_of "$1")_cmd" "$1"
  [[ $(<"$rec") != "$(printf '%s\n' "${CMD[@]}")" ]]
}

# start_service NAME: make sure the service is running; does not wait for it.
# Prints nothing and returns 0 when the service already answers with the
# current command line.
STARTED=()
start_service() {
  local name=$1 pid
  if svc_ping "$name"; then
    if ! svc_cmd_changed "$name"; then
      return 0
    fi
    log "$name: command line changed; restarting it"
    stop_service "$name"
  fi
  pid=$(svc_pid "$name")
  if [[ -n $pid ]]; then
    # Our process is alive but does not answer (yet): maybe still starting.
    if wait_ready "$name" quiet; then
      return 0
    fi
    warn "$name: pid $pid does not answer; restarting it"
    stop_service "$name"
  fi
  # Stale state from a crash: pid files, sockets, ...
  rm -f "$(pidfile "$name")" "$(pidfile "$name").sup"
  hook "$name" cleanup
  hook "$name" prepare
  log "$name: starting on $(svc_addr "$name")"
  spawn "$name"
  STARTED+=("$name")
}

# wait_ready NAME [quiet]: wait (bounded) until the service answers its ping.
wait_ready() {
  local name=$1 quiet=${2:-} timeout deadline grace pid
  timeout=$(svc_start_timeout "$name")
  deadline=$(($(now) + timeout * 1000000))
  grace=$(($(now) + 2000000))
  while :; do
    if svc_ping "$name"; then
      return 0
    fi
    if (($(now) > grace)); then
      pid=$(read_pid "$(pidfile "$name")")
      if [[ -z $pid ]] || ! pid_alive "$pid"; then
        [[ -n $quiet ]] || { warn "$name: process exited during startup; last log lines:"; show_logs "$name"; }
        return 1
      fi
    fi
    if (($(now) > deadline)); then
      [[ -n $quiet ]] || { warn "$name: not ready after ${timeout}s; last log lines:"; show_logs "$name"; }
      return 1
    fi
    sleep 0.1
  done
}

show_logs() {
  local f
  for f in "$(logfile "$1")" $(hook "$1" extra_logs); do
    [[ -f $f ]] || continue
    warn "--- $f"
    tail -n 25 "$f" >&2 || true
  done
}

# stop_signal NAME: send SIGTERM to the server this script started (if any).
stop_signal() {
  local pid
  pid=$(svc_pid "$1")
  if [[ -n $pid ]]; then
    log "$1: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
  fi
}

# stop_wait NAME: wait (bounded) for the server and its supervisor to exit.
stop_wait() {
  local name=$1 pf pid sup exe deadline
  pf=$(pidfile "$name")
  pid=$(read_pid "$pf")
  sup=$(read_pid "$pf.sup")
  exe=$(svc_exe "$name")
  if [[ -n $pid ]] && pid_runs "$pid" "$exe"; then
    deadline=$(($(now) + STOP_TIMEOUT * 1000000))
    while pid_runs "$pid" "$exe" && (($(now) < deadline)); do sleep 0.1; done
    if pid_runs "$pid" "$exe"; then
      warn "$name: pid $pid still running after ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$(($(now) + 10 * 1000000))
      while pid_runs "$pid" "$exe" && (($(now) < deadline)); do sleep 0.1; done
    fi
  fi
  if [[ -n $sup ]] && pid_is_supervisor "$sup"; then
    deadline=$(($(now) + 5 * 1000000))
    while pid_is_supervisor "$sup" && (($(now) < deadline)); do sleep 0.05; done
    if pid_is_supervisor "$sup"; then kill -TERM "$sup" 2>/dev/null || true; fi
  fi
  if [[ -n $pid ]] && pid_runs "$pid" "$exe"; then
    warn "$name: pid $pid did not exit"
    return 1
  fi
  rm -f "$pf" "$pf.sup" "$pf.cmd"
  hook "$name" cleanup
}

stop_service() {
  stop_signal "$1"
  stop_wait "$1"
}

# write_stack_config: with a port offset, write $STACK_CONFIG, configs/dev.toml
# with the addresses of this stack's servers ("127.0.0.1:PORT") moved by the
# offset, for the commands this script runs (demo-backend, seed).
write_stack_config() {
  ((PORT_OFFSET)) || return 0
  local p expr=()
  for p in "${BASE_PORTS[@]}"; do
    expr+=(-e "s/\"127\\.0\\.0\\.1:$p\"/\"127.0.0.1:$(port "$p")\"/g")
  done
  mkdir -p "$STACK"
  {
    echo "# Written by scripts/stack.sh: configs/dev.toml for the stack with port offset $PORT_OFFSET."
    sed "${expr[@]}" "$REPO/configs/dev.toml"
  } >"$STACK_CONFIG.tmp"
  mv -f "$STACK_CONFIG.tmp" "$STACK_CONFIG"
}

# ---------------------------------------------------------------------------
# Package installation
# ---------------------------------------------------------------------------

ensure_packages() {
  local entry cmd pkg missing=() p seen
  for entry in "${REQUIRES[@]}"; do
    cmd=${entry%% *}
    pkg=${entry#* }
    if [[ $cmd == /* ]]; then
      [[ -e $cmd ]] && continue
    elif command -v "$cmd" >/dev/null 2>&1; then
      continue
    fi
    seen=
    for p in "${missing[@]}"; do [[ $p == "$pkg" ]] && seen=1; done
    [[ -n $seen ]] || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "missing packages: ${missing[*]} (install them or run as root)"
  log "installing ${missing[*]} with apt"
  # Keep the package scripts from starting the system-wide services; the stack
  # runs its own private instances.
  local policy=/usr/sbin/policy-rc.d created_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  } 9>&- || rc=$?
  [[ -z $created_policy ]] || rm -f "$policy"
  ((rc == 0)) || die "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------------------
# mariadb
# ---------------------------------------------------------------------------

MARIADB_DIR=$STACK/mariadb
MARIADB_SOCK=$MARIADB_DIR/mysqld.sock

mariadb_addr() { echo "127.0.0.1:$MARIADB_PORT"; }
mariadb_exe() { command -v mariadbd; }
mariadb_start_timeout() { echo 60; }
mariadb_extra_logs() { echo "$MARIADB_DIR/error.log"; }

# mariadb_client [ARGS...]: the mariadb CLI connected as root over TCP.
mariadb_client() {
  mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MARIADB_PORT" -uroot "$@"
}

mariadb_ping() {
  timeout 5 mariadb-admin --no-defaults --protocol=TCP -h127.0.0.1 -P"$MARIADB_PORT" -uroot \
    --connect-timeout=2 ping >/dev/null 2>&1
}

mariadb_cleanup() {
  rm -f "$MARIADB_SOCK" "$MARIADB_SOCK.lock" "$MARIADB_DIR/mariadbd.pid"
}

mariadb_prepare() {
  mkdir -p "$MARIADB_DIR" "$MARIADB_DIR/tmp"
  if [[ ! -f $MARIADB_DIR/initialized ]]; then
    log "mariadb: initialising $MARIADB_DIR/data"
    rm -rf "$MARIADB_DIR/data" "$MARIADB_DIR/binlog"
    mkdir -p "$MARIADB_DIR/data" "$MARIADB_DIR/binlog"
    # Runs in bootstrap mode (no binlog): remove the anonymous accounts.
    printf "DELETE FROM mysql.global_priv WHERE User='';\n" >"$MARIADB_DIR/init-extra.sql"
    if ! mariadb-install-db --no-defaults --user=root --basedir=/usr \
      --datadir="$MARIADB_DIR/data" \
      --auth-root-authentication-method=normal --skip-test-db \
      --extra-file="$MARIADB_DIR/init-extra.sql" \
      >"$MARIADB_DIR/install.log" 2>&1 9>&-; then
      tail -n 30 "$MARIADB_DIR/install.log" >&2
      die "mariadb-install-db failed (see $MARIADB_DIR/install.log)"
    fi
    touch "$MARIADB_DIR/initialized"
  fi
  mkdir -p "$MARIADB_DIR/binlog"
}

mariadb_cmd() {
  CMD=(
    "$(mariadb_exe)" --no-defaults
    --user=root
    --datadir="$MARIADB_DIR/data"
    --tmpdir="$MARIADB_DIR/tmp"
    --bind-address=127.0.0.1
    --port="$MARIADB_PORT"
    --socket="$MARIADB_SOCK"
    --pid-file="$MARIADB_DIR/mariadbd.pid"
    --log-error="$MARIADB_DIR/error.log"
    --server-id=1
    --log-bin="$MARIADB_DIR/binlog/mysql-bin"
    --binlog-format=ROW
    --binlog-row-image=FULL
    --binlog-row-metadata=FULL
    --expire-logs-days=2
    --skip-name-resolve
    --innodb-buffer-pool-size=128M
    --innodb-flush-log-at-trx-commit=2
    --max-connections=500
    --character-set-server=utf8mb4
    --collation-server=utf8mb4_general_ci
  )
}

mariadb_after_start() {
  local out
  if ! out=$(mariadb_client -N -e 'SELECT 1' 2>&1) || [[ $out != 1 ]]; then
    die "mariadb: root@127.0.0.1 cannot log in: $out"
  fi
}

# ---------------------------------------------------------------------------
# redis-<port>
# ---------------------------------------------------------------------------

# redis_port NAME: the port in the service name; redis_listen_port NAME: the
# port it listens on (plus the offset).
redis_port() { echo "${1#redis-}"; }
redis_listen_port() { port "$(redis_port "$1")"; }
redis_addr() { echo "127.0.0.1:$(redis_listen_port "$1") (${REDIS_GROUP[$(redis_port "$1")]:-?})"; }
redis_exe() { command -v redis-server; }
redis_ping() {
  [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$(redis_listen_port "$1")" ping 2>/dev/null) == PONG ]]
}
redis_prepare() { mkdir -p "$STACK/redis/$(redis_port "$1")"; }
redis_cmd() {
  local port
  port=$(redis_port "$1")
  CMD=(
    "$(redis_exe)"
    --port "$(redis_listen_port "$1")"
    --bind 127.0.0.1
    --protected-mode yes
    --dir "$STACK/redis/$port"
    --save ''
    --daemonize no
    --logfile ''
  )
  # The reservation counters survive a restart (fsync every second); the
  # cache groups are caches and need no persistence.
  if [[ ${REDIS_GROUP[$port]:-} == seckill ]]; then
    CMD+=(--appendonly yes --appendfsync everysec)
  else
    CMD+=(--appendonly no)
  fi
}

# ---------------------------------------------------------------------------
# nsqlookupd, nsqd, nsqd-2
# ---------------------------------------------------------------------------

nsq_build_stamp() {
  (cd "$REPO/stack/nsqd" && cat go.mod go.sum ./*.go && go version) | sha256sum | cut -d' ' -f1
}

# nsq_build APP: build $STACK/bin/APP (nsqd or nsqlookupd) from the stack/nsqd
# module when it is missing or the module changed.
nsq_build() {
  local app=$1 bin=$STACK/bin/$1 stamp
  mkdir -p "$STACK/bin"
  command -v go >/dev/null || die "go not found (expected /usr/local/go/bin/go)"
  stamp=$(nsq_build_stamp)
  if [[ ! -x $bin || $(cat "$bin.stamp" 2>/dev/null) != "$stamp" ]]; then
    log "$app: building $bin"
    (cd "$REPO/stack/nsqd" &&
      GOWORK=off go build -o "$bin.tmp" "github.com/nsqio/nsq/apps/$app") 9>&- ||
      die "building $app failed"
    mv -f "$bin.tmp" "$bin"
    echo "$stamp" >"$bin.stamp"
  fi
}

nsqlookupd_addr() { echo "tcp 127.0.0.1:$NSQLOOKUPD_TCP_PORT, http 127.0.0.1:$NSQLOOKUPD_HTTP_PORT"; }
nsqlookupd_exe() { echo "$STACK/bin/nsqlookupd"; }
nsqlookupd_ping() {
  [[ $(curl -s -m 2 "http://127.0.0.1:$NSQLOOKUPD_HTTP_PORT/ping" 2>/dev/null) == OK ]]
}
nsqlookupd_prepare() { nsq_build nsqlookupd; }
nsqlookupd_cmd() {
  CMD=(
    "$(nsqlookupd_exe)"
    --tcp-address="127.0.0.1:$NSQLOOKUPD_TCP_PORT"
    --http-address="127.0.0.1:$NSQLOOKUPD_HTTP_PORT"
    --broadcast-address=127.0.0.1
  )
}

# nsqd and nsqd-2 differ in their ports and data directory ($STACK/<name>).
nsqd_addr() { echo "tcp 127.0.0.1:${NSQD_TCP_PORT[$1]}, http 127.0.0.1:${NSQD_HTTP_PORT[$1]}"; }
nsqd_exe() { echo "$STACK/bin/nsqd"; }
nsqd_ping() {
  [[ $(curl -s -m 2 "http://127.0.0.1:${NSQD_HTTP_PORT[$1]}/ping" 2>/dev/null) == OK ]]
}

nsqd_prepare() {
  mkdir -p "$STACK/$1"
  nsq_build nsqd
  # An nsqd that finds no nsqlookupd retries only at its next heartbeat
  # (15 s): let a starting nsqlookupd answer first.
  if [[ -n $(svc_pid nsqlookupd) ]]; then
    wait_ready nsqlookupd quiet || true
  fi
}

nsqd_cmd() {
  CMD=(
    "$(nsqd_exe)"
    --tcp-address="127.0.0.1:${NSQD_TCP_PORT[$1]}"
    --http-address="127.0.0.1:${NSQD_HTTP_PORT[$1]}"
    --data-path="$STACK/$1"
    --broadcast-address=127.0.0.1
    --lookupd-tcp-address="127.0.0.1:$NSQLOOKUPD_TCP_PORT"
  )
}

# ---------------------------------------------------------------------------
# demo-backend (kind "demo")
# ---------------------------------------------------------------------------

# demo_build: build $STACK/bin/flashsync-demo from this repo (go build is
# incremental: fast when nothing changed). Run when demo-backend starts; to
# pick up a code change: scripts/stack.sh down demo-backend && scripts/stack.sh up
demo_build() {
  local bin=$STACK/bin/flashsync-demo
  mkdir -p "$STACK/bin"
  command -v go >/dev/null || die "go not found (expected /usr/local/go/bin/go)"
  (cd "$REPO" && go build -o "$bin.tmp" ./cmd/flashsync-demo) 9>&- || die "building flashsync-demo failed"
  mv -f "$bin.tmp" "$bin"
}

demo_addr() { echo "127.0.0.1:$DEMO_BACKEND_PORT (shop.item pages)"; }
demo_exe() { echo "$STACK/bin/flashsync-demo"; }
demo_ping() {
  [[ $(curl -s -m 2 "http://127.0.0.1:$DEMO_BACKEND_PORT/healthz" 2>/dev/null) == ok ]]
}
demo_prepare() {
  write_stack_config
  demo_build
}
demo_cmd() {
  CMD=(
    "$(demo_exe)" backend
    -config "$STACK_CONFIG"
    -addr "127.0.0.1:$DEMO_BACKEND_PORT"
  )
}

# ---------------------------------------------------------------------------
# varnish-<port>
# ---------------------------------------------------------------------------

# Each instance's directory holds its varnishd working directory (-n) and
# flashsync-backend.vcl, which configs/varnish/flashsync.vcl includes through
# vcl_path (this directory first): the backend is the demo backend.
# varnish_port NAME: the port in the service name; varnish_listen_port NAME:
# the port it listens on (plus the offset).
varnish_port() { echo "${1#varnish-}"; }
varnish_listen_port() { port "$(varnish_port "$1")"; }
varnish_dir() { echo "$STACK/$1"; }
varnish_addr() { echo "127.0.0.1:$(varnish_listen_port "$1") (http group varnish)"; }
varnish_exe() { command -v varnishd; }
varnish_start_timeout() { echo 60; }
varnish_ping() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$(varnish_listen_port "$1")/healthz" 2>/dev/null)
  [[ -n $code && $code != 000 ]]
}
varnish_prepare() {
  local dir
  dir=$(varnish_dir "$1")
  mkdir -p "$dir"
  printf 'backend default {\n    .host = "127.0.0.1";\n    .port = "%s";\n    .connect_timeout = 1s;\n    .first_byte_timeout = 5s;\n}\n' \
    "$DEMO_BACKEND_PORT" >"$dir/flashsync-backend.vcl"
}
varnish_cmd() {
  local dir
  dir=$(varnish_dir "$1")
  CMD=(
    "$(varnish_exe)" -F
    # -j none: every varnishd process (manager, VCL compiler, child) runs as
    # the user who ran `up`, like the stack's other servers. The default jail
    # for root (unix) drops the compiler and the child to the users varnish
    # and vcache, which cannot read the VCL, vcl_path or the working
    # directory when any directory above the checkout is closed to them:
    # /root (0700) on Debian, a clone under `mktemp -d`. The instance listens
    # on 127.0.0.1 only and has no admin port.
    -j none
    -a "127.0.0.1:$(varnish_listen_port "$1")"
    -f "$REPO/configs/varnish/flashsync.vcl"
    -n "$dir/work"
    -T none
    -s "malloc,64m"
    -p "vcl_path=$dir:$REPO/configs/varnish"
    -p thread_pools=1
    -p thread_pool_min=10
    -p thread_pool_max=200
    # A refused connection (demo-backend not up yet) must not fail the next
    # fetches for 250 ms.
    -p backend_remote_error_holddown=0
  )
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

lock_stack() {
  mkdir -p "$STACK"
  exec 9>"$STACK/.lock"
  flock -w 600 9 || die "could not lock $STACK/.lock"
}

cmd_up() {
  local s failed=()
  (($#)) || set -- "${SERVICES[@]}"
  check_services "$@"
  lock_stack
  # Fast path: everything answers already.
  local all=1
  for s in "$@"; do
    if ! svc_ping "$s" || svc_cmd_changed "$s"; then
      all=
      break
    fi
  done
  if [[ -n $all ]]; then
    log "up: ${*} already running"
    migrate_seckill "$@"
    return 0
  fi
  ensure_packages
  STARTED=()
  for s in "$@"; do start_service "$s"; done
  for s in "${STARTED[@]}"; do
    wait_ready "$s" || failed+=("$s")
  done
  ((${#failed[@]} == 0)) || die "failed to start: ${failed[*]}"
  for s in "${STARTED[@]}"; do hook "$s" after_start; done
  migrate_seckill "$@"
  log "up: all requested services are running"
}

# migrate_seckill SERVICE...: with mariadb among them, create the flash-sale
# database and tables (seckill/schema.sql, idempotent; `flashsync seckill`
# applies the same file at start).
migrate_seckill() {
  local s
  for s in "$@"; do
    [[ $s == mariadb ]] || continue
    mariadb_client -e 'CREATE DATABASE IF NOT EXISTS seckill' &&
      mariadb_client seckill <"$REPO/seckill/schema.sql" ||
      die "applying seckill/schema.sql to database seckill failed"
  done
}

cmd_down() {
  local s rc=0
  (($#)) || set -- "${SERVICES[@]}"
  check_services "$@"
  [[ -d $STACK ]] || return 0
  lock_stack
  for s in "$@"; do stop_signal "$s"; done
  for s in "$@"; do stop_wait "$s" || rc=1; done
  ((rc == 0)) || die "some services did not stop"
  log "down: done"
}

cmd_status() {
  local s state pid rc=0
  (($#)) || set -- "${SERVICES[@]}"
  check_services "$@"
  printf '%-14s %-42s %-5s %s\n' SERVICE ADDRESS STATE PID
  for s in "$@"; do
    if svc_ping "$s"; then state=up; else state=down; rc=3; fi
    pid=$(svc_pid "$s")
    printf '%-14s %-42s %-5s %s\n' "$s" "$(svc_addr "$s")" "$state" "${pid:--}"
  done
  return "$rc"
}

cmd_seed() {
  mariadb_ping || die "MariaDB is not answering on $(mariadb_addr); run '$0 up' first"
  mariadb_client <"$REPO/stack/sql/demo.sql" || die "applying stack/sql/demo.sql failed"
  log "seed: applied stack/sql/demo.sql ($(mariadb_client -N -e 'SELECT COUNT(*) FROM shop.item') rows in shop.item)"
  if [[ -f $REPO/configs/dev.toml && -d $REPO/cmd/flashsync ]]; then
    write_stack_config
    log "seed: creating the flash-sale tables (flashsync seckill-migrate) and the demo sale"
    (cd "$REPO" && go run ./cmd/flashsync seckill-migrate -config "$STACK_CONFIG") 9>&-
    mariadb_client <"$REPO/stack/sql/seckill-demo.sql" || die "applying stack/sql/seckill-demo.sql failed"
    redis-cli -h 127.0.0.1 -p "$(port 16383)" del 'sk:{1}:stock' 'sk:{1}:users' 'sk:{1}:req' 'sk:{1}:ver' >/dev/null ||
      die "resetting the demo sale's reservation counters in redis-16383 failed"
    log "seed: writing demo cache keys to Redis (flashsync-demo seed-cache)"
    (cd "$REPO" && go run ./cmd/flashsync-demo seed-cache -config "$STACK_CONFIG") 9>&-
  else
    log "seed: note: configs/dev.toml or cmd/flashsync not present yet; skipping the Redis cache keys"
  fi
}

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  status) cmd_status "$@" ;;
  seed) cmd_seed "$@" ;;
  services) printf '%s\n' "${SERVICES[@]}" ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
  esac
}

main "$@"
