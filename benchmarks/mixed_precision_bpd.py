"""Test bits/dim of one trained model's weights under float32 and under mixed precision.

    python benchmarks/mixed_precision_bpd.py RUN/model.keras --dataset idx:DIR --images 2000

Loads a saved model (`model.keras` of a train.py run), rebuilds it from its config once per
dtype policy (`--policies`, default float32 and mixed_bfloat16), copies the weights into each,
and evaluates the first `--images` test images (fixed dequantisation noise, as train.py's test
figure) with each. Prints one JSON line: the mean bits/dim per policy and each policy's
difference from float32. The performance issue asks for an agreement within 0.01.
"""

import argparse
import json
import sys

from saved_run import load_model_and_data


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a saved model (.keras) of a train.py run")
    parser.add_argument("--dataset", default="digits", help="as train.py (default: digits)")
    parser.add_argument("--images", type=int, default=2000,
                        help="test images evaluated (default: 2000)")
    parser.add_argument("--policies", nargs="+", default=["float32", "mixed_bfloat16"],
                        help="dtype policies (default: float32 mixed_bfloat16)")
    parser.add_argument("--batch-size", type=int, default=250)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    loaded = load_model_and_data(args.model, args.dataset, args.batch_size)
    if loaded is None:
        return 2
    trained, data = loaded
    import keras
    import numpy as np

    test = data.test.take(-(-args.images // args.batch_size))
    means = {}
    for policy in args.policies:
        model = type(trained).from_config({**trained.get_config(), "dtype": policy})
        model.set_weights(trained.get_weights())
        values = [keras.ops.convert_to_numpy(model.bits_per_dim(
            batch["image"] if isinstance(batch, dict) else batch)) for batch in test]
        means[policy] = float(np.concatenate(values)[:args.images].mean())
    reference = means.get("float32")
    print(json.dumps({
        "model": args.model, "images": args.images,
        "bits_per_dim": {k: round(v, 4) for k, v in means.items()},
        "minus_float32": None if reference is None else {
            k: round(v - reference, 4) for k, v in means.items() if k != "float32"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
