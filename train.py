"""Trains a Glow or RealNVP flow on an image dataset (flags -> keras_flow.training.train).

    python train.py                      # Glow on the embedded 8x8 digits, a few CPU minutes
    python train.py --dataset mnist --levels 3 --depth 16 --hidden-width 256 --epochs 20

Every flag is a field of `keras_flow.training.TrainConfig` (same name, dashes for
underscores), documented with its default by `--help`. Re-running the same command after an
interruption resumes from the last checkpoint. Invalid flags or data end with one line
`error: <message>` on stderr and exit status 2; a non-finite loss with one such line (where it
appeared, what to try) and exit status 3; Ctrl-C saves a checkpoint of the current step, says
where it is, and exits with status 130.
"""

import argparse
import dataclasses
import os
import sys

PROG = "train.py"


def _temperatures(text):
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,0.5,1; got {text!r}") from None


def _optional_float(text):
    return None if text.lower() in ("none", "off") else float(text)


_TYPES = {int: int, float: float, str: str, tuple: _temperatures}


def build_parser():
    """The argument parser, generated from `TrainConfig`'s fields and their help texts."""
    from keras_flow.cli import OneLineErrorParser
    from keras_flow.training import TrainConfig

    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n")[0])
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        options = dict(default=field.default, help=_help(field))
        if field.type is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _optional_float if field.name in ("clip_norm", "max_seconds") else (
                _TYPES[field.type])
            if "choices" in field.metadata:
                options["choices"] = field.metadata["choices"]
            options["metavar"] = _metavar(field)
        parser.add_argument(flag, **options)
    return parser


def _help(field):
    """The field's help; "(default: ...)" added unless the text says where None leads."""
    if field.default is None:
        return field.metadata["help"]
    shown = field.default
    if isinstance(shown, tuple):
        shown = ",".join(f"{t:g}" for t in shown)
    return f"{field.metadata['help']} (default: {shown})"


def _metavar(field):
    if "choices" in field.metadata:
        return "{" + ",".join(field.metadata["choices"]) + "}"
    return "T1,T2,..." if field.type is tuple else field.name.upper()


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from keras_flow import training
    from keras_flow.interrupts import TrainingInterrupted
    from keras_flow.callbacks import NonFiniteLossError

    try:
        training.train(training.TrainConfig(**vars(args)))
    except (ValueError, FileNotFoundError, TypeError, NotADirectoryError) as error:
        return _error(error, 2)
    except NonFiniteLossError as error:
        return _error(error, 3)
    except TrainingInterrupted as interrupted:
        print(interrupted, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    return 0


def _error(error, status):
    """Prints `error: <message>` as one line on stderr; returns `status`."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
