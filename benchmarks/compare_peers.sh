#!/usr/bin/env bash
# keras_flow beside the other Glow implementations, in one run on this machine: the peers of
# ../shared/peers (if that folder is there; it is not part of this repository), then
# benchmarks/throughput.py on the same workloads in float32 and mixed_bfloat16; REPEATS times.
# Each repeat measures workload by workload, the peers and keras_flow back to back (the peers
# first in odd repeats, keras_flow first in even ones), so that the figures a ratio pairs are
# minutes apart and a drift of the machine's speed favours neither. Prints the tables of
# benchmarks/report.py, the second with the ratio of each repeat.
#
#   bash benchmarks/compare_peers.sh                      # normflows + TFP, W1 and W2
#   PEERS=normflows WORKLOADS=W1 REPEATS=3 bash benchmarks/compare_peers.sh
#   PEERS_DIR=/path/to/peers bash benchmarks/compare_peers.sh
# Env: PEERS (default "normflows tfp"), WORKLOADS ("W1 W2"), REPEATS (1), PRECISIONS
# ("off bf16"), BATCH_SHARDS ("0": throughput.py's --batch-shards values, e.g. "0 1" adds the
# unsharded run), RESULTS (the JSON-lines file; default /tmp/keras_flow-compare-DATE.jsonl).
# The peers' run.sh creates its virtual environments on first use (about 6 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
PEERS_DIR="${PEERS_DIR:-$(cd .. && pwd)/shared/peers}"
WORKLOADS="${WORKLOADS:-W1 W2}"
REPEATS="${REPEATS:-1}"
PRECISIONS="${PRECISIONS:-off bf16}"
BATCH_SHARDS="${BATCH_SHARDS:-0}"
RESULTS="${RESULTS:-${TMPDIR:-/tmp}/keras_flow-compare-$(date +%Y%m%d-%H%M%S).jsonl}"
export TF_CPP_MIN_LOG_LEVEL=2

if [ -f "$PEERS_DIR/run.sh" ]; then
  have_peers=1 peak_flag=--no-peak  # the peers' run.sh prints the peak (its "limit" line)
else
  have_peers=0 peak_flag=
  echo "compare_peers: no peers at $PEERS_DIR (../shared/peers is not part of this repo):" \
       "measuring keras_flow only." >&2
fi
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
peers() {  # workload
  if [ "$have_peers" = 1 ]; then
    WORKLOADS="$1" bash "$PEERS_DIR/run.sh" | tee -a "$RESULTS"
  fi
}
ours() {  # workload
  for precision in $PRECISIONS; do
    for shards in $BATCH_SHARDS; do
      python3 benchmarks/throughput.py --workload "$1" --mixed-precision "$precision" \
        --batch-shards "$shards" $peak_flag | tee -a "$RESULTS"
    done
  done
}
for repeat in $(seq "$REPEATS"); do
  echo "{\"repeat\": $repeat, \"utc\": \"$(date -u +%FT%TZ)\"}" | tee -a "$RESULTS"
  for workload in $WORKLOADS; do
    if [ $((repeat % 2)) = 1 ]; then peers "$workload"; ours "$workload"
    else ours "$workload"; peers "$workload"; fi
  done
done
echo "# results: $RESULTS; load at the end $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 benchmarks/report.py "$RESULTS"
