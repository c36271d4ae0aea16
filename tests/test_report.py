"""benchmarks/report.py: the table that lines keras_flow up beside the peers."""

import json

from tests.scripts import load_script


def record(peer, policy, train, native=None):
    config = {"image_size": 32, "channels": 3, "levels": 3, "depth": 8, "hidden_width": 128}
    return {"peer": peer, "workload": "W1", "policy": policy, "params": 1000,
            "train_img_s": train, "encode_img_s": 4 * train, "sample_img_s": 3 * train,
            "peak_rss_mb": 500.0, "config": config, "batch_shards": 1,
            "cpu_native_bfloat16": native}


def test_ratios_and_the_emulated_bfloat16_mark(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in [
        record("normflows", "float32", 100.0),
        record("keras_flow", "float32", 160.0, native=False),
        record("keras_flow", "mixed_bfloat16", 50.0, native=False),
        record("keras_flow", "mixed_bfloat16", 300.0, native=True) | {"workload": "W2"},
    ]) + "\n")
    load_script("benchmarks/report.py").main([str(results), "--peak-gflops", "300"])
    merged_table = capsys.readouterr().out.split("Repeat by repeat")[0]
    rows = {tuple(cell.strip() for cell in line.split("|")[1:4]): line
            for line in merged_table.splitlines() if line.startswith("| W")}
    ours = "keras_flow"
    assert "1.60x (normflows)" in rows[("W1", ours, "float32")]
    assert "0.50x (normflows)" in rows[
        ("W1", ours, "mixed_bfloat16 (emulated: no bf16 instructions)")]
    assert ("W2", ours, "mixed_bfloat16") in rows


def paired_rows(output):
    """`{(workload, precision, metric): (ratios cell, median cell)}` of the repeat-by-repeat
    table."""
    table = output.split("Repeat by repeat")[1]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if cells and cells[0].startswith("W"):
            rows[(cells[0], cells[2], cells[3])] = (cells[4], cells[5])
    return rows


def test_ratios_pair_the_figures_of_each_repeat(tmp_path, capsys):
    """Each ratio divides by the peer's figure of its own repeat: the marked file's two
    repeats and an older file cut at its `limit` lines give four repeats."""
    marked = tmp_path / "marked.jsonl"
    marked.write_text("\n".join(json.dumps(r) for r in [
        {"repeat": 1}, {"limit": {}, "peak": {"peak_gflops": 300.0}},
        record("normflows", "float32", 100.0), record("keras_flow", "float32", 150.0),
        {"repeat": 2}, record("keras_flow", "float32", 180.0),
        {"limit": {}, "peak": {"peak_gflops": 300.0}}, record("normflows", "float32", 200.0),
    ]) + "\n")
    older = tmp_path / "older.jsonl"
    older.write_text("\n".join(json.dumps(r) for r in [
        {"limit": {}}, record("normflows", "float32", 100.0),
        record("keras_flow", "float32", 170.0), record("keras_flow", "mixed_bfloat16", 320.0),
        {"limit": {}}, record("normflows", "float32", 50.0), record("keras_flow", "float32", 100.0),
    ]) + "\n")
    load_script("benchmarks/report.py").main([str(marked), str(older)])
    rows = paired_rows(capsys.readouterr().out)
    assert rows[("W1", "float32", "train")] == ("1.50, 0.90, 1.70, 2.00", "**1.60x**")
    assert rows[("W1", "float32", "encode")][0] == "1.50, 0.90, 1.70, 2.00"
    assert rows[("W1", "mixed_bfloat16", "train")] == ("3.20", "**3.20x**")


def test_no_repeat_table_without_peers(tmp_path, capsys):
    results = tmp_path / "ours.jsonl"
    results.write_text(json.dumps(record("keras_flow", "float32", 150.0)) + "\n")
    load_script("benchmarks/report.py").main([str(results), "--peak-gflops", "300"])
    assert "Repeat by repeat" not in capsys.readouterr().out


def test_implementation_names_batch_shards_and_concrete_functions():
    report = load_script("benchmarks/report.py")
    assert report.implementation(record("normflows", "float32", 100.0)) == "normflows"
    ours = dict(record("keras_flow", "float32", 150.0), batch_shards=2)
    assert report.implementation(ours) == "keras_flow, 2 batch shards"
    ours["concrete_functions"] = True
    assert report.implementation(ours) == "keras_flow, 2 batch shards, concrete functions"
