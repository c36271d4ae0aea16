"""Which weights carry the gradient: per-step global gradient norm and its largest parts.

    python benchmarks/gradient_norms.py RUN/model.keras --dataset idx:DIR --steps 200
    python benchmarks/gradient_norms.py RUN/model.keras --lr 1e-3 --optimizer adam

Continues training a saved unconditional model (`model.keras` of a train.py run) with a fresh
optimizer (no warm-up) for `--steps` steps on the dataset of `keras_flow.data` (`--dataset`, as
train.py), and prints one JSON line per `--every` steps (and for every step whose loss
exceeds `--report-above`): the step, the batch loss, the global gradient norm and the
`--top` weights with the largest gradient norms; a last line gives the median, 90th
percentile and maximum of the global norm. A diagnostic for loss spikes: which layers a
clipping threshold or a smaller rate would touch.
"""

import argparse
import json
import sys

from saved_run import load_model_and_data


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a saved model (.keras) of a train.py run")
    parser.add_argument("--dataset", default="digits", help="as train.py (default: digits)")
    parser.add_argument("--n-bits", type=int, default=None,
                        help="bits kept (default: from the model's num_bins)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", default="adam", choices=("adam", "adamax"))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=20, help="print every N steps (20)")
    parser.add_argument("--report-above", type=float, default=float("inf"),
                        help="also print every step whose loss exceeds this")
    parser.add_argument("--top", type=int, default=3, help="weights listed per line (3)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    loaded = load_model_and_data(args.model, args.dataset, args.batch_size, args.n_bits)
    if loaded is None:
        return 2
    model, data = loaded
    import numpy as np
    import tensorflow as tf

    from keras_flow.optimizers import make_optimizer

    optimizer = make_optimizer(args.optimizer, args.lr)
    optimizer.build(model.trainable_variables)
    names = [v.path for v in model.trainable_variables]

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            model(images, training=True)
            loss = tf.add_n(model.losses)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, tf.linalg.global_norm(gradients), tf.stack(
            [tf.norm(g) for g in gradients])

    norms_seen = []
    for i, batch in enumerate(data.train.repeat().take(args.steps)):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        loss, global_norm, norms = (t.numpy() for t in step(images))
        norms_seen.append(float(global_norm))
        if i % args.every == 0 or loss > args.report_above:
            top = np.argsort(norms)[::-1][:args.top]
            print(json.dumps({"step": i, "loss": round(float(loss), 4),
                              "global_norm": round(float(global_norm), 3),
                              "largest": {names[j]: round(float(norms[j]), 3) for j in top}}),
                  flush=True)
    print(json.dumps({"median_global_norm": round(float(np.median(norms_seen)), 3),
                      "p90_global_norm": round(float(np.percentile(norms_seen, 90)), 3),
                      "max_global_norm": round(float(np.max(norms_seen)), 3),
                      "steps": len(norms_seen)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
