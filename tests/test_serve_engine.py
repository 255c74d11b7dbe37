"""The embedded endpoint's engine in-process, on demo-tiny: the order in which it serves rows (chat before an
evaluation's queued requests, a long prompt read in chunks between decoding steps) and seeded sampling
that a batch does not change. The events of one engine come from one thread, so their order is exact."""

from __future__ import annotations

import threading

import pytest

from studio.serving.server.engine import Engine, Job
from studio.serving.server.model import load
from studio.serving.server.prepare import prepare_generate
from studio.serving.server.schemas import GenerateRequest, parse


@pytest.fixture(scope="module")
def served(demo_model_source):
    return load(str(demo_model_source), {}, max_total_tokens=512)


class Recorder:
    """Submits requests to an engine and records every event, in the order the engine emitted them."""

    def __init__(self, engine: Engine, served):
        self.engine, self.served = engine, served
        self.log: list[tuple[str, dict]] = []
        self.done: dict[str, threading.Event] = {}
        self.first: dict[str, threading.Event] = {}

    def submit(self, name: str, inputs: str, priority: str = "interactive", **parameters) -> None:
        prep = prepare_generate(self.served, parse(GenerateRequest, {"inputs": inputs, "parameters": parameters}))
        self.done[name], self.first[name] = threading.Event(), threading.Event()

        def emit(event: dict) -> None:
            self.log.append((name, event))
            self.first[name].set()
            if event["type"] == "error" or "end" in event:
                self.done[name].set()

        self.engine.submit(Job(prep.input_ids, prep.adapter, prep.fmt, prep.sampling, emit, priority=priority))

    def wait(self, *names: str) -> None:
        for name in names or list(self.done):
            assert self.done[name].wait(120), f"{name} did not finish"

    def tokens(self, name: str) -> list[int]:
        return [e["token"]["id"] for n, e in self.log if n == name and e["type"] == "token"]

    def index(self, name: str) -> int:
        return next(i for i, (n, _) in enumerate(self.log) if n == name)


@pytest.fixture
def engine(served):
    engine = Engine(served, max_batch_size=4, max_batch_rows=1, prefill_chunk=16)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def long_answer(served) -> str:
    """A prompt whose greedy answer runs to 40 tokens at least (demo-tiny's weights end many sooner)."""
    engine = Engine(served, max_batch_size=8)
    try:
        rec = Recorder(engine, served)
        for i in range(8):
            rec.submit(f"probe{i}", f"Tell me everything about order {i}", max_new_tokens=40)
        rec.wait()
    finally:
        engine.close()
    for i in range(8):
        if len(rec.tokens(f"probe{i}")) == 40:
            return f"Tell me everything about order {i}"
    raise AssertionError("no demo-tiny prompt runs to 40 tokens")


def test_chat_is_admitted_ahead_of_an_evaluations_queued_requests(engine, served, long_answer):
    """max_batch_rows=1: one evaluation request runs, three wait; a chat request arriving then starts at once."""
    rec = Recorder(engine, served)
    for i in range(4):
        rec.submit(f"eval{i}", long_answer, priority="batch", max_new_tokens=16)
    assert rec.first["eval0"].wait(60)
    rec.submit("chat", "Where is my parcel?", max_new_tokens=4)
    rec.wait()
    chat_first = rec.index("chat")
    overtaken = [i for i in range(1, 4) if rec.index(f"eval{i}") > chat_first]
    assert len(overtaken) >= 2  # eval1 may have started if eval0 ended meanwhile; the others still waited
    counters = engine.metrics.counters
    assert counters["studio_interactive_admitted_ahead_total"] == 1
    assert counters["studio_admitted_batch_total"] == 4
    assert all(rec.tokens(f"eval{i}") == rec.tokens("eval0") and len(rec.tokens(f"eval{i}")) == 16
               for i in range(4))


def test_a_long_prompt_is_read_in_chunks_while_running_rows_decode(engine, served, long_answer):
    """prefill_chunk=16: a 100-token prompt takes 7 forwards, and the running row gets a token after each."""
    rec = Recorder(engine, served)
    rec.submit("running", long_answer, max_new_tokens=40)
    assert rec.first["running"].wait(60)
    long_prompt = " ".join(["refund policy for damaged parcels"] * 25)
    n_prompt = len(served.base.tokenizer(long_prompt)["input_ids"])
    assert 90 <= n_prompt <= 200
    mark = len(rec.log)
    rec.submit("long", long_prompt, max_new_tokens=2, details=True, decoder_input_details=True)
    rec.wait()
    first_of_long = next(i for i, (n, e) in enumerate(rec.log) if n == "long" and e["type"] == "token")
    during = sum(1 for n, _ in rec.log[mark:first_of_long] if n == "running")
    # the running row kept decoding while the long prompt was read: a token after each of its chunks
    # (read in one go, the running row would have waited: one token at most)
    assert during >= n_prompt // 16 - 2
    prefill = next(e for n, e in rec.log if n == "long" and e["type"] == "prefill")["tokens"]
    assert len(prefill) == n_prompt and prefill[0]["logprob"] is None
    assert all(t["logprob"] is not None and t["logprob"] <= 0 for t in prefill[1:])


def test_a_seed_gives_the_same_answer_alone_and_in_a_batch(served):
    engine = Engine(served, max_batch_size=8)
    try:
        rec = Recorder(engine, served)
        seeded = dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=40, top_p=0.9,
                      repetition_penalty=1.3, seed=7)
        rec.submit("alone", "hello there", **seeded)
        rec.wait("alone")
        others = [dict(max_new_tokens=12), dict(max_new_tokens=9, do_sample=True, seed=1),
                  dict(max_new_tokens=12, temperature=1.5, top_p=0.5, seed=3), dict(max_new_tokens=7, top_k=5, seed=9)]
        for i, params in enumerate(others):
            rec.submit(f"other{i}", f"a different question {i}", **params)
        rec.submit("batched", "hello there", **seeded)
        rec.submit("other seed", "hello there", **{**seeded, "seed": 8})
        rec.wait()
        assert rec.tokens("batched") == rec.tokens("alone") and len(rec.tokens("alone")) >= 1
        assert rec.tokens("other seed") != rec.tokens("alone")
        end = next(e["end"] for n, e in rec.log if n == "batched" and "end" in e)
        assert end["seed"] == 7
    finally:
        engine.close()
