"""The code blocks of README.md and docs/*.md run as written.

Each page's ```python blocks run in order, unchanged, in one fresh Python process (a page is
read top to bottom, so a block may use what an earlier one made), after a short prelude of the
page's own: the few names its prose says come from elsewhere ("model: a trained flow") and, where
a block trains, a quick setting (`fit` capped at one epoch of two steps). ```bash blocks are not
run: every script, file and flag they name must exist (`train.py`'s flags against its parser).
The flag table of docs/command-line.md must equal what benchmarks/maintainer/flag_table.py
generates from `TrainConfig`.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

# Caps every fit at one epoch of two steps (epochs past initial_epoch: one more), quietly.
QUICK_FIT = """
import keras as _keras
_fit = _keras.Model.fit
def _quick_fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
               **kwargs):
    kwargs["steps_per_epoch"] = 2
    return _fit(self, x, y, batch_size, kwargs.get("initial_epoch", 0) + 1, 0, callbacks,
                **kwargs)
_keras.Model.fit = _quick_fit
"""
TINY_MODEL = """
import numpy as _np
import keras_flow as _kf
from keras_flow.preprocessing import preprocess as _preprocess
images = _preprocess(_np.random.default_rng(0).integers(0, 256, (128, 8, 8, 1), dtype="uint8"),
                     n_bits=4).numpy()
model = _kf.Glow(levels=2, depth=1, hidden_width=8, num_bins=16, image_shape=(8, 8, 1))
model.initialize(images[:64])
"""
SIXTEEN = """
import numpy as _np
_rng = _np.random.default_rng(0)
init_images = (_rng.random((256, 16, 16, 3)) - 0.5).astype("float32")
train_images = (_rng.random((512, 16, 16, 3)) - 0.5).astype("float32")
"""
PRELUDES = {  # page -> code run before its blocks
    "README.md": QUICK_FIT,
    "models.md": QUICK_FIT,
    "command-line.md": "",  # its block is a short train() run already
    "layers.md": "",
    "design.md": "",
    "performance.md": "",
    "scaling.md": QUICK_FIT + SIXTEEN,
    "export.md": TINY_MODEL,
    "reliability.md": QUICK_FIT + TINY_MODEL + "model.compile(optimizer='adam')\n",
    "likelihood.md": "",  # its blocks train their own tiny models
}


def blocks(page, language):
    return [code for lang, code in BLOCK.findall(page.read_text()) if lang == language]


def python_pages():
    return [page for page in PAGES if blocks(page, "python")]


def test_every_page_with_python_is_run():
    """A new page with Python blocks needs a prelude entry (even an empty one), so that its
    author decides whether a block needs a quick setting."""
    assert {page.name for page in python_pages()} <= set(PRELUDES)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("page", python_pages(), ids=lambda page: page.name)
def test_python_blocks_run_as_written(page, tmp_path):
    prelude = PRELUDES[page.name]
    program = [prelude] + [f"# --- {page.name}, block {i + 1}\n{code}"
                           for i, code in enumerate(blocks(page, "python"))]
    script = tmp_path / "page.py"
    script.write_text("\n".join(program))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{page.name}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def script_flags(path):
    """The option strings a script's argparse parser (or a shell script) names."""
    return set(re.findall(r"""["'](--[a-z0-9][a-z0-9-]*)["']""", path.read_text()))


def train_flags():
    parser = load_script("train.py").build_parser()
    return {s for action in parser._actions for s in action.option_strings}


def commands(code):
    """Each command line of a bash block (continuations joined, comments and prompts cut)."""
    code = re.sub(r"\\\n\s*", " ", code)
    for line in code.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            yield line


def checked_words(line):
    """`(program, flags)` of each script the line runs: train.py, a benchmarks/ or keras_flow
    script, `python -m keras_flow.X`."""
    for part in re.split(r"&&|\|", line):
        words = shlex.split(part)
        for i, word in enumerate(words):
            target = None
            if word.endswith((".py", ".sh")) and not word.startswith("-"):
                target = ROOT / word
            elif word == "-m" and i + 1 < len(words) and words[i + 1].startswith("keras_flow."):
                target = ROOT / (words[i + 1].replace(".", "/") + ".py")
            if target is not None:
                flags = {w.split("=")[0] for w in words[i + 1:] if w.startswith("--")}
                yield target, flags
                break


def test_bash_blocks_name_scripts_and_flags_that_exist():
    known_train = train_flags()
    problems = []
    for page in PAGES:
        for code in blocks(page, "bash"):
            for line in commands(code):
                for target, flags in checked_words(line):
                    if not target.exists():
                        problems.append(f"{page.name}: no {target.relative_to(ROOT)} ({line})")
                        continue
                    known = known_train if target.name == "train.py" else script_flags(target)
                    if target.name == "throughput.py" or target.name == "gpu.sh":
                        known |= script_flags(ROOT / "benchmarks" / "throughput.py")
                    missing = sorted(flags - known)
                    if missing:
                        problems.append(f"{page.name}: {target.name} has no {missing} ({line})")
    assert not problems, "\n".join(problems)


def anchors(page):
    """GitHub's heading anchors of a Markdown page."""
    headings = re.findall(r"^#+ (.+)$", BLOCK.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_pages_link_to_files_and_headings_that_exist():
    """Relative links between the pages and to the repository's files, and their #anchors."""
    problems = []
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)]*))?\)", page.read_text()):
            if "://" in target:
                continue
            path = page.parent / target if target else page
            if not path.exists():
                problems.append(f"{page.name}: {target}")
            elif anchor and anchor not in anchors(path):
                problems.append(f"{page.name}: {target}#{anchor}")
    assert not problems, problems


def test_flag_table_is_generated_from_train_config():
    flag_table = load_script("benchmarks/maintainer/flag_table.py")
    page = (ROOT / "docs" / "command-line.md").read_text()
    assert flag_table.current(page) == flag_table.table(), (
        "docs/command-line.md's flag table drifted from TrainConfig: run "
        "python benchmarks/maintainer/flag_table.py --write")


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pytest -q\n" in [code for code in blocks(ROOT / "README.md", "bash")]
    assert "\npython3 -m pytest -q\n" in ci
    assert readme.count("```bash\npython3 -m pytest -q\n```") == 1


@pytest.mark.maintainer
@pytest.mark.slow
def test_preset_table_matches_the_built_presets():
    """docs/models.md's preset table against a fresh build of every preset (minutes)."""
    result = subprocess.run([sys.executable, "benchmarks/maintainer/preset_table.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-3000:]
    page = (ROOT / "docs" / "models.md").read_text()
    for row in result.stdout.strip().splitlines()[2:]:
        assert row in page, row

