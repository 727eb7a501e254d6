#!/bin/sh
# Runs the strategy comparison on this machine (local platform, embedded store) and plots it with
# `fedkeeper report`. Run from any folder: Logs/ and the embedded store are written there.
#   sh examples/strategies/run.sh [ROUNDS]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
stamp=$(date -u +%Y%m%d-%H%M%S)
rounds=${1:-20}
ids=""
for name in fedavg fedadam fedprox fedavg-poisoned trimmed-mean-poisoned dp-fedavg-low-noise dp-fedavg-high-noise; do
    fedkeeper start -q -c "$here/$name.yaml" --rounds "$rounds" --run-id "$name-$stamp"
    ids="$ids $name-$stamp"
done
# shellcheck disable=SC2086  # one argument per run id
fedkeeper report $ids --plot "strategies-$stamp.png"
fedkeeper report $ids --csv > "strategies-$stamp.csv"
echo "plot: strategies-$stamp.png, rounds: strategies-$stamp.csv"
