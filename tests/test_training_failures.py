"""Failures become reasons: each kind of error inside the training process gives a sentence and a fix.
(The end-to-end cases — a model that cannot be reached, data that tokenises to nothing, a killed process —
are in test_training_lifecycle.py; these are the ones a CPU box cannot cause for real.)"""

import errno

import httpx
import pytest
import torch
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

from studio.core.errors import InvalidInput
from studio.training.failures import EmptyDataset, ModelLoadError, classify
from studio.training.presets import build_config

CFG = build_config("meta-llama/Llama-3.1-8B-Instruct", "ds-x", "balanced")
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _loading(inner: BaseException) -> ModelLoadError:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise OSError(f"We couldn't load {MODEL}: {exc}") from exc
    except OSError as outer:
        try:
            raise ModelLoadError(f"model {MODEL}") from outer
        except ModelLoadError as wrapped:
            return wrapped


def _response(code: int) -> httpx.Response:
    return httpx.Response(code, request=httpx.Request("GET", f"https://huggingface.co/{MODEL}"))


def test_gpu_out_of_memory(tmp_path):
    failure = classify(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), CFG, tmp_path)
    assert failure.kind == "oom" and "ran out of memory on the GPU" in failure.reason
    assert f"micro_batch_size (now {CFG.micro_batch_size})" in failure.fix and "max_length (now 2048)" in failure.fix
    assert "low-memory preset" in failure.fix


def test_cpu_out_of_memory_suggests_checkpointing_when_off(tmp_path):
    cfg = CFG.model_copy(update={"gradient_checkpointing": False})
    failure = classify(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"),
                       cfg, tmp_path)
    assert failure.kind == "oom" and "this computer" in failure.reason and "gradient_checkpointing" in failure.fix


def test_gated_model_without_a_token(tmp_path):
    gated = GatedRepoError(f"Access to model {MODEL} is restricted.", response=_response(401))
    failure = classify(_loading(gated), CFG, tmp_path, MODEL)
    assert failure.kind == "gated" and "gated model" in failure.reason
    assert "HF_TOKEN" in failure.fix and "license" in failure.fix


def test_model_that_does_not_exist(tmp_path):
    missing = RepositoryNotFoundError("404 Client Error. Repository Not Found for url", response=_response(404))
    failure = classify(_loading(missing), CFG, tmp_path, "meta-llama/Llama-9")
    assert failure.kind == "model_unavailable" and "no model called 'meta-llama/Llama-9'" in failure.reason


def test_hub_out_of_reach(tmp_path):
    offline = LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic "
                                      "has been disabled.")
    failure = classify(_loading(offline), CFG, tmp_path, MODEL)
    assert failure.kind == "model_unavailable" and "cannot be reached" in failure.reason
    assert "demo-tiny" in failure.fix


def test_disk_full(tmp_path):
    failure = classify(OSError(errno.ENOSPC, "No space left on device"), CFG, tmp_path)
    assert failure.kind == "disk_full" and "GB free" in failure.reason
    assert "studio runs rm" in failure.fix and "resume" in failure.fix
    wrapped = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert classify(wrapped, CFG, tmp_path).kind == "disk_full"


def test_dataset_that_tokenises_to_nothing(tmp_path):
    failure = classify(EmptyDataset("all 2 examples were dropped"), CFG, tmp_path)
    assert failure.kind == "empty_data" and "max_length (now 2048)" in failure.fix


def test_a_studio_error_keeps_its_own_words(tmp_path):
    failure = classify(InvalidInput("This base model has no chat template of its own.", "Choose chatml."), CFG,
                       tmp_path)
    assert (failure.kind, failure.reason, failure.fix) == ("bad_data", "This base model has no chat template of "
                                                           "its own.", "Choose chatml.")


@pytest.mark.parametrize("exc", [ValueError("shapes do not match"), KeyError("input_ids")])
def test_anything_else_is_named_and_points_at_the_log(exc, tmp_path):
    failure = classify(exc, None, tmp_path)
    assert failure.kind == "unexpected" and type(exc).__name__ in failure.reason and "train.log" in failure.fix
