"""The processes that tests/test_distribute.py starts (each needs a fresh TensorFlow).

    python tests/distribute_worker.py mirrored OUT.json
        2 logical CPU devices under MirroredStrategy vs one device, same global batch.
    TF_CONFIG=... python tests/distribute_worker.py multi-worker OUT.json --backup DIR
        [--epochs N] [--stall-after K]
        one worker of a MultiWorkerMirroredStrategy cluster, with keras_flow's
        BackupAndRestore in DIR (one step per epoch); with --stall-after it hangs after
        the checkpoint of epoch K, so that the test can kill it there.

Each writes a JSON report to OUT.json for the test to check.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras_flow import distribute  # noqa: E402

IMAGE_SHAPE = (4, 4, 2)
GLOBAL_BATCH = 8


def build_model():
    import keras_flow

    return keras_flow.Glow(levels=1, depth=1, hidden_width=8, image_shape=IMAGE_SHAPE, seed=1)


def images(count, seed):
    from tests.flow_checks import preprocessed_images

    return preprocessed_images((count,) + IMAGE_SHAPE, seed)


def compile_sgd(model):
    import keras

    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)


def one_batch_dataset():
    """The same global batch at every step (no noise, no shuffling)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensors(images(GLOBAL_BATCH, seed=5)).repeat()


def train(model, steps):
    """`steps` optimizer steps, one per epoch; returns the loss Keras reports for each."""
    history = model.fit(one_batch_dataset(), epochs=steps, steps_per_epoch=1, verbose=0,
                        shuffle=False, callbacks=[distribute.ActnormCheck()])
    return history.history["loss"]


def replica_spread(variables):
    """Largest difference between the replicas' copies of `variables` (mirrored ones)."""
    import numpy as np

    spread = 0.0
    for variable in variables:
        values = [np.asarray(v) for v in variable.value.values]
        spread = max([spread] + [float(np.max(np.abs(v - values[0]))) for v in values])
    return spread


def max_difference(weights_a, weights_b):
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(weights_a, weights_b))


def actnorm_values(model):
    from keras_flow.layers import Actnorm

    return [w for layer in model._flatten_layers() if isinstance(layer, Actnorm)
            for w in layer.get_weights()]


def expect_error(function, text):
    """The message of the RuntimeError `function()` raises (it must mention `text`)."""
    try:
        function()
    except RuntimeError as error:
        assert text in str(error), str(error)
        return str(error)
    raise AssertionError(f"no RuntimeError mentioning {text!r}")


def run_mirrored(out):
    distribute.split_cpu(2)
    strategy = distribute.make_strategy("mirrored")
    from tests.flow_checks import perturb_weights

    x_init = images(16, seed=0)
    single = build_model()
    untrained = single.get_weights()
    single.initialize(x_init)
    single_init = actnorm_values(single)
    perturb_weights(single, seed=2, scale=0.05)
    start = single.get_weights()
    compile_sgd(single)
    with strategy.scope():
        mirrored = build_model()
        mirrored.set_weights(untrained)
        mirrored.initialize(x_init)
        init_spread = replica_spread(mirrored.variables)
        init_difference = max_difference(actnorm_values(mirrored), single_init)
        mirrored.set_weights(start)
        compile_sgd(mirrored)
        unready = build_model()
        compile_sgd(unready)
    report = dict(
        replicas=strategy.num_replicas_in_sync,
        init_replica_spread=init_spread,
        init_vs_single=init_difference,
        initialize_error=expect_error(
            lambda: strategy.run(lambda: distribute.initialize(unready, x_init)),
            "replica context"),
        fit_error=expect_error(lambda: train(unready, 1), "not initialised"),
        single_losses=train(single, 3),
        mirrored_losses=train(mirrored, 3),
    )
    report.update(weights_vs_single=max_difference(mirrored.get_weights(), single.get_weights()),
                  replica_spread=replica_spread(
                      mirrored.variables + mirrored.optimizer.variables))
    # A checkpoint written under 2 replicas resumes on 1: same state, same next step.
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ckpt.weights.h5")
        mirrored.save_weights(path)
        resumed = build_model()
        compile_sgd(resumed)
        resumed.optimizer.build(resumed.trainable_variables)
        resumed.load_weights(path)
    report.update(
        resumed_state_vs_saved=max_difference(
            resumed.variables + resumed.optimizer.variables,
            mirrored.variables + mirrored.optimizer.variables),
        resumed_loss=train(resumed, 1), mirrored_next_loss=train(mirrored, 1))
    report["resumed_vs_mirrored"] = max_difference(resumed.get_weights(), mirrored.get_weights())
    Path(out).write_text(json.dumps(report))


def run_multi_worker(out, backup, epochs, stall_after):
    import keras
    import numpy as np

    strategy = distribute.make_strategy("multi-worker")
    with strategy.scope():
        model = build_model()
        distribute.reducible_step_logs(model)
        model.initialize(images(16, seed=0))
        compile_sgd(model)
    seen = []
    callbacks = [
        distribute.BackupAndRestore(backup, save_freq="epoch", double_checkpoint=True,
                                    delete_checkpoint=False),
        keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch)),
    ]
    if stall_after is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: epoch + 1 >= stall_after and time.sleep(3600)))
    model.fit(one_batch_dataset(), epochs=epochs, steps_per_epoch=1, verbose=0,
              shuffle=False, callbacks=callbacks)
    weights = [w.tolist() for w in model.get_weights()]
    Path(out).write_text(json.dumps(dict(
        chief=distribute.is_chief(strategy), epochs_run=seen,
        iterations=int(np.asarray(model.optimizer.iterations)), weights=weights)))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("mirrored", "multi-worker"))
    parser.add_argument("out")
    parser.add_argument("--backup")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--stall-after", type=int)
    args = parser.parse_args(argv)
    if args.mode == "mirrored":
        run_mirrored(args.out)
    else:
        run_multi_worker(args.out, args.backup, args.epochs, args.stall_after)


if __name__ == "__main__":
    main()
