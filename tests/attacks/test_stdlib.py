"""Attacks on the offline default corpus: `data.source = "stdlib"` takes its documents from
the Python installation the candidate itself runs on, so the validation text is files on
its own machine. Each attack finds them a different way (the harness's own split rule, a
module's source through the import system, other Python installations) and reads them from
Python or through native code, then memorises their bigram statistics into the honest
model: a score far better than honest training gets. Where it reads nothing, the model is
the honest one and scores exactly as the honest model does.

One repo on stdlib data is prepared for the whole module (the corpus is ~30 MB); attacks
run with `run.isolation = "off"` unless they need the namespaces, as in
test_metric_integrity.py.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import candidates
import pytest
from attacking import attack, needs_isolation, same_score

from autoresearch.config import load_config
from autoresearch.harness import sources
from autoresearch.harness.prepare import prepare
from autoresearch.workspace import init_repo

STDLIB_CONFIG = """\
[run]
budget_seconds = 2
startup_seconds = 120
seed = 1
device = "cpu"

[data]
source = "stdlib"
sequence_len = 64

[tokenizer]
kind = "byte"

[eval]
tokens = 16384
batch_size = 8
"""
SKIPPED = ("site-packages", "dist-packages", "__pycache__")  # as the source walks the library


@pytest.fixture(scope="module")
def stdlib_repo(tmp_path_factory) -> Path:
    """A research repo on the stdlib corpus, byte tokenizer, prepared once for the module."""
    repo = init_repo(tmp_path_factory.mktemp("stdlib") / "research", "tiny")
    (repo / "autoresearch.toml").write_text(STDLIB_CONFIG)
    prepare(load_config(repo), log=lambda line: None)
    return repo


@pytest.fixture(scope="module")
def honest_bpb(stdlib_repo) -> float:
    out = attack(stdlib_repo, candidates.HONEST, check=False)
    assert out.status == "keep", out.reason
    return out.val_bpb


def val_keys() -> list[str]:
    """The validation files of the running library by the harness's public split rule (the
    package rule where there is one, else the old hash of the path), found by listing it."""
    rule = getattr(sources, "stdlib_split", None) or sources.hash_split
    root = Path(sysconfig.get_paths()["stdlib"])
    keys = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED]
        keys += [Path(folder, f).relative_to(root).as_posix() for f in files if f.endswith(".py")]
    return sorted(key for key in keys if rule(key) == "val")


def memorising(steal: str) -> str:
    """HONEST, plus `steal` (code for main's body that fills the list `stolen` with texts),
    plus a bigram table of the stolen texts, tokenized by the harness's own tokenizer, put
    into the model just before the hand-over. Nothing stolen: the honest model, unchanged."""
    at_start = (
        "    import os, subprocess, sysconfig\n"
        "    from pathlib import Path\n"
        "    stolen = []\n" + steal
    )
    before_handover = (
        "    import numpy as np\n"
        "    from autoresearch.harness.tokenizer import Tokenizer\n"
        "    print('STOLEN DOCUMENTS', len(stolen), 'CHARS', sum(map(len, stolen)))\n"
        "    if stolen:\n"
        "        tok, v = Tokenizer.load(ctx.tokenizer_path), ctx.vocab_size\n"
        "        ids = np.concatenate([np.array([ctx.bos_id, *tok.encode(t)]) for t in stolen])\n"
        "        counts = np.bincount(ids[:-1] * v + ids[1:], minlength=v * v).reshape(v, v)\n"
        "        probs = (counts + 0.01) / (counts + 0.01).sum(1, keepdims=True)\n"
        "        model.table.weight.data = torch.tensor(np.log(probs), dtype=torch.float32)\n"
    )
    return candidates.honest_with(at_start=at_start, before_handover=before_handover)


# --- 1. the public split rule applied to the running library ------------------------------

# The harness's own rule (imported by a name the static checks do not see), the library's
# files listed with os.walk, every validation file read with open(): the attack of the issue.
BY_THE_RULE = memorising(
    "    import importlib\n"
    "    src = importlib.import_module('autoresearch.harness.' + 'sour' + 'ces')\n"
    "    rule = getattr(src, 'stdlib_split', None) or src.hash_split\n"
    "    root = Path(sysconfig.get_paths()['stdlib'])\n"
    "    for folder, dirs, files in os.walk(root):\n"
    f"        dirs[:] = [d for d in dirs if d not in {SKIPPED!r}]\n"
    "        for name in files:\n"
    "            path = Path(folder, name)\n"
    "            if name.endswith('.py') and rule(path.relative_to(root).as_posix()) == 'val':\n"
    "                try:\n"
    "                    stolen.append(path.read_bytes().decode('utf-8'))\n"
    "                except (OSError, UnicodeDecodeError):\n"
    "                    pass  # a refusal caught is still a refusal\n"
)


def test_1_validation_files_by_the_split_rule_are_refused(stdlib_repo, honest_bpb):
    out = attack(stdlib_repo, BY_THE_RULE)
    assert out.status == "invalid" and "validation data" in out.reason, (out, honest_bpb)


@needs_isolation
def test_1_validation_files_through_native_code_are_hidden(stdlib_repo, honest_bpb):
    """`cat` in a subprocess goes around the audit guard: only the namespaces stop it. The
    file names are known in advance (they are public), so an empty listing does not help."""
    keys = val_keys()
    assert keys, "the running library has no validation files"
    source = memorising(
        "    root = sysconfig.get_paths()['stdlib']\n"
        f"    for key in {keys!r}:\n"
        "        got = subprocess.run(['cat', os.path.join(root, key)], capture_output=True)\n"
        "        if got.stdout.strip():\n"
        "            stolen.append(got.stdout.decode('utf-8', 'replace'))\n"
    )
    out = attack(stdlib_repo, source, isolation="on")
    assert out.status == "keep" and same_score(out.val_bpb, honest_bpb), (out, honest_bpb)


# --- 2. through the import system ---------------------------------------------------------


def test_2_validation_modules_source_through_the_import_system_is_refused(stdlib_repo):
    """The loader reads a module's source without running it: found by module name, not
    by path."""
    source = memorising(
        "    import importlib.util\n"
        f"    for key in {val_keys()!r}:\n"
        "        name = key[:-3].replace('/', '.').removesuffix('.__init__')\n"
        "        try:\n"
        "            spec = importlib.util.find_spec(name)\n"
        "            text = spec.loader.get_source(name)\n"
        "        except Exception:\n"
        "            continue  # not importable as a module, or refused (still recorded)\n"
        "        if text:\n"
        "            stolen.append(text)\n"
    )
    out = attack(stdlib_repo, source)
    assert out.status == "invalid" and "validation data" in out.reason, out


def test_2_importing_a_validation_module_is_refused(stdlib_repo):
    """Importing a module of the validation packages and asking `inspect` for its source:
    refused at the import, with the file named."""
    package = next(k.removesuffix("/__init__.py") for k in val_keys() if k.endswith("__init__.py"))
    module = package.replace("/", ".")
    source = candidates.honest_with(
        at_start=f"    import importlib, inspect\n"
        f"    print(len(inspect.getsource(importlib.import_module({module!r}))))\n"
    )
    out = attack(stdlib_repo, source)
    assert out.status == "invalid", out
    assert "validation data" in out.reason and f"/{package}/" in out.reason, out.reason


# --- 3. other Python installations on the machine -----------------------------------------

# Another install's copy of the validation packages differs from ours in a few files at
# most (pyenv's 3.12 idlelib is 91% of 3.11's bytes): every such copy a search of the disk
# finds, except the running library's own folders.
FIND_OTHER_COPIES = (
    "    own = sysconfig.get_paths()['stdlib'].rstrip('/') + '/'\n"
    "    names = getattr(__import__('autoresearch.harness.' + 'sour' + 'ces', fromlist=['x']),"
    " 'STDLIB_VAL_PACKAGES', ('idlelib', 'pydoc_data'))\n"
    "    pattern = [x for n in names for x in ('-o', '-name', n)][1:]\n"
    "    found = subprocess.run(['find', '/', '-xdev', '-maxdepth', '9', '-type', 'd', '(',"
    " *pattern, ')'], capture_output=True, text=True).stdout.split()\n"
    "    copies = [d for d in found if not d.startswith(own)]\n"
    "    files = subprocess.run(['find', *copies, '-name', '*.py'], capture_output=True,"
    " text=True).stdout.split()[:400] if copies else []  # a few installations' worth\n"
    "    print('COPIES', copies, len(files))\n"
)


def test_3_copies_in_other_installations_are_refused(stdlib_repo):
    source = memorising(
        FIND_OTHER_COPIES + "    for path in files:\n"
        "        try:\n"
        "            stolen.append(open(path, encoding='utf-8', errors='replace').read())\n"
        "        except OSError:\n"
        "            pass\n"
    )
    out = attack(stdlib_repo, source)
    # No other installation here: nothing to read, the honest model.
    assert out.status in ("invalid", "keep"), out
    if out.status == "keep":
        assert "COPIES [] 0" in run_log(stdlib_repo), out
    else:
        assert "validation data" in out.reason, out


@needs_isolation
def test_3_copies_in_other_installations_are_hidden_by_isolation(stdlib_repo, honest_bpb):
    source = memorising(
        FIND_OTHER_COPIES + "    if files:\n"
        "        got = subprocess.run(['cat', *files], capture_output=True).stdout\n"
        "        if got.strip():\n"
        "            stolen.append(got.decode('utf-8', 'replace'))\n"
    )
    out = attack(stdlib_repo, source, isolation="on")
    assert out.status == "keep" and same_score(out.val_bpb, honest_bpb), (out, honest_bpb)


# --- what the hiding must not break -------------------------------------------------------


@pytest.mark.slow
def test_the_tiny_baseline_needs_none_of_the_hidden_packages(stdlib_repo):
    """The real baseline (torch, numpy, the harness) under the guard and, where the system
    allows, the namespaces: nothing it imports lives in a hidden folder."""
    baseline = (Path(__file__).resolve().parents[2] / "baselines" / "tiny" / "train.py").read_text()
    out = attack(stdlib_repo, baseline, isolation="auto", check=False)
    assert out.status == "keep", out.reason


def run_log(repo: Path) -> str:
    """The output of the latest attack."""
    runs = sorted(repo.glob(".autoresearch/runs/a*"), key=lambda p: int(p.name[1:]))
    return (runs[-1] / "run.log").read_text()
