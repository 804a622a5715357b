#!/usr/bin/env bash
# Profiles one proxy under one scenario: syscalls per operation (perf stat on syscall
# tracepoints, which work without hardware counters) and a call-graph profile (perf record
# on the cpu-clock software event). Run bench/run.sh once first (it builds and installs).
#
#   bench/profile.sh wsgate msg64        # or: haproxy-tuned churn, nginx-tuned msg64k ...
#   perf report -i /tmp/perf-wsgate-msg64.data --no-children --sort sym
set -euo pipefail
cd "$(dirname "$0")/.."
target_name="${1:-wsgate}"
scenario="${2:-msg64}"
bin="${CARGO_TARGET_DIR:-target}/release"
export PATH="$PATH:/usr/sbin:/sbin"
ulimit -n "$(ulimit -Hn)"
out=bench/results
mkdir -p "$out"
log=$(mktemp)
taskset -c 0 "$bin/wsgate-bench" suite --wsgate "$bin/wsgate" --targets "$target_name" \
  --scenarios "$scenario" --runs 1 --warmup 1 --duration 8 --out "$(mktemp -d)" >"$log" 2>&1 &
suite=$!
sleep 2.5
# The proxy is the suite's child that is not the echo backend (for nginx: its worker).
pid=""
for c in $(pgrep -P "$suite"); do
  case "$(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null)" in
    *"wsgate-bench echo"*) ;;
    *) pid=$c ;;
  esac
done
worker=$(pgrep -P "$pid" | head -1 || true)
if [ -n "$worker" ]; then pid=$worker; fi
data="${TMPDIR:-/tmp}/perf-$target_name-$scenario.data"
perf stat -p "$pid" -e 'syscalls:sys_enter_*' -o "$out/syscalls-$target_name-$scenario.txt" -- sleep 3 || true
perf record -q -e cpu-clock -F 1999 --call-graph dwarf,32768 -p "$pid" \
  -o "$data" -- sleep 2 2>/dev/null || true
wait "$suite" || true
grep -E "^\s+$scenario" "$log" | tail -1 || true
# Syscalls per second of the proxy, largest first (perf stat counted 3 s).
awk '/syscalls:sys_enter/ { gsub(",", "", $1); if ($1 > 0) printf "%10.0f/s  %s\n", $1 / 3, $2 }' \
  "$out/syscalls-$target_name-$scenario.txt" | sort -rn | head -12 || true
echo "profile: perf report -i $data --no-children --sort sym"
perf report -i "$data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -4 || true
