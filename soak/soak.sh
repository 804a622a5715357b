#!/usr/bin/env bash
# Soak and fault run, bounded in time, on loopback only.
#
#   soak/soak.sh                                   # 2 minutes, 1,000 connections
#   soak/soak.sh --minutes 10 --connections 5000   # the full run (RELIABILITY.md)
#   PROFILE=dev soak/soak.sh --minutes 2           # faster to build, slower to run
#   soak/soak.sh --rounds 2 --no-kills --no-reloads  # same process twice, no chaos
#   soak/soak.sh --help                            # every flag of the driver
#
# Builds wsgate and the driver (examples/soak.rs), raises the open-file limit (each
# proxied socket costs wsgate two descriptors and the driver one), and runs the driver:
# it starts echo backends and wsgate as separate processes, kills and restarts backends
# at random (SIGKILL), reloads the config (SIGHUP, a backend joins and leaves), runs a
# slow client and a flood client, and checks every echo. Exit status 0 means every pass
# criterion held; the figures are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-release}"
ulimit -n "$(ulimit -Hn)"
if [[ "$profile" == release ]]; then
  cargo build --quiet --release --bin wsgate --example soak
  dir=target/release
else
  cargo build --quiet --bin wsgate --example soak
  dir=target/debug
fi
exec "$dir/examples/soak" --wsgate "$dir/wsgate" "$@"
