"""A run starts at once (issue 18): `studio train` checks the fit and queues the run without importing torch
(the parameter count read back from the workspace's cache, the dataset's token counts from its stored report,
no GPU driver answered from the file system), sqlite_utils comes without pandas, and the training process
leaves bitsandbytes unimported on a machine without a GPU. Timing is bench/startup.py's business; these
tests check the behaviour that makes it fast."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from studio.core.driver import no_gpu_driver
from studio.models import params
from studio.models.catalog import catalog_entry
from studio.models.params import cache_dir, count_params

LLAMA_1B = "meta-llama/Llama-3.2-1B-Instruct"

needs_no_gpu = pytest.mark.skipif(not no_gpu_driver(), reason="this machine has a GPU driver: the studio asks "
                                  "torch for its GPUs there, so torch is imported by design")


def _run(code: str, home) -> list:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "STUDIO_HOME": str(home)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_count_is_read_back_from_the_workspace_cache_without_torch(tmp_path):
    folder = tmp_path / "counts"
    config = catalog_entry(LLAMA_1B).config
    counted = count_params(config, cache=folder)
    files = list(folder.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["count"]["total"] == counted.total == 1_235_814_400
    code = ("import json, sys; from studio.models.catalog import catalog_entry; from studio.models.params import "
            f"count_params; c = count_params(catalog_entry({LLAMA_1B!r}).config, cache=__import__('pathlib')."
            f"Path({str(folder)!r})); print(json.dumps([c.total, 'torch' in sys.modules]))")
    assert _run(code, tmp_path / "h") == [1_235_814_400, False]
    files[0].write_text("{not json")  # a damaged file is counted again and rewritten
    params._COUNTED.clear()  # as a fresh process would start
    assert count_params(config, cache=folder).total == 1_235_814_400
    assert json.loads(files[0].read_text())["count"]["total"] == 1_235_814_400


@needs_no_gpu
def test_studio_train_checks_the_fit_and_queues_without_importing_torch(ws):
    import datasets
    from conftest import FAQ_PAIRS

    from studio.data import store
    from studio.models.resolve import model_shape

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FAQ_PAIRS]
    version, _ = store.save_version(  # as an import leaves it: its token counts in the report, with this model
        ws, content_hash="fast-start", name="faq", train=datasets.Dataset.from_list(rows),
        val=datasets.Dataset.from_list(rows[:2]),
        template="model", base_model="demo-tiny", report={"tokens": {"mean": 30.0, "max": 41}},
    )
    count_params(model_shape(ws, "demo-tiny").hf_config(), cache=cache_dir(ws))  # the workspace has counted it once
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from studio.cli import main
        args = ["train", "--data", {version.id!r}, "--model", "demo-tiny", "--preset", "quick-test", "--json"]
        with contextlib.redirect_stdout(io.StringIO()) as dry:
            main(args + ["--dry-run"])
        with contextlib.redirect_stdout(io.StringIO()) as queued:
            main(args)
        heavy = [m for m in ("torch", "transformers", "accelerate", "datasets", "pandas") if m in sys.modules]
        import pandas  # hidden from sqlite_utils only: importable afterwards
        fits = json.loads(dry.getvalue())["fit_check"]["fits"]
        print(json.dumps([fits, json.loads(queued.getvalue())["run"], heavy]))
    """)
    fits, run_id, heavy = _run(code, ws.home)
    assert fits is True and heavy == []
    from studio.training.runs import get_run

    run = get_run(ws, run_id)
    assert run.status == "queued" and run.folder.read_manifest()["fit_check"]["params"] > 0


@needs_no_gpu
def test_the_training_process_hides_bitsandbytes_without_a_gpu():
    # what transformers and peft ask (find_spec) says "not installed", and an import fails as for a missing one
    code = ("import importlib.util, json; from studio.training.lean import skip_unused; hidden = skip_unused()\n"
            "try:\n    import bitsandbytes\n    imported = True\nexcept ImportError:\n    imported = False\n"
            "print(json.dumps([hidden, importlib.util.find_spec('bitsandbytes') is None, imported]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [["bitsandbytes"], True, False]
