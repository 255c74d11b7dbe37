"""Comparing runs and their lineage (issue 19): two finished runs of one workspace (tests/conftest.py's
compared_runs: the trained run, and a run continued from it on a changed dataset version with other settings,
both evaluated on one golden set, the first published) side by side, through the core, the CLI and the
Runs tab's handlers."""

from __future__ import annotations

import json
import re

import pytest

from studio.cli import main
from studio.core.errors import InvalidInput, NotFound
from studio.evaluation.runner import list_evaluations
from studio.publishing.compare import compare
from studio.publishing.lineage import lineage, lineage_markdown


def test_two_runs_side_by_side(compared_runs):
    ws, first, second = compared_runs.ws, compared_runs.first, compared_runs.second
    found = compare(ws, [first, second])
    assert [r["id"] for r in found["runs"]] == [first, second]

    # one chart: each run's training and held-out loss, at the steps it logged them
    series = {(p["run"], p["curve"]) for p in found["curves"]}
    assert series == {(r, c) for r in (first, second) for c in ("training loss", "held-out loss")}
    assert max(p["step"] for p in found["curves"] if p["run"] == second) == 10
    assert [p["step"] for p in found["curves"] if p["run"] == second and p["curve"] == "held-out loss"] == [5, 10]

    # the settings: only what differs, from the frozen configs
    differ = {d["setting"]: d["values"] for d in found["settings"]["differ"]}
    assert differ["learning_rate"] == {first: 3e-3, second: 1e-3}
    assert differ["max_steps"][second] == 10 != differ["max_steps"][first]
    assert differ["continues run"] == {first: None, second: first}
    assert set(differ["dataset_id"].values()) == {r["dataset_id"] for r in found["runs"]}
    assert "lora_r" not in differ and "base_model" not in differ and found["settings"]["same"] >= 10

    # the scores on the golden set both were evaluated on, as each evaluation stored them
    shared = found["scores"]["shared"]
    assert [s["golden_hash"] for s in shared] == [compared_runs.golden_hash]
    for run_id in (first, second):
        stored = list_evaluations(ws, run_id=run_id, golden=compared_runs.golden_hash)[0]
        assert shared[0]["runs"][run_id]["evaluation"] == stored.id
        assert shared[0]["runs"][run_id]["token_f1"] == stored.summary["tuned"]["token_f1"]
    assert shared[0]["questions"] == 3 and 0 <= shared[0]["base"]["token_f1"] <= 1

    # the data: two versions; two questions gone, one answer rewritten, two questions new, nine the same
    first_data, second_data = (found["data"]["by_run"][r] for r in (first, second))
    change = found["data"]["changes"]
    assert change == [{"from": first_data, "to": second_data, "added": 2, "removed": 2, "changed": 1,
                       "unchanged": 9, "rows_before": 12, "rows_after": 12}]

    # what became of them
    made = found["outcomes"]
    assert [e["id"] for e in made[first]["exports"]] == [compared_runs.export_id]
    assert [d["id"] for d in made[first]["deployments"]] == [compared_runs.deployment_id]
    assert made[first]["deployments"][0]["url"].startswith("http://127.0.0.1:")
    assert made[second] == {"exports": [], "deployments": []}


def test_comparing_needs_two_known_runs(compared_runs):
    with pytest.raises(InvalidInput, match="needs two runs or more; got 1"):
        compare(compared_runs.ws, [compared_runs.first, compared_runs.first])
    with pytest.raises(NotFound, match="no run 'run-nope'"):
        compare(compared_runs.ws, [compared_runs.first, "run-nope"])


def test_lineage_from_the_dataset_to_the_deployment(compared_runs):
    ws, first, second = compared_runs.ws, compared_runs.first, compared_runs.second
    parent = lineage(ws, first)
    assert parent["ancestors"] == [] and [c["id"] for c in parent["continued_by"]] == [second]
    assert parent["deployments"][0]["export_id"] == compared_runs.export_id
    text = lineage_markdown(parent)
    order = [parent["dataset"]["id"], f"**run `{first}`", compared_runs.export_id, compared_runs.deployment_id,
             f"continued by run `{second}`"]
    assert [text.index(part) for part in order] == sorted(text.index(part) for part in order), text
    assert f"]({parent['deployments'][0]['url']})" in text  # the deployment's URL is a link

    child = lineage(ws, second)
    assert [a["id"] for a in child["ancestors"]] == [first]
    assert child["dataset"]["id"] == parent["dataset"]["id"] != child["run"]["dataset"]["id"]
    assert child["exports"] == [] and "not exported or published yet" in lineage_markdown(child)


def test_cli_compare_and_lineage(compared_runs, capsys):
    home, first, second = str(compared_runs.ws.home), compared_runs.first, compared_runs.second
    assert main(["--home", home, "runs", "compare", first, second]) == 0
    text = capsys.readouterr().out
    assert "learning_rate: 0.003 | 0.001" in text and re.search(r"max_steps: \d+ \| 10\n", text)
    assert "+2 added, -2 removed, 1 changed, 9 same" in text and compared_runs.deployment_id in text
    assert main(["--home", home, "runs", "compare", first, second, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"runs", "curves", "settings", "scores", "data", "outcomes"}
    assert main(["--home", home, "runs", "lineage", second]) == 0
    text = capsys.readouterr().out
    assert f"run {second}" in text and f"run {first}" in text and "**" not in text and "`" not in text
    assert main(["--home", home, "runs", "compare", first]) == 2
    assert "Comparing needs two runs or more" in capsys.readouterr().err


def test_runs_tab_handlers_format_the_comparison(compared_runs):
    import gradio as gr

    from studio.ui import compare_view

    ws, first, second = compared_runs.ws, compared_runs.first, compared_runs.second
    summary, curves, settings, scores, table, data, outcomes = compare_view.comparison_view(ws, [first, second])
    assert {row[2] for row in curves.value["data"]} == {
        "1: " + first[-4:] + " training", "1: " + first[-4:] + " held-out",
        "2: " + second[-4:] + " training", "2: " + second[-4:] + " held-out"}
    assert list(settings.columns) == ["setting", first, second]
    assert settings.set_index("setting").loc["learning_rate"].tolist() == ["0.003", "0.001"]
    assert len(scores.value["data"]) == 9  # three scores for each run and for the base model
    assert set(table["score"]) >= {"exact_match", "token_f1", "rouge_l"}
    assert "+2** rows added" in data and compared_runs.deployment_id in outcomes
    with pytest.raises(gr.Error, match="two runs or more"):
        compare_view.comparison_view(ws, [first])
