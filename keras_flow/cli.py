"""What the command lines share (train.py, `keras_flow.sample`, `keras_flow.score`)."""

import argparse


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, `error: <message>`, with exit status 2
    (no usage block): a bad flag says what is wrong and how to fix it, and nothing else."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def one_line(error):
    """The informative line of an error (TensorFlow's start with "Graph execution error:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
    return next((line for line in lines if "assertion failed" in line), lines[0])
