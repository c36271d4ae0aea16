"""The benchmarks' output: one JSON object per line, on stdout and appended to a file."""

import json


def reporter(out=None):
    """A `report(line)` that prints `line` (a dict) as one JSON line and, when `out` names a
    file, appends it there too."""

    def report(line):
        text = json.dumps(line)
        print(text, flush=True)
        if out:
            with open(out, "a") as stream:
                stream.write(text + "\n")

    return report
