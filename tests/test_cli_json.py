"""The CLI's contract for scripts: with --json, every verb prints exactly one JSON document on stdout — the
result, or {"error": {...}} with exit code 2 — whatever it does on the way (a followed run, a started
endpoint, a pip install's progress go to stderr). Every verb of the parser is run here; a new verb that is
not added to this list fails the test."""

from __future__ import annotations

import argparse
import json

import pytest
from browser import ROOT

from studio.cli import build_parser, main

pytestmark = pytest.mark.slow
SAMPLE = str(ROOT / "assets" / "samples" / "support_faq.csv")
GOLDEN = str(ROOT / "assets" / "samples" / "support_faq_golden.csv")


def verbs(parser=None, prefix=()) -> set[tuple[str, ...]]:
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set().union(*(verbs(sub, (*prefix, name)) for name, sub in action.choices.items()))
    return {prefix}


class Cli:
    def __init__(self, capsys, home):
        self.capsys, self.home, self.ran = capsys, str(home), set()

    def __call__(self, *argv: str, code: int = 0):
        self.capsys.readouterr()
        got = main(["--home", self.home, *argv, "--json"])
        out = self.capsys.readouterr().out
        try:
            document = json.loads(out)  # one document and nothing else ("Extra data" otherwise)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"studio {' '.join(argv)} --json printed no single JSON document: "
                                 f"{out[:500]!r}") from exc
        assert got == code, (argv, got, document)
        if code == 2:
            assert set(document["error"]) >= {"kind", "message", "fix"}, document
        words = [a for a in argv if not a.startswith("-")]
        self.ran.add(next(tuple(words[:n]) for n in (2, 1) if tuple(words[:n]) in verbs()))
        return document


def test_every_verb_prints_one_json_document(ws, capsys, monkeypatch):
    cli = Cli(capsys, ws.home)
    monkeypatch.setenv("STUDIO_PASSWORD", "long enough password")

    cli("doctor")
    cli("models", "list")
    cli("models", "show", "demo-tiny")
    ds = cli("data", "import", SAMPLE)["version"]["id"]
    cli("data", "list")
    cli("data", "show", ds)
    cli("data", "rename", ds, "faq")
    cli("train", "--data", ds, "--model", "demo-tiny", "--preset", "quick-test", "--dry-run")
    run = cli("train", "--data", ds, "--model", "demo-tiny", "--preset", "quick-test", "--set", "max_steps=2",
              "--wait")["id"]
    cli("runs", "list")
    cli("runs", "show", run)
    cli("runs", "show", run, "--follow")
    cli("runs", "cancel", run, "--wait", "0", code=2)  # finished: nothing to stop
    cli("runs", "resume", run, code=2)
    again = cli("runs", "rerun", run)["id"]
    cli("runs", "cancel", again)
    cli("runs", "worker", "--once")
    cli("runs", "compare", run, again)
    cli("runs", "compare", run, code=2)  # one run: nothing to compare with
    cli("runs", "lineage", again)
    cli("runs", "rm", again)
    cli("data", "rm", ds, code=2)  # a run uses it

    ep = cli("endpoints", "start", "--run", run)["id"]
    cli("endpoints", "list")
    cli("chat", "ask", run, "Where is my parcel?", "--max-new-tokens", "8")
    cli("chat", "correct", "--run", run, "--question", "Where is my parcel?", "--corrected", "In transit.")
    cli("endpoints", "register", "http://127.0.0.1:9", "--name", "nowhere", "--no-check")
    cli("endpoints", "remove", "nowhere")
    evaluation = cli("eval", "run", run, "--golden", GOLDEN, "--max-new-tokens", "8")["id"]
    cli("eval", "list")
    cli("eval", "show", evaluation)
    cli("eval", "compare", evaluation)
    cli("eval", "ab", evaluation, "--vote", "1", "a")
    cli("eval", "versus", run, "--golden", GOLDEN, code=2)  # it started from the base model: no run to compare with
    cli("feedback", "export", "--dry-run", code=2)  # too little feedback to train on
    cli("endpoints", "stop", ep)
    cli("serve", "--model", "demo-tiny", "--dry-run")
    cli("publish", run, "--target", "local", "--dry-run")
    cli("deployments", "list")
    cli("deployments", "show", "local:nothing", code=2)
    cli("deployments", "verify", "local:nothing", code=2)
    cli("deployments", "rollback", "local:nothing", code=2)
    cli("engines", "list")
    cli("engines", "remove", "vllm", "--version", "0.0.0-never-installed", code=2)

    cli("users", "add", "alice", "--role", "admin")
    cli("users", "add", "bob")
    cli("users", "list")
    cli("users", "passwd", "bob")
    cli("users", "role", "bob", "viewer")
    cli("users", "allow-targets", "local")
    cli("users", "rm", "bob")
    cli("audit")

    cli("cluster", "show")
    cli("cluster", "check", "http://127.0.0.1:1", code=2)  # nothing listens there: a clear error
    cli("cluster", "set", "http://127.0.0.1:1", code=2)  # refused: an unreachable cluster is never stored
    cli("cluster", "clear")
    cli("tracking", "show")
    cli("tracking", "check", code=2)  # no URI set: says how to give one
    cli("tracking", "set", "http://127.0.0.1:1", code=2)  # refused: a server that does not answer is never stored
    cli("tracking", "clear")

    untested = verbs() - cli.ran - {("engines", "install")}  # installing vLLM: test_publish_vllm's session set-up
    assert not untested, f"verbs missing from this test: {sorted(untested)}"
