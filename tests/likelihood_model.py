"""A tiny Glow trained briefly on the embedded digits, shared by the likelihood tests (score,
typicality, attributes): small enough to train in seconds, trained enough that its bits/dim
separate digits from obviously different images. Trained once per test process."""

import functools

import keras

import keras_flow
from keras_flow import data as flow_data

CONFIG = dict(levels=2, depth=2, hidden_width=16, seed=0)


@functools.cache
def tiny_glow():
    """`(model, data)`: a Glow trained 48 steps (Adam) on 1,024 dequantised `digits` training
    images, and the `FlowData` (validation and test splits held out). Do not train it further."""
    keras.utils.set_random_seed(0)
    data = flow_data.load("digits", batch_size=64, levels=CONFIG["levels"], seed=0)
    images = data.init_batch(1024)
    model = keras_flow.Glow(**CONFIG, image_shape=data.image_shape)
    model.initialize(images[:256])
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(images, batch_size=64, epochs=3, shuffle=False, verbose=0)
    return model, data
