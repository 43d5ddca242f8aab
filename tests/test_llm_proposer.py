"""The llm proposer, end to end through real litellm HTTP to a loopback stub."""

from __future__ import annotations

import os
import random
import threading
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

import pytest
from openai_stub import OpenAIStub

from autoresearch.default_plugins.llm_proposer import (
    PROVIDER_KEYS,
    LLMError,
    LLMProposer,
    parse_options,
)
from autoresearch.errors import UserError
from autoresearch.proposal import HistoryEntry, ProposalRequest

FAKE_KEY = "sk-test-FAKE-0123456789abcdef"  # planted in the environment, must never be written
PRICED_MODEL = "openai/stub"
UNPRICED_MODEL = "openai/stub-without-a-price"
INPUT_PRICE, OUTPUT_PRICE = 1e-6, 2e-6  # USD per token, registered for PRICED_MODEL

PARENT = """\
import math

LR = 0.01
DEPTH = 8


def main():
    print(LR * DEPTH)
"""

GOOD = """\
DESCRIPTION: raise the learning rate to 0.02

train.py
```python
<<<<<<< SEARCH
LR = 0.01
=======
LR = 0.02
>>>>>>> REPLACE
```
"""

HISTORY = (
    HistoryEntry("c0003", "c0001", "keep", 1.2345, -0.0100, "halve the depth", "llm:x"),
    HistoryEntry("c0004", "c0003", "crash", None, None, "use flash attention v9", "llm:x"),
)


@pytest.fixture(scope="module", autouse=True)
def stub_price():
    import litellm

    litellm.register_model({
        PRICED_MODEL: {
            "input_cost_per_token": INPUT_PRICE,
            "output_cost_per_token": OUTPUT_PRICE,
            "litellm_provider": "openai",
            "mode": "chat",
        }
    })


@pytest.fixture
def stub():
    with OpenAIStub() as server:
        yield server


@pytest.fixture(autouse=True)
def fake_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


def make(stub: OpenAIStub, **options) -> LLMProposer:
    settings = {"model": PRICED_MODEL, "api_base": stub.base_url, "timeout": 5.0, "retries": 1}
    return LLMProposer(parse_options({**settings, **options}), backoff_seconds=0.01)


def request(tmp_path, **changes) -> ProposalRequest:
    fields = {
        "parent_id": "c0001",
        "parent_source": PARENT,
        "program": "Lower val_bpb. Keep the code simple.",
        "history": HISTORY,
        "rng": random.Random(0),
        "work_dir": tmp_path / "c0005",
    }
    return ProposalRequest(**{**fields, **changes})


def test_good_edit_is_applied(stub, tmp_path):
    stub.reply(GOOD)
    proposal = make(stub).propose(request(tmp_path))
    assert proposal.source == PARENT.replace("LR = 0.01", "LR = 0.02")
    assert proposal.description == "raise the learning rate to 0.02"
    assert len(stub.requests) == 1
    sent = stub.requests[0]
    assert sent.body["model"] == "stub"
    assert sent.headers["authorization"] == f"Bearer {FAKE_KEY}"
    prompt = sent.last_user_message
    for part in ("Lower val_bpb", "LR = 0.01", "halve the depth", "use flash attention v9",
                 "<<<<<<< SEARCH"):
        assert part in prompt


def test_malformed_reply_then_good_one(stub, tmp_path):
    stub.reply("I think you should raise the learning rate.")
    stub.reply(GOOD)
    proposal = make(stub).propose(request(tmp_path))
    assert "LR = 0.02" in proposal.source
    assert len(stub.requests) == 2
    second = stub.requests[1]
    assert "no '<<<<<<< SEARCH' block" in second.last_user_message
    # The model sees its own failed answer before the error.
    assert second.messages[-2] == {
        "role": "assistant", "content": "I think you should raise the learning rate."
    }
    assert proposal.usage.prompt_tokens == 200 and proposal.usage.completion_tokens == 100


def test_a_unified_diff_reply_is_applied(stub, tmp_path):
    stub.reply(
        "DESCRIPTION: deeper\n\n```diff\n--- a/train.py\n+++ b/train.py\n"
        "@@ -1,2 +1,2 @@\n LR = 0.01\n-DEPTH = 8\n+DEPTH = 12\n```\n"
    )
    proposal = make(stub).propose(request(tmp_path))
    assert proposal.source == PARENT.replace("DEPTH = 8", "DEPTH = 12")
    assert proposal.description == "deeper"
    assert "```diff block is accepted" in stub.requests[0].last_user_message


def test_a_diff_that_does_not_apply_is_asked_for_again_as_a_diff(stub, tmp_path):
    unplaceable = "@@ -1,2 +1,2 @@\n LR = 0.5\n-DEPTH = 8\n+DEPTH = 12\n"  # no "LR = 0.5"
    stub.reply(f"DESCRIPTION: deeper\n\n```diff\n{unplaceable}```\n")
    stub.reply(GOOD)
    make(stub).propose(request(tmp_path))
    retry = stub.requests[1].last_user_message
    assert "a unified diff of train.py in a ```diff block" in retry
    assert "SEARCH/REPLACE" not in retry.split("Answer again")[1]


def test_the_briefing_does_not_call_a_token_budget_wall_clock(stub, tmp_path):
    stub.reply(GOOD)
    make(stub).propose(request(tmp_path))
    system = stub.requests[0].messages[0]["content"]
    assert "wall-clock" not in system and "training seconds or tokens" in system


def test_unmatched_block_is_sent_back_with_the_error(stub, tmp_path):
    stub.reply(GOOD.replace("LR = 0.01\n=", "LR = 0.1\n="))
    stub.reply(GOOD)
    make(stub).propose(request(tmp_path))
    assert "does not occur in train.py" in stub.requests[1].last_user_message


def test_edit_to_another_file_is_sent_back(stub, tmp_path):
    stub.reply(GOOD.replace("train.py\n", "program.md\n"))
    stub.reply(GOOD)
    make(stub).propose(request(tmp_path))
    assert "only train.py may be changed" in stub.requests[1].last_user_message


def test_gives_up_after_max_attempts(stub, tmp_path):
    for _ in range(3):
        stub.reply("DESCRIPTION: nothing\nno code")
    with pytest.raises(LLMError, match="no usable edit in 2 attempts"):
        make(stub, max_attempts=2).propose(request(tmp_path))
    assert len(stub.requests) == 2


def test_truncated_reply_gets_a_hint(stub, tmp_path):
    stub.reply("DESCRIPTION: x\n```python\nimport math\n", finish_reason="length")
    stub.reply(GOOD)
    make(stub).propose(request(tmp_path))
    assert "cut off at the token limit" in stub.requests[1].last_user_message


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_error_then_success_is_one_retry_layer(stub, tmp_path, status):
    stub.error(status)
    stub.reply(GOOD)
    proposal = make(stub, retries=1).propose(request(tmp_path))
    assert "LR = 0.02" in proposal.source
    assert len(stub.requests) == 2  # ours: one retry; litellm's and the SDK's: none


def test_no_hidden_retries_below_ours(stub, tmp_path):
    stub.error(503)
    stub.reply(GOOD)  # would be consumed if litellm or the OpenAI client retried
    with pytest.raises(LLMError, match=r"HTTP 503, after 1 try"):
        make(stub, retries=0).propose(request(tmp_path))
    assert len(stub.requests) == 1


def test_timeout_is_bounded_and_clear(stub, tmp_path):
    stub.slow(10)
    stub.slow(10)
    started = time.monotonic()
    with pytest.raises(LLMError, match="no reply within the timeout, after 2 tries"):
        make(stub, timeout=0.5, retries=1).propose(request(tmp_path))
    assert time.monotonic() - started < 5
    assert len(stub.requests) == 2


@pytest.mark.parametrize(
    "status, expected",
    [(401, "API key was refused"), (404, "not found"), (400, "request rejected")],
)
def test_non_transient_errors_fail_at_once_with_one_line(stub, tmp_path, status, expected):
    stub.error(status, f"nope, your key {FAKE_KEY} is wrong")
    stub.reply(GOOD)
    with pytest.raises(UserError, match=expected) as e:
        make(stub, retries=3).propose(request(tmp_path))
    assert len(stub.requests) == 1
    assert "\n" not in str(e.value)
    assert FAKE_KEY not in str(e.value)


def test_usage_tokens_and_cost(stub, tmp_path):
    stub.reply(GOOD, prompt_tokens=1000, completion_tokens=200)
    usage = make(stub).propose(request(tmp_path)).usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (1000, 200)
    assert usage.cost_usd == pytest.approx(1000 * INPUT_PRICE + 200 * OUTPUT_PRICE)
    assert usage.seconds > 0


def test_unknown_price_costs_zero_without_raising(stub, tmp_path):
    stub.reply(GOOD, prompt_tokens=1000, completion_tokens=200)
    usage = make(stub, model=UNPRICED_MODEL).propose(request(tmp_path)).usage
    assert usage.prompt_tokens == 1000
    assert usage.cost_usd == 0.0


def test_prompts_and_replies_are_saved_without_the_key(stub, tmp_path):
    echoing = f"DESCRIPTION: my key is {FAKE_KEY}\nno code here"  # a model that leaks the key
    stub.reply(echoing)
    stub.reply(GOOD)
    req = request(tmp_path, program=f"Lower val_bpb. (token {FAKE_KEY} pasted by mistake)")
    make(stub).propose(req)
    saved = sorted(p.name for p in req.work_dir.iterdir())
    assert saved == ["prompt_1.md", "prompt_2.md", "reply_1.md", "reply_2.md"]
    assert "LR = 0.01" in (req.work_dir / "prompt_1.md").read_text()
    assert "no '<<<<<<< SEARCH' block" in (req.work_dir / "prompt_2.md").read_text()
    assert (req.work_dir / "reply_2.md").read_text() == GOOD
    for path in req.work_dir.iterdir():
        assert FAKE_KEY not in path.read_text(), path.name
    # The stub did receive the key: it was used, just never written down.
    assert FAKE_KEY in stub.requests[0].headers["authorization"]


def test_crash_log_tail_is_in_the_prompt(stub, tmp_path):
    log = "\n".join(f"step {i}" for i in range(500)) + "\nRuntimeError: CUDA out of memory"
    stub.reply(GOOD)
    make(stub).propose(request(tmp_path, crash_log=log))
    prompt = stub.requests[0].last_user_message
    assert "RuntimeError: CUDA out of memory" in prompt
    assert "step 499" in prompt and "step 10\n" not in prompt  # only the tail


def test_proposer_is_safe_from_threads(stub, tmp_path):
    proposer = make(stub)
    results, errors = [], []
    for _ in range(4):
        stub.reply(GOOD)

    def work(i: int) -> None:
        try:
            results.append(proposer.propose(request(tmp_path, work_dir=tmp_path / f"w{i}")))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(results) == 4 and all("LR = 0.02" in p.source for p in results)


# -- readiness and options ------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, variable",
    [("openai/gpt-4o", "OPENAI_API_KEY"), ("anthropic/claude-sonnet-4-5", "ANTHROPIC_API_KEY")],
)
def test_missing_api_key_names_the_variable(monkeypatch, model, variable):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UserError, match=f"^{variable} is not set: export it"):
        LLMProposer(parse_options({"model": model})).check_ready()


def test_present_key_and_local_servers_are_ready(monkeypatch):
    LLMProposer(parse_options({"model": "openai/gpt-4o"})).check_ready()  # fake_key is set
    monkeypatch.delenv("OPENAI_API_KEY")
    LLMProposer(parse_options({"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"})).check_ready()
    LLMProposer(parse_options({"model": "ollama/llama3"})).check_ready()


def test_api_key_env_is_checked_and_used(stub, tmp_path, monkeypatch):
    proposer = make(stub, api_key_env="MY_SERVER_CREDENTIAL")
    with pytest.raises(UserError, match="^MY_SERVER_CREDENTIAL is not set"):
        proposer.check_ready()
    monkeypatch.setenv("MY_SERVER_CREDENTIAL", "local-secret-value")
    proposer.check_ready()
    stub.reply(GOOD)
    proposer.propose(request(tmp_path))
    assert stub.requests[0].headers["authorization"] == "Bearer local-secret-value"


def test_unknown_model_string_is_a_user_error(monkeypatch):
    with pytest.raises(UserError, match="unknown model 'nonsense/thing'"):
        LLMProposer(parse_options({"model": "nonsense/thing"})).check_ready()


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, "needs a model"),
        ({"model": "openai/x", "temprature": 0.5}, "did you mean 'temperature'"),
        ({"model": "openai/x", "timeout": "long"}, "'timeout' must be a number"),
        ({"model": "openai/x", "max_attempts": 0}, "'max_attempts' must be positive"),
        ({"model": "openai/x", "max_tokens": 1.5}, "'max_tokens' must be an integer"),
        ({"model": "openai/x", "temperature": 7}, r"in \[0, 2\]"),
    ],
)
def test_bad_options_are_user_errors(options, expected):
    with pytest.raises(UserError, match=expected):
        parse_options(options)


def test_registered_through_the_plugin_system():
    from autoresearch import plugins

    proposer = plugins.make_proposer("llm:openai/gpt-4o", {"temperature": 0.2},
                                     plugins.build_plugin_manager())
    assert isinstance(proposer, LLMProposer)
    assert proposer.options.model == "openai/gpt-4o" and proposer.options.temperature == 0.2
    assert proposer.name == "llm:openai/gpt-4o"


@pytest.mark.parametrize("provider", sorted(PROVIDER_KEYS))
def test_the_key_table_agrees_with_litellm(provider, monkeypatch):
    """The keys checked before litellm is imported are the ones litellm itself would need."""
    import litellm

    for name in PROVIDER_KEYS[provider]:
        monkeypatch.delenv(name, raising=False)
    model = f"{provider}/some-model"
    missing = litellm.validate_environment(model=model)["missing_keys"]
    assert set(PROVIDER_KEYS[provider]) <= set(missing)
    with pytest.raises(UserError, match=f"^{PROVIDER_KEYS[provider][0]}.* is not set"):
        LLMProposer(parse_options({"model": model})).check_ready()
    for name in PROVIDER_KEYS[provider]:  # any one of its variables is enough, for both
        monkeypatch.setenv(name, "sk-test-x")
        assert litellm.validate_environment(model=model)["keys_in_environment"]
        LLMProposer(parse_options({"model": model})).check_ready()
        monkeypatch.delenv(name)


# -- spend is never lost ----------------------------------------------------------------------

ONE_REPLY_USD = 1000 * INPUT_PRICE + 200 * OUTPUT_PRICE


def test_a_failed_proposal_carries_what_its_replies_cost(stub, tmp_path):
    stub.reply("no edit here", prompt_tokens=1000, completion_tokens=200)
    stub.error(503)  # the re-ask finds the provider down
    with pytest.raises(LLMError, match="HTTP 503") as e:
        make(stub, max_attempts=2, retries=0).propose(request(tmp_path))
    assert (e.value.usage.prompt_tokens, e.value.usage.completion_tokens) == (1000, 200)
    assert e.value.usage.cost_usd == pytest.approx(ONE_REPLY_USD)


def test_failed_and_abandoned_proposals_are_recorded_and_count_toward_the_cost_limit(
    stub, research_repo
):
    from helpers import FROZEN, committed, make_engine

    from autoresearch import population as pop
    from autoresearch.ledger import Ledger
    from autoresearch.testing import ScriptedRunner

    edit = GOOD.replace("LR = 0.01", "LR = 0.0").replace("LR = 0.02", "LR = 0.1")
    for _ in range(2):  # the first proposal: no usable edit in 2 attempts, both paid for
        stub.reply("no edit here", prompt_tokens=1000, completion_tokens=200)
    stub.reply(edit, prompt_tokens=1000, completion_tokens=200)  # trained
    stub.reply(edit.replace("0.1", "0.3"), prompt_tokens=1000, completion_tokens=200)
    proposer = make(stub, max_attempts=2)
    # 2.5 replies' worth: the failed proposal leaves room for one more, whose record reaches
    # the limit, while the next proposal, prefetched during its training, waits for a slot.
    engine = make_engine(
        research_repo, proposer, runner=ScriptedRunner(lambda s: 1.0, seconds=3.0),
        prefetch=1, max_cost_usd=2.5 * ONE_REPLY_USD,
    )  # fmt: skip
    records = engine.run(committed(research_repo, FROZEN))
    assert [r.status for r in records] == ["keep", "invalid", "discard", "invalid"]
    failed, abandoned = records[1], records[3]
    assert failed.reason.startswith("proposer failed: LLMError")
    assert failed.usage["cost_usd"] == pytest.approx(2 * ONE_REPLY_USD)
    assert failed.usage["prompt_tokens"] == 2000
    assert abandoned.reason.startswith("abandoned:")
    assert abandoned.usage["cost_usd"] == pytest.approx(ONE_REPLY_USD)
    assert pop.spent_usd(records) == pytest.approx(4 * ONE_REPLY_USD)  # nothing was lost
    assert engine.limit is not None and "spent" in engine.limit.reason
    ledger = Ledger(research_repo / ".autoresearch" / "ledger.jsonl")
    on_disk = pop.tag_records(ledger.records(), "t")
    assert pop.spent_usd(on_disk) == pytest.approx(4 * ONE_REPLY_USD)
