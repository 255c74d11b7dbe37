"""One training run, top to bottom: config → tokenizer → data → model → LoRA → trainer → adapter.

Runs inside `python -m studio.training RUN_DIR`. Reads config.yaml and manifest.json, writes only its
run folder. SIGTERM (cancel) stops at the next step with a checkpoint and the adapter saved; a folder
that already holds a checkpoint resumes from it, so resume is simply starting the process again.
Started as one rank of several (launchers/accelerate.py), every rank trains and only rank 0 writes.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import signal
import threading
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from studio.core.files import write_json_atomic
from studio.training import distributed, reporting
from studio.training.config import TrainConfig, load_yaml
from studio.training.failures import EmptyDataset, ModelLoadError, classify
from studio.training.folder import Clock, RunFolder, previous_elapsed

log = logging.getLogger("studio.training")
LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "tokenizers")


def main(run_dir: str) -> int:
    folder = RunFolder(Path(run_dir).resolve())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    _quiet_log()
    stop = threading.Event()

    def request_stop(signum, _frame):
        log.info("received %s: stopping after the current step, saving a checkpoint and the adapter",
                 signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    clock = Clock(previous_elapsed(folder))
    main_rank = distributed.is_main()
    distributed.register(folder.path)
    if main_rank:
        folder.write_status("running")
    cfg: TrainConfig | None = None
    tracker = None
    try:
        cfg = load_yaml(folder.config.read_text(encoding="utf-8"))
        if main_rank:  # rank 0 reports for the group, as it writes the run folder for it
            tracker = reporting.open_mlflow(folder, cfg.model_dump(mode="json"))  # None unless MLflow is configured
        outcome = train(folder, cfg, stop, clock, tracker)
    except BaseException as exc:  # every way out of a run becomes a reason in status.json
        log.error("training failed (rank %s of %s):\n%s", distributed.rank(), distributed.world_size(),
                  traceback.format_exc())
        if not main_rank:  # rank 0 says why the run failed; the launcher names a rank that died
            return _leave_group(1)
        failure = classify(exc, cfg, folder.path, cfg.base_model if cfg else "")
        step = _last_step(folder)
        folder.emit("end", status="failed", step=step, elapsed=clock.elapsed(), **failure.to_dict())
        folder.write_status("failed", step=step, **failure.to_dict())
        log.error("%s %s", failure.reason, failure.fix)
        if tracker is not None:
            tracker.finish("failed")
        return _leave_group(1)
    if tracker is not None:
        tracker.finish(outcome["status"])  # the adapter as an artifact, before the studio sees the run end
    if main_rank:
        folder.write_status(outcome["status"], step=outcome["step"])
    log.info("run %s at step %s", outcome["status"], outcome["step"])
    return 0


def _leave_group(code: int) -> int:
    """A failed rank of a group leaves at once: its collectives are broken, and tearing the interpreter down
    around them can take seconds while the agent waits to stop the other ranks."""
    if distributed.world_size() > 1:
        logging.shutdown()
        os._exit(code)
    return code


def train(folder: RunFolder, cfg: TrainConfig, stop: threading.Event, clock: Clock,
          tracker: reporting.MlflowRun | None = None) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, set_seed

    from studio.core.errors import InvalidInput
    from studio.data.kinds import kind_of, mismatch, mismatch_fix
    from studio.training import recipe
    from studio.training.progress import Progress

    manifest = folder.read_manifest()
    source = manifest["base_model"]["source"]
    set_seed(cfg.seed)
    notice = recipe.method_notice(cfg)
    if notice:
        log.warning(notice)
        if distributed.is_main():
            folder.emit("notice", message=notice)

    # tokenizer, with the chat template the dataset version was previewed with
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise ModelLoadError(f"tokenizer of {source}") from exc
    tokenizer = apply_template(tokenizer, manifest["dataset"].get("template", "model"))

    # data: the version's files, read directly (the training process never opens the registry)
    data_dir = Path(manifest["dataset"]["path"])
    train_rows, val_rows = (read_split(data_dir / f"{split}.parquet", folder.path / "data-cache")
                            for split in ("train", "val"))
    if len(train_rows) == 0:
        raise EmptyDataset("the dataset version has no training rows.")
    kind = kind_of(train_rows.column_names)
    problem = mismatch(cfg.objective, kind)
    if problem:
        raise InvalidInput(problem, mismatch_fix(cfg.objective))
    train_set, val_set = recipe.to_trainer_rows(cfg, kind, train_rows), None
    if len(val_rows):
        val_set = recipe.to_trainer_rows(cfg, kind, val_rows)

    # model
    log.info("loading %s (%s)", cfg.base_model, source)
    try:
        model = recipe.load_base_model(cfg, source)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"model {source}") from exc
    peft_config = recipe.lora_config(cfg, recipe.default_target_modules(model))
    start = manifest.get("parent")
    if start:  # continue an earlier run: its adapter, trainable, instead of a fresh one
        model = recipe.load_start_adapter(model, str(folder.path / start["adapter"]))
        peft_config = None
        log.info("continuing the adapter of run %s", start["run_id"])
    if stop.is_set():
        return _finish(folder, None, tokenizer, "cancelled", clock)

    overrides: dict[str, Any] = {}
    if val_set is None:
        overrides["eval_strategy"] = "no"
    log.info("preparing %d training and %d held-out rows: chat template, tokens%s", len(train_set),
             len(val_set) if val_set is not None else 0,
             ", packing" if cfg.objective == "sft" and cfg.packing else "")
    progress = Progress(folder, stop, clock)
    if tracker is not None:
        progress.listeners.append(tracker.event)
    if cfg.objective != "sft":
        overrides.update(recipe.kto_weights(train_set) if cfg.objective == "kto" else {})
        args = recipe.preference_config(cfg, str(folder.checkpoints), **overrides)
        trainer = recipe.trainer_classes(cfg.objective)[1](
            model=model, args=args, train_dataset=train_set, eval_dataset=val_set, processing_class=tokenizer,
            peft_config=peft_config, callbacks=[progress],
        )
        return _train(folder, manifest, cfg, model, trainer, tokenizer, progress, notice, stop, clock)
    args = recipe.sft_config(cfg, str(folder.checkpoints), **overrides)
    trainer = recipe.trainer_classes("sft")[1](
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress],
    )
    kept, cut = _examples_kept(trainer.train_dataset, cfg.max_length)
    if kept == 0:
        raise EmptyDataset(
            f"all {len(train_set)} examples were dropped: their answers fall beyond max_length "
            f"({cfg.max_length} tokens) or are empty."
        )
    if kept < len(train_set) or cut:
        message = (
            f"{len(train_set) - kept} of {len(train_set)} examples had no answer left within max_length "
            f"({cfg.max_length} tokens) and were skipped; {cut} more were cut short (their end is not learnt). "
            "Raise max_length to keep them whole."
        )
        log.warning(message)
        if distributed.is_main():
            folder.emit("notice", message=message)
    return _train(folder, manifest, cfg, model, trainer, tokenizer, progress, notice, stop, clock)


def _quiet_log() -> None:
    """No tqdm bars in train.log (in a file each is one line of carriage returns: Progress logs the steps, this
    module the loading and tokenizing), nor the libraries' deprecation notes to each other (nothing a user
    can act on)."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)


def _train(folder: RunFolder, manifest: dict, cfg: TrainConfig, model: Any, trainer: Any, tokenizer: Any,
           progress: Any, notice: str | None, stop: threading.Event, clock: Clock) -> dict[str, Any]:
    if distributed.is_main():
        _write_manifest(folder, manifest, cfg, model, trainer, notice)
    resume = folder.last_checkpoint()
    if resume is not None:
        log.info("resuming from %s", resume)
    progress.resumed_from = resume.name if resume else None
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its dicts; Progress logs each step as one readable line
    board = reporting.tensorboard_callback(folder, int(resume.name.rsplit("-", 1)[1]) if resume else 0)
    if board is not None:
        trainer.add_callback(board)  # the Trainer's own TensorBoard reporting, into RUN_DIR/tensorboard
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    status = "cancelled" if stop.is_set() else "succeeded"
    return _finish(folder, trainer, tokenizer, status, clock)


MMAP_SPLIT_MB = 64  # a split bigger than this on disk trains from memory-mapped Arrow files (STUDIO_TRAIN_MMAP_MB)


def read_split(path: Path, cache_dir: Path | None = None) -> Any:
    """A split's parquet file as a Dataset; an empty file (no validation rows) gives an empty Dataset.

    A small split is read into memory. A big one is converted once into Arrow files in `cache_dir` (the run
    folder's data-cache/) and memory-mapped, so the rows, and the tokenised rows that the trainers' map() writes
    beside them, are read from disk as training goes: a dataset larger than memory trains."""
    import datasets
    import pyarrow.parquet as pq

    limit = float(os.environ.get("STUDIO_TRAIN_MMAP_MB") or MMAP_SPLIT_MB) * (1 << 20)
    if cache_dir is None or path.stat().st_size <= limit or pq.ParquetFile(path).metadata.num_rows == 0:
        return datasets.Dataset(pq.read_table(path))
    return datasets.Dataset.from_parquet(str(path), cache_dir=str(cache_dir), keep_in_memory=False)


def _examples_kept(dataset: Any, length: int) -> tuple[int, int]:
    """How many examples the trainer kept, and how many of them were cut at `length` tokens. Packed, a row
    holds several examples, their lengths in TRL's `seq_lengths` (one cut short fills `length` exactly)."""
    import pyarrow.compute as pc

    if "seq_lengths" not in dataset.column_names:
        return len(dataset), _rows_at_least(dataset, length)
    lengths = pc.list_flatten(dataset.with_format("arrow")[:]["seq_lengths"])
    return len(lengths), int(pc.sum(pc.greater_equal(lengths, length)).as_py() or 0)


def _rows_at_least(dataset: Any, length: int) -> int:
    """How many tokenised rows are `length` tokens or longer, counted in Arrow (no Python list of every row)."""
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")[:]["input_ids"]
    return int(pc.sum(pc.greater_equal(pc.list_value_length(column), length)).as_py() or 0)


def apply_template(tokenizer: Any, template: str | None) -> Any:
    """The dataset version's chat template (the model's own, or a named fallback), as the Data tab previewed."""
    from studio.data.templates import apply_template as set_template

    return set_template(tokenizer, template or "model")


def _finish(folder: RunFolder, trainer: Any, tokenizer: Any, status: str, clock: Clock) -> dict[str, Any]:
    """Save the adapter (also on cancel: what was learnt so far is usable) and write the end event."""
    step = trainer.state.global_step if trainer is not None else _last_step(folder)
    adapter = None
    if trainer is not None and step > 0:
        adapter = save_adapter(folder, trainer, tokenizer)
    if not distributed.is_main():
        return {"status": status, "step": step}
    losses = [e for e in folder.read_events() if e["type"] in ("step", "eval")]
    last_loss = next((e["loss"] for e in reversed(losses) if e.get("loss") is not None), None)
    last_eval = next((e["eval_loss"] for e in reversed(losses) if e.get("eval_loss") is not None), None)
    folder.emit(
        "end", status=status, step=step, elapsed=clock.elapsed(), adapter=adapter,
        loss=last_loss, eval_loss=last_eval,
    )
    return {"status": status, "step": step}


def save_adapter(folder: RunFolder, trainer: Any, tokenizer: Any) -> str:
    """adapter/ = peft weights + config, tokenizer with its chat template, generation_config with EOS ids.

    Written next to the old one and swapped in, so a reader never sees half an adapter.
    """
    from transformers import GenerationConfig

    tmp = folder.path / ".adapter-new"
    if distributed.strategy() == "fsdp":  # the adapter is sharded: every rank takes part in gathering it
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        trainer.save_model(str(tmp))  # rank 0 writes the gathered weights
        if not distributed.is_main():
            return str(folder.adapter)
    elif not distributed.is_main():
        return str(folder.adapter)  # DDP: rank 0 holds the same weights and writes them
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        # only the trained adapter: DPO/KTO continued from a run also hold a frozen "ref" copy of the start
        trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])
    tokenizer.save_pretrained(str(tmp))
    base_generation = getattr(trainer.model, "generation_config", None)
    eos = _as_list(getattr(base_generation, "eos_token_id", None)) if base_generation is not None else []
    for token_id in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")):
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in eos:
            eos.append(token_id)
    GenerationConfig(
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        do_sample=False,
        max_new_tokens=256,
    ).save_pretrained(str(tmp))
    old = folder.path / ".adapter-old"
    shutil.rmtree(old, ignore_errors=True)
    if folder.adapter.exists():
        os.rename(folder.adapter, old)
    os.rename(tmp, folder.adapter)
    shutil.rmtree(old, ignore_errors=True)
    return str(folder.adapter)


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def _write_manifest(folder: RunFolder, manifest: dict, cfg: TrainConfig, model: Any, trainer: Any,
                    notice: str | None) -> None:
    import torch

    from studio.training import recipe

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    hardware: dict[str, Any] = {"cpu_cores": os.cpu_count(), "platform": platform.platform(),
                                "python": platform.python_version()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        hardware.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 1024**3, 1),
                        cuda=torch.version.cuda, visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    manifest["distributed"] = {**manifest.get("distributed", {}), "processes": distributed.world_size(),
                               "strategy": distributed.strategy()}  # what really ran
    manifest.update(
        seed=cfg.seed,
        libraries=versions,
        hardware=hardware,
        objective=cfg.objective,
        method={
            "asked": cfg.method,
            "used": "qlora-4bit-nf4" if recipe.uses_4bit(cfg) else f"lora-{str(recipe.compute_dtype())[6:]}",
            "notice": notice,
        },
        trainable_parameters=trainable,
        train_examples=len(trainer.train_dataset),
        eval_examples=len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
    )
    manifest["base_model"]["revision"] = getattr(model.config, "_commit_hash", None)
    write_json_atomic(folder.manifest, manifest)


def _last_step(folder: RunFolder) -> int:
    steps = [e.get("step") or 0 for e in folder.read_events() if e["type"] in ("step", "checkpoint", "end")]
    return max(steps, default=0)
