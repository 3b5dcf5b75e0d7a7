"""Every `dvc exp run` a user can paste from README.md or docs/ parses with DVC's own `-S` parser
and gives params foldwise accepts (DVC's parser rejects some regexes unquoted: the
label_pattern example once failed with LexerNoViableAltException).

Run through the functions `dvc exp run` itself calls: ``to_path_overrides`` groups the -S
values by file, ``get_hydra_sweeps`` expands sweeps, ``apply_overrides`` edits params.yaml.
The e2e tests run the main examples for real.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from foldwise.core.params import load_params

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_texts(markdown: str) -> list[str]:
    """The lines of shell blocks (continuations joined) and the inline code spans of the prose."""
    texts, prose, fence = [], [], None  # fence: the open block's language
    for line in markdown.replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        elif fence is None:
            prose.append(line)
        elif fence in ("", "sh", "bash", "shell"):
            texts.append(line)
    return texts + re.findall(r"`([^`\n]+)`", "\n".join(prose))


def exp_runs() -> list[tuple[str, list[str]]]:
    """(where, -S values) of every `dvc exp run` with -S in the docs."""
    found = []
    for doc in DOCS:
        for text in code_texts(doc.read_text()):
            if text.startswith("-S "):  # an option on its own, inline: `-S image_size=64`
                words = shlex.split(text)
            elif "dvc exp run" in text and "-S" in text:
                words = shlex.split(text.split("dvc exp run", 1)[1], comments=True)
            else:
                continue
            values = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-S", "--set-param")]
            found.append((f"{doc.relative_to(ROOT)}: {text.strip()}", values))
    return found


EXAMPLES = exp_runs()


def test_the_docs_have_the_examples_we_expect():
    where = " ".join(w for w, _ in EXAMPLES)
    assert len(EXAMPLES) >= 15
    for needle in ("lr=0.004,0.016", "lr=range(0.002,0.01,0.004)", "label_pattern=", "dataset=digits",
                   "hidden_sizes=[200,200]"):
        assert needle in where, needle


@pytest.mark.parametrize("where, values", EXAMPLES, ids=[w[:80] for w, _ in EXAMPLES])
def test_every_exp_run_example_parses_with_dvcs_parser_and_validates(tmp_path, where, values):
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides, get_hydra_sweeps

    sweeps = get_hydra_sweeps(to_path_overrides(values))  # what `dvc exp run` does first
    assert sweeps, where
    for sweep in sweeps:
        assert list(sweep) == ["params.yaml"], where  # flat keys of params.yaml only
        params = tmp_path / "params.yaml"
        shutil.copy(ROOT / "params.yaml", params)
        apply_overrides(params, sweep["params.yaml"])
        load_params(params)  # foldwise's validation: a bad key or value raises, naming it
