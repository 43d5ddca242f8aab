"""No API key or token ends up anywhere a run writes, nor in a candidate's reach.

One real `autoresearch evolve` runs with recognisable fake secrets in its
environment. The `llm` proposer talks to a loopback OpenAI-compatible stub
with the planted OPENAI_API_KEY (so the key really is read and sent), and one
request fails with a provider error that quotes the key back. An `agent`
proposer is given two of the keys, prints its environment and fails quoting a
key. The baseline and every candidate print their whole environment (and,
inside the sandbox's namespaces, what they can read of other processes'
/proc/<pid>/environ), so a secret that reached a candidate lands in its
run.log. Then the report commands (`leaderboard`, `show`, `export`, `status`)
run with the same environment, and every byte the run produced is searched
for the marker: every file of the research repo (.autoresearch/ and .git/
included, zlib and gzip decompressed, parquet decoded), every git object
(`git cat-file --batch-all-objects`, packed or loose, reachable or not) and
`git log -p --all`, the data cache, the HOME and TMPDIR the run was given (the
agent's scratch folders are made there), and every command's output.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import git
from candidates import HONEST
from helpers import cli
from openai_stub import OpenAIStub

from autoresearch.constants import rewrite_constants
from autoresearch.harness.sandbox import isolation_works

MARKER = b"PLANTED-SECRET"  # in every planted value: finding it anywhere is a leak
PLANTED = {
    "OPENAI_API_KEY": "sk-PLANTED-SECRET-1-openai-5f2c9a7e1b",
    "ANTHROPIC_API_KEY": "sk-ant-PLANTED-SECRET-2-anthropic-88d1",
    "HF_TOKEN": "hf_PLANTED-SECRET-3-huggingface-0c4e",
    "GITHUB_TOKEN": "ghp_PLANTED-SECRET-4-github-7a93",
    "AWS_SECRET_ACCESS_KEY": "PLANTED-SECRET-5-aws/wJalrXUtnFEMI",
    "MY_SERVICE_TOKEN": "PLANTED-SECRET-6-custom-service-31f7",
    # A name that does not look secret: redaction by name cannot catch it, so this checks
    # that nothing copies the environment wholesale (the candidate's allowlist included).
    "DATABASE_URL": "postgres://admin:PLANTED-SECRET-7-db@127.0.0.1/prod",
}
MODEL = "openai/stub-model"  # unpriced: costs 0, and litellm never looks anything up online
TRAINED = 2  # the baseline and one llm candidate; failed proposals are recorded in between
TAG = "secrets"

# The baseline and every candidate print their whole environment. Where the candidate runs
# in its own namespaces it also reads every /proc/<pid>/environ it can see, printing the
# planted names it finds (names are not secrets; their values must be out of its reach).
# Without namespaces the candidate shares /proc with every process of its user, evolve
# included, whose environ holds the keys: only the namespaces can prevent that, so that part
# is left out there.
# Training is the honest bigram: every run hands over a model and is scored.
ENV_SNOOP = """\
    import os, pathlib
    print('ENV', dict(os.environ))
"""
PROC_SNOOP = f"""\
    wanted = {sorted(PLANTED)!r}
    readable = 0
    for environ in pathlib.Path('/proc').glob('[0-9]*/environ'):
        try:
            entries = environ.read_bytes().split(b'\\0')
        except OSError:
            continue
        readable += 1
        for entry in entries:
            name, _, value = entry.decode('utf-8', 'replace').partition('=')
            if name in wanted:
                print('PROC', environ.parent.name, name, value)
    print('PROC-SNOOP read', readable, 'environ files')
"""

# A coding agent that prints its environment (it is given two of the keys) and then fails
# quoting one: agent.log and the failure reason recorded in the ledger must be redacted.
# Failing costs no training, so the agent can be picked often at no cost in time.
LEAKY_AGENT = """\
import os, sys
print("agent environment:", dict(os.environ))
print("fatal: the API key", os.environ["ANTHROPIC_API_KEY"], "was refused")
sys.exit(3)
"""
AGENT_ENV = ["ANTHROPIC_API_KEY", "HF_TOKEN"]


def snoop(proc: bool, lr: float = 0.2) -> str:
    """The honest bigram at learning rate `lr`, printing what secrets it can reach."""
    lines = ENV_SNOOP + (PROC_SNOOP if proc else "")
    src = HONEST.replace("    ctx = harness.context()\n", "    ctx = harness.context()\n" + lines)
    return rewrite_constants(src, {"LR": lr})


def whole_file_reply(source: str, description: str) -> str:
    """A reply holding the complete new train.py: applies to any parent."""
    return f"DESCRIPTION: {description}\n\n```python\n{source}```\n"


# -- the scanner ------------------------------------------------------------------------------


def readable_forms(path: Path) -> Iterator[tuple[str, bytes]]:
    """The file's bytes, and what they decode to when compressed: a leak may hide in either."""
    data = path.read_bytes()
    yield "", data
    decoders = {
        b"\x1f\x8b": (" (gunzipped)", gzip.decompress),
        b"\x78": (" (zlib-decompressed)", zlib.decompress),  # git's loose objects, among others
    }
    for magic, (suffix, decode) in decoders.items():
        if data.startswith(magic):
            try:
                decoded = decode(data)
            except (OSError, EOFError, zlib.error):
                continue  # looked compressed but is not: the raw bytes were scanned
            yield suffix, decoded
    if data[:4] == b"PAR1":  # parquet pages are compressed: read the table back
        import pyarrow.parquet as pq

        yield " (parquet rows)", repr(pq.read_table(path).to_pylist()).encode()


def files_under(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root):  # not following links: each file is seen once
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                yield path


def leaks(where: str, data: bytes) -> list[str]:
    """One line per occurrence of the marker in `data`, naming `where` and the context."""
    found, start = [], data.find(MARKER)
    while start != -1:
        context = data[max(0, start - 60) : start + 60].decode("utf-8", "replace")
        found.append(f"{where}: ...{context!r}...")
        start = data.find(MARKER, start + 1)
    return found


def scan_tree(root: Path) -> tuple[int, list[str]]:
    """(files scanned, leaks) for every file under `root`."""
    found, count = [], 0
    for path in files_under(root):
        count += 1
        try:
            for suffix, data in readable_forms(path):
                found += leaks(f"{path}{suffix}", data)
        except OSError as e:  # a file the run removed while we walked: nothing to leak
            if path.exists():
                raise AssertionError(f"cannot read {path}: {e}") from e
    return count, found


def scan_git(repo: Path) -> list[str]:
    """Every object in the repository, decompressed by git itself, and the full patch log."""
    found = []
    for what, args in (
        ("git objects", ["cat-file", "--batch-all-objects", "--batch"]),
        ("git log -p --all", ["log", "-p", "--all", "--reflog"]),
    ):
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True).stdout
        assert out, f"{what} printed nothing: the scan would prove nothing"
        found += leaks(what, out)
    return found


# -- the tests --------------------------------------------------------------------------------


def test_the_scanner_finds_a_planted_value(tmp_path):
    """The scan below can fail: it finds the marker in plain, zlib, gzip and parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = PLANTED["HF_TOKEN"].encode()
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "plain.log").write_bytes(b"token=" + value + b"\n")
    (tmp_path / "object").write_bytes(zlib.compress(b"blob 40\0" + value))
    (tmp_path / "log.gz").write_bytes(gzip.compress(value))
    table = pa.table({"reason": [value.decode()]})  # compressed, no plain-text statistics
    pq.write_table(table, tmp_path / "ledger.parquet", compression="gzip", write_statistics=False)
    (tmp_path / "clean.txt").write_text("nothing to see\n")
    count, found = scan_tree(tmp_path)
    assert count == 5
    # The compressed ones are found only in their decoded form: the decoding is what finds them.
    assert sorted(line.split(":")[0].rsplit("/", 1)[1] for line in found) == [
        "ledger.parquet (parquet rows)", "log.gz (gunzipped)", "object (zlib-decompressed)",
        "plain.log",
    ]  # fmt: skip
    assert leaks("stdout", b"...\n" + value) and not leaks("stdout", b"sk-something-else")
    # A compressed file in git is found through git's own decompression, too.
    repo = git.Repo.init(tmp_path / "repo")
    (tmp_path / "repo" / "f.txt").write_bytes(value)
    repo.index.add(["f.txt"])
    repo.index.commit("add", author=git.Actor("t", "t@x"), committer=git.Actor("t", "t@x"))
    repo.close()
    assert {line.split(":")[0] for line in scan_git(tmp_path / "repo")} == {
        "git objects", "git log -p --all"
    }  # fmt: skip


def test_planted_secrets_never_reach_files_logs_exports_or_candidates(research_repo, tmp_path):
    repo = research_repo
    # A HOME and a TMPDIR of the run's own, so whatever it (or litellm, torch, git) writes
    # there is scanned too; git's identity is given outright since HOME has no .gitconfig.
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {
        **os.environ,
        **PLANTED,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm must never reach the network
    }  # fmt: skip
    outputs: list[tuple[str, str]] = []  # (command, stdout + stderr) of every command

    def run(*args: str) -> subprocess.CompletedProcess:
        result = cli(*args, cwd=repo, env=env)
        outputs.append((" ".join(args), result.stdout + result.stderr))
        assert result.returncode == 0, f"autoresearch {' '.join(args)}:\n{result.stderr}"
        return result

    proc = isolation_works()
    agent = tmp_path / "leaky_agent.py"
    agent.write_text(LEAKY_AGENT)
    with OpenAIStub() as stub:
        (repo / "train.py").write_text(snoop(proc))
        with (repo / "autoresearch.toml").open("a") as config:
            # prefetch = 0: one proposal at a time, so the stub's replies go out in order and
            # the provider error below (retries = 0) fails the first llm proposal, recorded.
            # The agent is picked three times as often as the llm, so it surely runs; its
            # failures must not stop the run (max_invalid).
            config.write(
                "\n[evolve]\nprefetch = 0\nmax_invalid = 100\n"
                f'\n[proposers.llm]\napi_base = "{stub.base_url}"\n'
                "timeout = 30.0\nretries = 0\nmax_attempts = 2\n"
                f"\n[proposers.agent]\ncommand = {json.dumps([sys.executable, str(agent)])}\n"
                f"env = {json.dumps(AGENT_ENV)}\nweight = 3\ntimeout = 60\n"
            )
        with git.Repo(repo) as r:
            r.index.add(["train.py", "autoresearch.toml"])
            r.index.commit("the snooping baseline")
        # A provider that quotes the key in its error, as real ones do ("Incorrect API key
        # provided: sk-..."), then good edits.
        stub.error(503, f"overloaded; your key {PLANTED['OPENAI_API_KEY']} is rate limited")
        for i, lr in enumerate((0.25, 0.3, 0.35, 0.4)):
            stub.reply(whole_file_reply(snoop(proc, lr), f"learning rate {lr} (edit {i})"))
        run("evolve", "--proposer", f"llm:{MODEL}", "--proposer", "agent", "--population", "1",
            "--budget", "1", "--calibrate", "0", "--max-experiments", str(TRAINED),
            "--tag", TAG)  # fmt: skip
        requests = list(stub.requests)

    # The secrets were really there to leak: the key was read and sent to the provider...
    assert len(requests) >= 2, "the llm proposer did not call the stub for its two replies"
    for request in requests:
        assert request.headers.get("authorization") == f"Bearer {PLANTED['OPENAI_API_KEY']}"
    records = [json.loads(line) for line in (repo / ".autoresearch/ledger.jsonl").read_text()
               .splitlines() if line.strip()]  # fmt: skip
    # Both errors quoting a key were recorded, as reasons the scan below reads.
    # (The proposer choice is seeded by the tag: if a change to the engine's draws ever
    # leaves the agent unpicked, this says so; another TAG picks differently.)
    outcomes = {(r.get("proposer"), r["status"]): r["id"] for r in records}
    assert ("agent", "invalid") in outcomes, f"the agent was never picked: {records}"
    assert (f"llm:{MODEL}", "invalid") in outcomes, records
    assert all("[redacted]" in r["reason"] for r in records if r["status"] == "invalid"), records
    assert any(r.get("proposer") == f"llm:{MODEL}" and r.get("val_bpb") for r in records), records
    # ...the agent had its two keys and printed them...
    agent_logs = sorted((repo / ".autoresearch/runs").glob("*/proposal/agent.log"))
    assert agent_logs and all("[redacted]" in p.read_text() for p in agent_logs), agent_logs
    # ...and every candidate that ran printed its environment (and looked through /proc).
    logs = sorted((repo / ".autoresearch/runs").glob("*/run.log"))
    assert len(logs) >= TRAINED, logs
    for log in logs:
        text = log.read_text(errors="replace")
        assert "ENV {" in text and "'PATH'" in text, f"{log} shows no environment"
        assert ("PROC-SNOOP read" in text) == proc, f"{log}: the /proc snoop did not run"

    run("leaderboard", "--json", "--all", "--tag", TAG)
    for cid in outcomes.values():  # one of each kind, the invalid ones too: reasons quote errors
        run("show", cid)
    run("export")  # .autoresearch/exports/results.tsv
    run("export", "--format", "jsonl", "-o", "-")
    run("export", "--format", "parquet", "-o", str(repo / ".autoresearch/ledger.parquet"))
    run("status")

    found = []
    counts = {}
    cache = Path(os.environ["AUTORESEARCH_CACHE"])
    for root in (repo, cache, home, tmp):
        counts[root], in_root = scan_tree(root)
        found += in_root
    found += scan_git(repo)
    for command, text in outputs:
        found += leaks(f"output of `autoresearch {command}`", text.encode())
    # Walks that saw nothing would prove nothing.
    assert counts[repo] > 50 and counts[cache] > 0, counts
    assert (repo / ".autoresearch/exports/results.tsv").is_file()
    assert (repo / ".autoresearch/ledger.parquet").is_file()
    assert not found, "planted secrets leaked:\n" + "\n".join(found)
    # The same walk does see a value that lands in a run folder, compressed or not.
    (repo / ".autoresearch/runs/e0001/leak.z").write_bytes(zlib.compress(MARKER))
    assert len(scan_tree(repo)[1]) == 1


def test_a_proposal_that_carries_a_secret_is_refused_and_redacted(research_repo, monkeypatch):
    """A proposer (a third-party plugin, an agent that read its environment) may put a key in
    the description, its error or the source: none of it reaches git or the ledger."""
    from autoresearch.config import load_config
    from autoresearch.engine import Engine
    from autoresearch.testing import ScriptedProposer

    secret = PLANTED["OPENAI_API_KEY"]
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    repo = research_repo
    (repo / "train.py").write_text(HONEST)
    index = git.Repo(repo).index
    index.add(["train.py"])
    base = index.commit("baseline").hexsha
    keyed_source = HONEST.replace("LR = 0.2", f"LR = 0.2  # {secret}")
    # The two refused first (they do not count as experiments): the baseline and the one
    # trained after them, whose description names the key, are the limit.
    proposer = ScriptedProposer([
        (keyed_source, "a comment"),
        RuntimeError(f"401 for key {secret}"),
        (rewrite_constants(HONEST, {"LR": 0.1}), f"uses the key {secret}"),
        (rewrite_constants(HONEST, {"LR": 0.05}), "another"),
    ])  # fmt: skip
    settings = {"evolve.calibrate": 0, "evolve.prefetch": 0, "evolve.max_experiments": 2}
    engine = Engine(repo, load_config(repo, settings), "red", {proposer.name: (proposer, 1.0)},
                    say=lambda line: None)  # fmt: skip
    records = engine.run(base)
    assert [r.status for r in records].count("invalid") == 2
    assert records[-1].description.startswith("uses the key")  # trained, its key redacted
    assert any("secret environment variable" in r.reason for r in records)
    assert not leaks("ledger", (repo / ".autoresearch/ledger.jsonl").read_bytes())
    assert not scan_git(repo)
    assert not scan_tree(repo / ".autoresearch")[1]


def test_a_secret_cut_at_the_edge_of_a_text_is_masked_too():
    from autoresearch.redact import MASK, redact

    key = "sk-cut-0123456789abcdef"
    assert redact(f"key {key} here", [key]) == f"key {MASK} here"
    assert redact(key[7:] + " rest of the log", [key]) == f"{MASK} rest of the log"  # a tail
    assert redact("the log up to " + key[:9], [key]) == f"the log up to {MASK}"  # a head
    assert redact(key[-3:] + " tells little", [key]) == key[-3:] + " tells little"
    assert redact("sk-cut-0 is not its end", [key]) == "sk-cut-0 is not its end"
    socket = "/tmp/ssh-XXXXabcd/agent.1234"  # SSH_AUTH_SOCK: its name looks secret
    assert redact("1234 steps done", [socket]) == "1234 steps done"
