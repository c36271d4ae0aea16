"""The flag table of docs/command-line.md, generated from train.py's parser (itself generated
from `keras_flow.training.TrainConfig`), so that the page cannot drift from the code.

    python benchmarks/maintainer/flag_table.py            # the table, Markdown, on stdout
    python benchmarks/maintainer/flag_table.py --write    # replace it in docs/command-line.md

The table sits in docs/command-line.md between the lines `<!-- flag-table -->` and
`<!-- /flag-table -->`; tests/test_docs.py fails when it differs from this output.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "command-line.md"
BEGIN, END = "<!-- flag-table -->", "<!-- /flag-table -->"


def rows():
    """`(flag, help)` for every option of train.py but `--help`, in the parser's order."""
    sys.path.insert(0, str(ROOT))
    from tests.scripts import load_script

    parser = load_script("train.py").build_parser()
    for action in parser._actions:  # argparse has no public list of its actions
        if isinstance(action, argparse._HelpAction):
            continue
        flag = " / ".join(f"`{s}`" for s in action.option_strings)
        if action.choices:
            flag += " `{" + ",".join(action.choices) + "}`"
        yield flag, " ".join(action.help.split()).replace("|", "\\|")


def table():
    lines = ["| flag | meaning (default) |", "|---|---|"]
    lines += [f"| {flag} | {text} |" for flag, text in rows()]
    return "\n".join(lines) + "\n"


def replace_in(text, new_table):
    head, rest = text.split(BEGIN + "\n", 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n" + new_table + END + tail


def current(text):
    return text.split(BEGIN + "\n", 1)[1].split(END, 1)[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="replace the table in the page")
    args = p.parse_args(argv)
    if args.write:
        PAGE.write_text(replace_in(PAGE.read_text(), table()))
    else:
        sys.stdout.write(table())


if __name__ == "__main__":
    main()
