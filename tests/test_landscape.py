"""benchmarks/landscape.py: its landscape scores what it should, and the engine can search it."""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import sys
from pathlib import Path

import pytest

from autoresearch.config import Config
from autoresearch.testing import make_request
from autoresearch.validation import validate_proposal

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "landscape.py"
TINY = Path(__file__).parents[1] / "baselines" / "tiny" / "train.py"


@pytest.fixture(scope="module")
def landscape_module():
    spec = importlib.util.spec_from_file_location("landscape_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_a_good_edit_is_truly_better_and_a_crash_edit_crashes(landscape_module):
    lab = landscape_module
    source = lab.skeleton(TINY.read_text(encoding="utf-8"))
    landscape = lab.Landscape(source, seed=29)  # its first optimum drawn crashed the baseline
    kinds = {kind: [e for e in landscape.edits if e.kind == kind] for kind in lab.EDIT_KINDS}
    assert {k: len(v) for k, v in kinds.items()} == {
        "good": 15, "great": 3, "harmful": 67, "neutral": 50, "crash": 15,
    }  # fmt: skip
    proposer = lab.LandscapeProposer(landscape)

    def with_edit(edit):
        line = lab.EDIT_LINE.format(edit.number, edit.number)
        return source.rstrip("\n") + "\n" + line

    base = landscape.value(source)
    assert landscape.crash(source) is None
    for edit in kinds["good"] + kinds["great"]:
        edited = with_edit(edit)
        assert validate_proposal(source, edited, set()) is None  # the engine trains it
        assert landscape.value(edited) > base
    assert all(landscape.value(with_edit(e)) < base for e in kinds["harmful"])
    crashing = with_edit(kinds["crash"][0])
    assert landscape.crash(crashing)
    fixed, _ = proposer.repair(crashing)
    assert landscape.crash(fixed) is None and landscape.value(fixed) == pytest.approx(base)
    # Good edits are proposed about twice as often as their share (18 of 150).
    rng = random.Random(0)
    picks = [rng.choices(landscape.edits, weights=proposer.weights(landscape.edits))[0]
             for _ in range(4000)]  # fmt: skip
    assert 0.2 < sum(e.kind in lab.GOOD_KINDS for e in picks) / len(picks) < 0.28


def test_repeats_of_one_source_get_fresh_noise(landscape_module, tmp_path):
    lab = landscape_module
    source = lab.skeleton(TINY.read_text(encoding="utf-8"))
    runner = lab.LandscapeRunner(lab.Landscape(source, seed=0), sigma=1.0, seed=0, seed_share=0)
    (tmp_path / "train.py").write_text(source)
    scores = {runner(tmp_path / "train.py", Config(), tmp_path / e).val_bpb for e in ("a", "b")}
    assert len(scores) == 2


def test_the_seeds_share_of_the_noise_is_common_to_every_source_run_with_it(
    landscape_module, tmp_path
):
    lab = landscape_module
    source = lab.skeleton(TINY.read_text(encoding="utf-8"))
    landscape = lab.Landscape(source, seed=0)
    runner = lab.LandscapeRunner(landscape, sigma=1.0, seed=0, seed_share=1.0)
    other = lab.rewrite_constants(source, {"MATRIX_LR": 0.01})
    for name, text in (("a.py", source), ("b.py", other)):
        (tmp_path / name).write_text(text)

    def noise(name: str, text: str, seed: int, run: str) -> float:
        config = Config()
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, seed=seed))
        val_bpb = runner(tmp_path / name, config, tmp_path / run).val_bpb
        return (lab.BASE_BPB - val_bpb) / lab.UNIT - landscape.value(text)

    at_1 = [noise("a.py", source, 1, "a1"), noise("b.py", other, 1, "b1")]
    assert at_1[0] == pytest.approx(at_1[1])  # one seed, the same noise for both sources
    assert noise("a.py", source, 2, "a2") != pytest.approx(at_1[0])  # another seed, other noise


def test_the_engine_searches_the_landscape(landscape_module, tmp_path):
    lab = landscape_module
    proposal = lab.LandscapeProposer(lab.Landscape(lab.skeleton(TINY.read_text()), 0)).propose(
        make_request(lab.skeleton(TINY.read_text()), seed=1)
    )
    assert proposal.description
    task = lab.Task("today", lab.ARMS["today"], 1.0, 12, 0, 0, 2.0, full_source=False,
                    seed_share=0.5)  # fmt: skip
    result = lab.search(task, tmp_path)
    assert result["experiments"] == 12 and result["records"] >= 12
    assert result["gain"] > 0  # 9 candidates on this landscape find something
    assert result["promotions"] >= 1 and 0 <= result["false_promotions"] <= result["promotions"]
