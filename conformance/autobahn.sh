#!/usr/bin/env bash
# Autobahn|Testsuite through wsgate, and directly against the same echo backend.
#
#   conformance/autobahn.sh                 # quick subset (CI): cases 1-7, 9.1.1-3, 9.2.1-2
#   conformance/autobahn.sh full            # every case
#   conformance/autobahn.sh quick strict    # backend: Autobahn's own (strict) echo server
#   WSGATE=target/release/wsgate conformance/autobahn.sh full
#
# The backend is `wsgate echo` (tokio-tungstenite) by default; `strict` uses
# `wstest -m echoserver`, Autobahn's own. wsgate validates UTF-8 itself
# (`relay.validate_utf8`, on by default), so invalid text gets 1007 from wsgate whatever
# the backend would have done with it.
#
# Needs `wstest` (autobahntestsuite 0.8.2, Python 2.7). If WSTEST is unset and no
# `wstest` is on PATH, it is installed into target/autobahn/ with the first Python 2.7 found
# (pyenv's 2.7.18 here; Debian 13 has no python2 package).
# Writes conformance/reports/<mode>-<backend>/{index.json,summary.txt}; exits non-zero if any case
# that passes directly does not pass through wsgate.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-quick}"
backend="${2:-echo}"
root="$PWD"
work="$root/conformance"
venv="$root/target/autobahn"

if [[ -z "${WSTEST:-}" ]]; then
  if command -v wstest >/dev/null; then
    WSTEST=wstest
  else
    py2=""
    for c in python2.7 python2 "$HOME"/.pyenv/versions/2.7*/bin/python; do
      if "$c" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; then
        py2="$c"; break
      fi
    done
    [[ -n "$py2" ]] || { echo "autobahn: no Python 2.7 interpreter found" >&2; exit 2; }
    if [[ ! -d "$venv" ]]; then
      # Into a scratch directory first: an interrupted install must not look complete.
      rm -rf "$venv.partial"
      "$py2" -m pip install --quiet --disable-pip-version-check --prefix "$venv.partial" autobahntestsuite==0.8.2
      mv "$venv.partial" "$venv"
    fi
    site="$venv/lib/python2.7/site-packages"
    # A broken install (a package missing) must stop the run, not pass with no results.
    "$py2" -c "import site; site.addsitedir('$site'); import zope.interface, twisted.internet.reactor, autobahntestsuite.wstest" || {
      echo "autobahn: the install in $venv is broken; delete it to reinstall" >&2; exit 2; }
    cat >"$venv/wstest" <<SH
#!/bin/sh
exec "$py2" -c "import site,sys; site.addsitedir('$site'); sys.argv=['wstest']+sys.argv[1:]; from autobahntestsuite.wstest import run; run()" "\$@"
SH
    chmod +x "$venv/wstest"
    WSTEST="$venv/wstest"
  fi
fi

WSGATE="${WSGATE:-}"
if [[ -z "$WSGATE" ]]; then
  cargo build --quiet --bin wsgate
  WSGATE="$root/target/debug/wsgate"
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo_port=$(port); gate_port=$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
if [[ "$backend" == strict ]]; then
  (cd "$work" && exec "$WSTEST" -m echoserver -w "ws://127.0.0.1:$echo_port" >/dev/null 2>&1) & pids+=($!)
else
  "$WSGATE" echo --listen "127.0.0.1:$echo_port" --name echo 2>/dev/null & pids+=($!)
fi
"$WSGATE" --listen "127.0.0.1:$gate_port" --backend "ws://127.0.0.1:$echo_port" --path /ws 2>"$work/wsgate.log" & pids+=($!)
for p in "$echo_port" "$gate_port"; do
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done

if [[ "$mode" == full ]]; then
  cases='["*"]'
else
  cases='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.1.1", "9.1.2", "9.1.3", "9.2.1", "9.2.2"]'
fi
reports="$work/reports/$mode-$backend"
rm -rf "$reports"; mkdir -p "$reports"
cat >"$work/fuzzingclient.json" <<JSON
{
  "outdir": "$reports",
  "servers": [
    {"agent": "direct", "url": "ws://127.0.0.1:$echo_port"},
    {"agent": "wsgate", "url": "ws://127.0.0.1:$gate_port/ws"}
  ],
  "cases": $cases,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
started=$(date +%s)
(cd "$work" && "$WSTEST" -m fuzzingclient -s fuzzingclient.json >"$work/wstest.log" 2>&1)
echo "autobahn ($mode, backend $backend): $(( $(date +%s) - started )) s"
python3 "$work/compare.py" "$reports/index.json" "$work/known-regressions.txt" | tee "$reports/summary.txt"
exit "${PIPESTATUS[0]}"
