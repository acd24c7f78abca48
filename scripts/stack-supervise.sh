#!/usr/bin/env bash
# stack-supervise.sh PIDFILE LOGFILE -- COMMAND [ARGS...]
#
# Tiny supervisor used by scripts/stack.sh. It runs COMMAND in the background
# with stdin from /dev/null and stdout/stderr appended to LOGFILE, writes the
# child's PID to PIDFILE (and its own PID to PIDFILE.sup), forwards
# TERM/INT/HUP to the child and wait()s for it.
#
# Why: PID 1 on the dev/CI machines does not reap orphans. Servers started
# directly from a script would linger as zombies after they exit. With this
# supervisor the server is always reaped by its parent; only the (tiny)
# supervisor shell itself may be left as a zombie once everything has exited.
#
# It does not restart the child: `scripts/stack.sh up` does that.
set -uo pipefail

# The whole body is a function so bash has parsed all of it before running:
# editing this file while supervisors run cannot affect them.
main() {
  if [[ $# -lt 4 || $3 != "--" ]]; then
    echo "usage: $0 PIDFILE LOGFILE -- COMMAND [ARGS...]" >&2
    exit 2
  fi
  local pidfile=$1 logfile child rc fd
  logfile=$2
  shift 3

  # Do not leak inherited descriptors (stack lock, make jobserver, a CI runner's
  # output pipe, ...) into long-running servers. 255 is bash's script fd.
  for fd in "/proc/$$/fd"/*; do
    fd=${fd##*/}
    if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2 && fd != 255)); then
      eval "exec $fd>&-" 2>/dev/null || true
    fi
  done

  child=
  # shellcheck disable=SC2317 # invoked via trap
  forward() {
    if [[ -n $child ]]; then
      kill "-$1" "$child" 2>/dev/null || true
    fi
  }
  trap 'forward TERM' TERM
  trap 'forward INT' INT
  trap 'forward HUP' HUP

  echo "$$" >"$pidfile.sup"
  echo "[$(date '+%F %T')] supervisor $$: starting: $*" >>"$logfile"
  "$@" </dev/null >>"$logfile" 2>&1 &
  child=$!
  echo "$child" >"$pidfile.tmp.$$"
  mv -f "$pidfile.tmp.$$" "$pidfile"

  # `wait` returns early when a trapped signal arrives; keep waiting until the
  # child has really been reaped (its /proc entry disappears once reaped).
  rc=0
  while :; do
    wait "$child"
    rc=$?
    [[ -e /proc/$child ]] || break
    sleep 0.05
  done
  echo "[$(date '+%F %T')] supervisor $$: child $child exited with status $rc" >>"$logfile"

  # Only remove the pid files if they are still ours (a newer `up` may have
  # replaced them already).
  if [[ -f $pidfile && $(cat "$pidfile" 2>/dev/null) == "$child" ]]; then
    rm -f "$pidfile"
  fi
  if [[ -f $pidfile.sup && $(cat "$pidfile.sup" 2>/dev/null) == "$$" ]]; then
    rm -f "$pidfile.sup"
  fi
  exit "$rc"
}

main "$@" # main always exits
