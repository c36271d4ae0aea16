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
    rows = {tuple(cell.strip() for cell in line.split("|")[1:4]): line
            for line in capsys.readouterr().out.splitlines() if line.startswith("| W")}
    ours = "keras_flow"
    assert "1.60x (normflows)" in rows[("W1", ours, "float32")]
    assert "0.50x (normflows)" in rows[
        ("W1", ours, "mixed_bfloat16 (emulated: no bf16 instructions)")]
    assert ("W2", ours, "mixed_bfloat16") in rows
