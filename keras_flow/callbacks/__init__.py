"""Training callbacks, grouped by what they do; train.py runs them all (`keras_flow.training`).

- the step count and the clock (`steps`): `StepCounter`, the one count of global training
  steps that the others read; `TimeLimit` (`--max-seconds`); `SpendBudget` (`--budget-decay`);
- checkpoints (`checkpoints`): `Checkpoint` (the full training state every N steps) and
  `KeepBest` (the best weights by validation bits/dim);
- non-finite values (`non_finite`, `diagnosis`): `NonFiniteGuard` stops at the first one,
  puts the last finite weights back and says where it appeared (`diagnose`);
- evaluation (`evaluation`, `ema`): `HeldOutBitsPerDim`, with the optimizer's moving averages
  swapped in (`ema_weights`); `KeepTrainingWeights` keeps `fit` from leaving them in;
- artefacts (`artefacts`): `SampleGrids`, `MetricsHistory` (history.json and the bits/dim
  curves); TensorBoard is Keras's own callback.

Every file is written atomically (`keras_flow.files`), so a kill at any moment leaves whole
files.
"""

from keras_flow.callbacks.artefacts import MetricsHistory
from keras_flow.callbacks.artefacts import SampleGrids
from keras_flow.callbacks.artefacts import plot_bits_per_dim
from keras_flow.callbacks.artefacts import write_sample_grids
from keras_flow.callbacks.checkpoints import CHECKPOINT_PATTERN
from keras_flow.callbacks.checkpoints import CHECKPOINT_STATE
from keras_flow.callbacks.checkpoints import Checkpoint
from keras_flow.callbacks.checkpoints import KeepBest
from keras_flow.callbacks.diagnosis import Finding
from keras_flow.callbacks.diagnosis import diagnose
from keras_flow.callbacks.ema import KeepTrainingWeights
from keras_flow.callbacks.ema import ema_weights
from keras_flow.callbacks.evaluation import HeldOutBitsPerDim
from keras_flow.callbacks.evaluation import evaluate_bits_per_dim
from keras_flow.callbacks.non_finite import NonFiniteGuard
from keras_flow.callbacks.non_finite import NonFiniteLossError
from keras_flow.callbacks.non_finite import all_finite
from keras_flow.callbacks.steps import SpendBudget
from keras_flow.callbacks.steps import StepCounter
from keras_flow.callbacks.steps import TimeLimit
