"""Markdown tables of throughput JSON lines: keras_flow's (benchmarks/throughput.py) beside the
peers' (../shared/peers/run.sh), with ratios to the fastest peer and fractions of the peak.

    python benchmarks/report.py RESULTS.jsonl [MORE.jsonl ...] [--peak-gflops 350]

The first table merges the lines with the same implementation, precision and workload (median
of each metric; the train column then shows the range) and compares each keras_flow row with
the fastest peer's float32 figure of the same workload. The second pairs the figures of each
repeat: keras_flow's over the fastest peer's float32 figure of the same repeat and workload,
one ratio per repeat and their median (the peers' speed moves between repeats, so only
figures measured minutes apart are compared). Repeats start at `{"repeat": n}` lines
(compare_peers.sh writes one per repeat), or, in files without them, at each peers' `limit`
line; every file starts a new one. The peak is the float32 matmul GFLOP/s of the peers'
`limit` line (numpy / PyTorch), else of keras_flow's own measurement.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import WORKLOADS  # noqa: E402
from throughput import glow_flops  # noqa: E402

METRICS = ("train_img_s", "encode_img_s", "sample_img_s", "peak_rss_mb")
PAIRED_METRICS = ("train_img_s", "encode_img_s", "sample_img_s")


def read_records(paths):
    """`(records, peaks)`: throughput records, each with the number of its repeat (1, 2, ...
    over all the files) under `"repeat"`, and the peak GFLOP/s of any `limit` lines."""
    records, peaks, number = [], [], 0
    for path in paths:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()
                if line.startswith("{")]
        for repeat in split_repeats(rows):
            number += 1
            for row in repeat:
                if "limit" in row:
                    peaks.append((row.get("peak") or {}).get("peak_gflops"))
                elif row.get("peer") and not row.get("error"):
                    records.append(dict(row, repeat=number))
    return records, [p for p in peaks if p]


def is_repeat_marker(row):
    return "repeat" in row and "peer" not in row


def split_repeats(rows):
    """The rows of one results file cut into repeats: at the `{"repeat": n}` markers, or, in a
    file without any, at each peers' `limit` line (one per repeat in older files)."""
    marked = any(is_repeat_marker(row) for row in rows)
    repeats = []
    for row in rows:
        if not repeats or (is_repeat_marker(row) if marked else "limit" in row):
            repeats.append([])
        repeats[-1].append(row)
    return repeats


def our_config(record):
    """keras_flow's config keys for a peer's record (`height`, `steps`, `hidden`, ...)."""
    config = record["config"]
    if "image_size" in config:
        return config
    workload = WORKLOADS.get(record.get("workload"), {})
    return dict(workload, image_size=config["height"], channels=config["channels"],
                levels=config["levels"], depth=config["steps"], hidden_width=config["hidden"],
                batch_size=config["batch"])


def implementation(record):
    """The peer's name; keras_flow's with its batch shards, when it ran with several, and
    with concrete functions, when it called them."""
    shards = record.get("batch_shards") or 1
    return (record["peer"] + (f", {shards} batch shards" if shards > 1 else "")
            + (", concrete functions" if record.get("concrete_functions") else ""))


def is_ours(peer):
    return peer.startswith("keras_flow")


def group(records):
    groups = {}
    for record in records:
        key = (record.get("workload") or "custom", implementation(record),
               record.get("policy", "float32"))
        groups.setdefault(key, []).append(record)
    return groups


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(records, peak):
    groups = group(records)
    fastest = {}
    for (workload, peer, policy), rows in groups.items():
        if not is_ours(peer) and policy == "float32":
            for metric in ("train_img_s", "encode_img_s"):
                best = fastest.setdefault((workload, metric), (None, 0.0))
                value = median(r[metric] for r in rows) or 0.0
                if value > best[1]:
                    fastest[(workload, metric)] = (peer, value)
    lines = [
        "| workload | implementation | precision | train img/s | vs fastest peer | "
        "encode img/s | vs fastest peer | sample img/s | train % of peak | params | "
        "peak RSS MB | runs |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (workload, peer, policy), rows in sorted(groups.items()):
        med = {m: median(r.get(m) for r in rows) for m in METRICS}
        trains = [r["train_img_s"] for r in rows if r.get("train_img_s")]
        train = fmt(med["train_img_s"])
        if len(trains) > 1:
            train += " (%.0f-%.0f)" % (min(trains), max(trains))
        flops = glow_flops(our_config(rows[0]))
        share = (None if not (peak and med["train_img_s"])
                 else 100.0 * med["train_img_s"] * flops["train"] / (peak * 1e9))
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | {:,} | %s | %d |".format(
            rows[0]["params"]) % (
            workload, peer, precision_label(policy, rows), train,
            ratio(med, fastest, workload, "train_img_s", peer),
            fmt(med["encode_img_s"]), ratio(med, fastest, workload, "encode_img_s", peer),
            fmt(med["sample_img_s"]), fmt(share, "%.1f%%"), fmt(med["peak_rss_mb"], "%.0f"),
            len(rows)))
    return "\n".join(lines)


def paired_ratios(records):
    """`{(workload, implementation, policy, metric): [ratio, ...]}`, in the order of the
    repeats: each keras_flow figure over the fastest peer's float32 figure of the same repeat
    and workload (repeats without a peer's figure give none)."""
    repeats = {}
    for record in records:
        repeats.setdefault((record["repeat"], record.get("workload") or "custom"),
                           []).append(record)
    ratios = {}
    for (_, workload), rows in sorted(repeats.items()):
        peers = [r for r in rows if not is_ours(r["peer"]) and r.get("policy", "float32") ==
                 "float32"]
        for metric in PAIRED_METRICS:
            best = max((r[metric] for r in peers if r.get(metric)), default=None)
            for record in rows:
                if best and is_ours(record["peer"]) and record.get(metric):
                    key = (workload, implementation(record), record.get("policy", "float32"),
                           metric)
                    ratios.setdefault(key, []).append(record[metric] / best)
    return ratios


def paired_table(records):
    """The repeat-by-repeat table, or "" when no repeat has both a peer's and our figure."""
    ratios = paired_ratios(records)
    if not ratios:
        return ""
    groups = group(records)
    lines = ["| workload | implementation | precision | metric | ratio to the fastest peer, "
             "repeat by repeat | median |", "|---|---|---|---|---|---:|"]
    rows = sorted(ratios.items(),
                  key=lambda item: item[0][:3] + (PAIRED_METRICS.index(item[0][3]),))
    for (workload, peer, policy, metric), values in rows:
        lines.append("| %s | %s | %s | %s | %s | **%.2fx** |" % (
            workload, peer, precision_label(policy, groups[(workload, peer, policy)]),
            metric[:-len("_img_s")], ", ".join("%.2f" % value for value in values),
            statistics.median(values)))
    return "\n".join(lines)


def precision_label(policy, rows):
    """The policy, marked where a bfloat16 run on a CPU had no bfloat16 instructions
    (`cpu_native_bfloat16` false: emulated, slower than float32; keras_flow.cpu_features)."""
    emulated = "bfloat16" in policy and any(r.get("cpu_native_bfloat16") is False for r in rows)
    return policy + " (emulated: no bf16 instructions)" if emulated else policy


def ratio(med, fastest, workload, metric, peer):
    best = fastest.get((workload, metric))
    if not is_ours(peer) or not best or not med[metric]:
        return "-"
    return "%.2fx (%s)" % (med[metric] / best[1], best[0])


def fmt(value, pattern="%.1f"):
    return "-" if value is None else pattern % value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="files of JSON lines")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="float32 matmul peak to use (default: from the files)")
    args = parser.parse_args(argv)
    records, peaks = read_records(args.results)
    ours = [r.get("peak_fp32_matmul_gflops") for r in records if r["peer"] == "keras_flow"]
    peak = args.peak_gflops or median(peaks) or median(ours)
    print("float32 matmul peak: %s GFLOP/s\n" % fmt(peak, "%.0f"))
    print(table(records, peak))
    paired = paired_table(records)
    if paired:
        print("\nRepeat by repeat (each ratio within one repeat):\n")
        print(paired)


if __name__ == "__main__":
    main()
