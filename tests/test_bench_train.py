"""The GPU benchmark's logic, on the CPU with a tiny shape: synthetic lengths, token counting, the
baseline and studio paths side by side, the results table, and how the "best" variant is composed."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device import CUDA  # noqa: E402

from bench import train_throughput as bench  # noqa: E402


def test_synthetic_rows_have_the_drawn_lengths():
    tok = bench.word_tokenizer(512)
    rows = bench.synthetic_rows(400, 512, max_length=256, median=60)
    lengths = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in rows]
    assert max(lengths) <= 256
    assert 50 <= statistics.median(lengths) <= 70  # log-normal around the median asked for
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    ids = tok.apply_chat_template(rows[0]["messages"], tokenize=True, return_dict=False)
    assert tok.unk_token_id not in ids and tok.pad_token_id not in ids  # every word is its own token


def test_token_counter_counts_real_tokens_not_padding():
    from transformers import DataCollatorForSeq2Seq

    tok = bench.word_tokenizer(64)
    counter = bench.TokenCounter(DataCollatorForSeq2Seq(tok, padding="longest"), tok.pad_token_id)
    counter([{"input_ids": [8, 9, 10], "labels": [-100, 9, 10]}, {"input_ids": [8], "labels": [8]}])
    assert counter.batches == [{"real": 4, "shape": [2, 3], "trained": 3}]


def test_packed_rows_cannot_see_each_other(tmp_path):
    """The packed variants are only fair if packing is exact: with the model as the studio loads it (no
    KV cache), two rows in one sequence with restarting position ids give the logits each gives alone."""
    import torch

    from studio.training import recipe

    bench.build_model("tiny", tmp_path)
    cfg = bench.bench_config(bench.BY_NAME["packed"], 128, 1)
    model = recipe.load_base_model(cfg, str(tmp_path)).eval()
    a, b = torch.randint(8, 500, (1, 30)), torch.randint(8, 500, (1, 20))
    with torch.no_grad():
        alone_a, alone_b = model(a).logits, model(b).logits
        positions = torch.cat([torch.arange(30), torch.arange(20)]).unsqueeze(0)
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=positions).logits
    assert torch.allclose(packed[:, :30], alone_a, atol=1e-5)
    assert torch.allclose(packed[:, 30:], alone_b, atol=1e-5)


def test_best_keeps_only_changes_that_help():
    def row(name, tps):
        return {"config": name, "shape": "s", "tokens_per_s": tps}

    results = [row("studio", 1000), row("packed-liger", 1100), row("packed-nockpt", 1300),
               row("packed-sac", 1200), row("packed-flex", 1010)]  # fmt: skip
    best = bench.compose_best(results, "s")
    assert best.settings == {"packing": True, "gradient_checkpointing": False}
    assert best.sft == {"use_liger_kernel": True}  # sac loses to nockpt (one checkpointing choice), flex < 3%
    assert best.attn is None
    assert bench.compose_best(results[1:], "s") is None


def test_varlen_attention_keeps_packed_rows_apart(tmp_path):
    """The varlen candidate (studio/training/attention.py) on a packed sequence: the same logits as SDPA with
    transformers' block-diagonal mask, and each row's as it gives alone (here its per-row reference path;
    the CUDA kernel itself runs in bench/gpu_check.sh)."""
    import torch

    from studio.training import attention, recipe

    bench.build_model("tiny", tmp_path)
    cfg = bench.bench_config(bench.BY_NAME["packed"], 128, 1)
    model = recipe.load_base_model(cfg, str(tmp_path)).eval()
    a, b = torch.randint(8, 500, (1, 30)), torch.randint(8, 500, (1, 20))
    ids, positions = torch.cat([a, b], 1), torch.cat([torch.arange(30), torch.arange(20)]).unsqueeze(0)
    with torch.no_grad():
        dense = model(input_ids=ids, position_ids=positions).logits
        model.set_attn_implementation(attention.register())
        varlen, alone_b = model(input_ids=ids, position_ids=positions).logits, model(b).logits
    assert torch.allclose(varlen, dense, atol=1e-5)
    assert torch.allclose(varlen[:, 30:], alone_b, atol=1e-5)
    cu, longest = attention.boundaries(positions, 1, 50, "cpu")
    assert cu.tolist() == [0, 30, 50] and longest == 30


def test_the_unsloth_summary_line_has_the_agreed_form():
    def row(config, tps, peak):
        return {"config": config, "shape": "llama-8b", "max_length": 2048, "tokens_per_s": tps, "preset": "balanced",
                "device_peak_gb": peak, "device": "NVIDIA H200"}

    lines = bench.versus_unsloth([row("studio", 6000, 9.0), row("unsloth", 5000, 10.0), row("baseline", 2000, 30)])
    assert lines == ["studio vs Unsloth (NVIDIA H200, llama-8b, 2048): 1.20x tokens/s, 0.90x peak memory, balanced"]
    assert bench.versus_unsloth([row("studio", 6000, 9.0)]) == []  # Unsloth not measured: no line


@pytest.mark.slow
def test_benchmark_runs_baseline_and_studio_on_cpu(tmp_path):
    out = tmp_path / "out"
    code = bench.main(["--shape", "tiny", "--max-length", "128", "--median", "40", "--configs",
                       "baseline,studio,padded,baseline-packed,packed-varlen", "--in-process", "--out", str(out),
                       "--steps", "1",
                       "--models-dir", str(tmp_path / "models")])  # fmt: skip
    assert code == 0
    results = {r["config"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(results) == {"baseline", "studio", "padded", "baseline-packed", "packed-varlen"}
    assert not any("error" in r for r in results.values())
    base, studio, padded = results["baseline"], results["studio"], results["padded"]
    for r in results.values():
        assert r["tokens_per_s"] > 0 and r["measured_micro_batches"] == r["grad_accum"]  # 1 measured step
        assert r["device"] == ("cuda" if CUDA else "cpu")
        assert len(r["micro_batch_s"]) == 2 * r["grad_accum"]  # 1 warm-up + 1 measured
    assert studio["estimate_gb"] > 0 and padded["estimate_gb"] > 0 and "estimate_gb" not in base
    # Same rows, same order, same answers-only loss: the plain and the studio's path start from the same losses.
    assert padded["first_losses"][0] == pytest.approx(base["first_losses"][0], abs=1e-3)
    assert len(base["first_losses"]) == 2
    assert base["padding_share"] > 0.1 and studio["padding_share"] == 0 and studio["packing"]
    assert studio["real_tokens_per_micro_batch"] > base["real_tokens_per_micro_batch"]
    # The careful hand-written baseline packs whole rows without padding, about as many tokens as the studio.
    careful = results["baseline-packed"]
    assert careful["padding_share"] == 0 and careful["micro_batch"] > 1
    assert careful["real_tokens_per_micro_batch"] > base["real_tokens_per_micro_batch"]
    # The varlen attention changes how attention is computed, not what: the same first loss as the preset.
    assert results["packed-varlen"]["first_losses"][0] == pytest.approx(studio["first_losses"][0], abs=1e-3)
    table = (out / "results.md").read_text()
    assert table.count("\n| tiny | 128 |") == 5 and "tokens/s" in table


def test_unsloth_pack_follows_what_import_loads(tmp_path):
    """bench/unsloth_pack.py's check, on a small package: an import that runs when the package loads and
    that nothing provides is reported, with the module that needs it; guarded and lazy imports are not."""
    from bench import unsloth_pack

    pkg = tmp_path / "unsloth"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os\nfrom .models import llama\n")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "llama.py").write_text(
        "import torch\nimport missing_needed\ntry:\n    import missing_optional\nexcept ImportError:\n    pass\n"
        "if is_wandb_available():\n    import wandb\n\ndef later():\n    import missing_lazy\n"
    )
    (pkg / "unused.py").write_text("import missing_but_never_loaded\n")
    assert unsloth_pack.unresolved(tmp_path, roots=("unsloth",)) == {"missing_needed": ["unsloth.models.llama"]}
