"""Experiment tracking from inside the training process: an MLflow run per studio run, and TensorBoard event
files in the run folder (RUN_DIR/tensorboard, so `tensorboard --logdir WORKSPACE/runs` shows every run).

MLflow is used only when the studio froze a tracking URI into the run's manifest (`tracking.mlflow`, set by
submit from MLFLOW_TRACKING_URI or the System tab). The run's parameters are the frozen config, its metrics the
studio's own step and eval events (the numbers the Runs tab charts, tokens/s and memory included), its input
the dataset version (name + content hash), its artifacts the adapter (with its model card). Why not the
Trainer's MLflowCallback: it raises when the server is down (a run must never fail for its tracking), logs the
TrainingArguments rather than the studio's config, knows no tokens/s or memory, and ends the MLflow run before
the adapter is saved. TensorBoard goes through the Trainer's own TensorBoardCallback.

Every call here is guarded: a tracking server that cannot be reached is one notice in events.jsonl and
train.log, and the run goes on. Only rank 0 of a run of several processes reports. Never touches SQLite.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from studio.core.files import read_json, write_json_atomic
from studio.training import distributed
from studio.training.folder import RunFolder

log = logging.getLogger("studio.training.reporting")
EXPERIMENT = "llmops-studio"  # the MLflow experiment runs go to unless MLFLOW_EXPERIMENT_NAME says another
INSTALL = "pip install 'llmops-studio[mlflow]'"
PANDAS_ROWS = 20_000  # up to this many rows the dataset input carries its schema and profile from pandas
# the studio's step/eval event fields logged as MLflow metrics (same names as in events.jsonl)
STEP_METRICS = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "tokens_seen", "epoch",
                "reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected", "logp_chosen", "logp_rejected")
FLUSH_S = 2.0  # one request per 2 s, not per step: a request took ~90 ms on a busy 2-core box (load 20)
ENDINGS = {"succeeded": "FINISHED", "cancelled": "KILLED", "failed": "FAILED"}


def import_mlflow() -> Any:
    """mlflow, with HTTP retries and timeouts short enough that a server that is down costs seconds, not the
    minutes of MLflow's defaults (7 retries with backoff, 120 s timeout). A person's own settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    import mlflow

    return mlflow


def experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested dict as MLflow parameters: dotted keys, values as text (lists as JSON-ish text)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = str(value)[:6000]  # MLflow 3's limit on a parameter's value
    return out


def tensorboard_callback(folder: RunFolder, resume_step: int = 0) -> Any:
    """The Trainer's TensorBoardCallback writing into RUN_DIR/tensorboard; None when `tensorboard` is not
    installed (the run trains without event files). A resumed run drops the events its checkpoint did not keep."""
    if not distributed.is_main():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
    except ImportError as exc:
        log.warning("no TensorBoard event files for this run: %s (pip install tensorboard)", exc)
        return None
    writer = SummaryWriter(log_dir=str(folder.path / "tensorboard"), purge_step=resume_step or None)
    return TensorBoardCallback(tb_writer=writer)


class MlflowRun:
    """The MLflow run of one studio run; every method swallows a tracking failure into one notice."""

    def __init__(self, folder: RunFolder, entry: dict[str, Any]):
        self.folder = folder
        self.uri = entry["uri"]
        self.experiment = entry.get("experiment") or EXPERIMENT
        self.run_id: str | None = entry.get("run_id")  # set by an earlier attempt: a resume continues it
        self.experiment_id: str | None = entry.get("experiment_id")
        self.client: Any = None
        self.broken = False
        self._pending: list[Any] = []  # metrics not sent yet: one request per FLUSH_S, not one per step
        self._flushed = time.monotonic()

    def _warn(self, what: str, exc: BaseException | str) -> None:
        if self.broken:
            return
        self.broken = True
        reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        message = (f"MLflow tracking at {self.uri} stopped while {what} ({reason}); the run goes on without it. "
                   "Check the server (System tab → Check, or `studio tracking check`).")
        log.warning(message)
        self.folder.emit("notice", message=message)

    def start(self, config: dict[str, Any], manifest: dict[str, Any]) -> None:
        try:
            mlflow = import_mlflow()
        except ImportError:
            self._warn("starting", f"mlflow is not installed in the training environment: {INSTALL}")
            return
        try:
            from mlflow.entities import Param

            self.client = mlflow.MlflowClient(tracking_uri=self.uri)
            if self.run_id:  # a resumed attempt goes on logging into the same MLflow run
                self.client.update_run(self.run_id, status="RUNNING")
                return
            dataset = manifest.get("dataset") or {}
            tags = {"studio.run_id": manifest.get("run_id"), "studio.base_model": manifest["base_model"]["name"],
                    "studio.dataset_id": dataset.get("id"), "studio.preset": manifest.get("preset") or "",
                    "studio.objective": config.get("objective", "sft"), "mlflow.source.type": "JOB",
                    "mlflow.source.name": "llmops-studio"}
            self.experiment_id = experiment_id(self.client, self.experiment)
            run = self.client.create_run(self.experiment_id, run_name=manifest.get("run_id"),
                                         tags={k: str(v) for k, v in tags.items() if v is not None})
            self.run_id = run.info.run_id
            self._record(manifest)
            params = flat_params(config) | flat_params(
                {"preset": manifest.get("preset"), "base_model_source": manifest["base_model"].get("source"),
                 "dataset_hash": dataset.get("content_hash"), "rows_train": dataset.get("rows_train"),
                 "rows_val": dataset.get("rows_val")}, "studio.")
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters in one call
                self.client.log_batch(self.run_id, params=items[i:i + 100])
            self._log_dataset(mlflow, dataset)
            log.info("MLflow run %s at %s (experiment %s)", self.run_id, self.uri, self.experiment)
        except Exception as exc:  # noqa: BLE001 - the server's failure must not fail the run
            self._warn("starting the MLflow run", exc)

    def _record(self, manifest: dict[str, Any]) -> None:
        """The MLflow run id into manifest.json (the Runs tab and `studio runs show` read it there)."""
        current = read_json(self.folder.manifest) or manifest
        tracking = current.setdefault("tracking", {})
        tracking["mlflow"] = {**tracking.get("mlflow", {}), "uri": self.uri, "experiment": self.experiment,
                              "experiment_id": self.experiment_id, "run_id": self.run_id}
        write_json_atomic(self.folder.manifest, current)
        manifest.setdefault("tracking", {})["mlflow"] = tracking["mlflow"]

    def _log_dataset(self, mlflow: Any, dataset: dict[str, Any]) -> None:
        """The dataset version as the run's input: its train split's Parquet file, named, with its content hash."""
        import pyarrow.parquet as pq
        from mlflow.data.sources import LocalArtifactDatasetSource

        for split, context in (("train", "training"), ("val", "validation")):
            path = Path(dataset["path"]) / f"{split}.parquet"
            if not path.exists() or (split == "val" and not dataset.get("rows_val")):
                continue
            source = LocalArtifactDatasetSource(str(path))
            name = f"{dataset.get('name') or dataset.get('id')} ({split})"
            digest = (dataset.get("content_hash") or "")[:16] or None
            if pq.ParquetFile(path).metadata.num_rows <= PANDAS_ROWS:
                data = mlflow.data.from_pandas(pq.read_table(path).to_pandas(), source=source, name=name, digest=digest)
            else:  # a big version: its name, hash and where it is, without reading it all into memory
                from mlflow.data.meta_dataset import MetaDataset

                data = MetaDataset(source=source, name=name, digest=digest)
            self.client.log_inputs(self.run_id, datasets=[
                mlflow.entities.DatasetInput(data._to_mlflow_entity(),
                                             tags=[mlflow.entities.InputTag("mlflow.data.context", context)])])

    def event(self, event: dict[str, Any]) -> None:
        """A step or eval event of the run as metrics at its step."""
        if self.client is None or self.broken or event.get("type") not in ("step", "eval"):
            return
        from mlflow.entities import Metric

        step, stamp = int(event.get("step") or 0), int(event.get("time", time.time()) * 1000)
        values = {k: event.get(k) for k in STEP_METRICS}
        if event["type"] == "eval":
            values = {k: v for k, v in event.items() if k.startswith("eval_")}
        elif event.get("gpu_memory"):
            values["gpu_memory_gb"] = event["gpu_memory"] / 1024**3
        if event["type"] == "step":
            values["process_memory_gb"] = _process_memory_gb()
        self._pending += [Metric(k, float(v), stamp, step) for k, v in values.items() if isinstance(v, int | float)]
        if time.monotonic() - self._flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Send the metrics gathered since the last call, in batches of MLflow's limit of 1000."""
        pending, self._pending, self._flushed = self._pending, [], time.monotonic()
        try:
            for i in range(0, len(pending), 1000):
                self.client.log_batch(self.run_id, metrics=pending[i:i + 1000])
        except Exception as exc:  # noqa: BLE001
            self._warn(f"logging metrics up to step {pending[-1].step}", exc)

    def finish(self, status: str) -> None:
        """The adapter (and its model card) as artifacts, and the run's ending."""
        if self.client is None or self.run_id is None:
            return
        if self._pending and not self.broken:
            self.flush()
        try:
            if not self.broken and status != "failed" and self.folder.has_adapter():
                self.client.log_artifacts(self.run_id, str(self.folder.adapter), "adapter")
            self.client.set_terminated(self.run_id, status=ENDINGS.get(status, "FINISHED"))
        except Exception as exc:  # noqa: BLE001
            self._warn("saving the adapter and ending the run", exc)


def _process_memory_gb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 1024**3
    except Exception:  # noqa: BLE001
        return None


def open_mlflow(folder: RunFolder, config: dict[str, Any]) -> MlflowRun | None:
    """The run's MLflow run, started (or continued on resume); None when no tracking URI was frozen into its
    manifest, or this is not rank 0."""
    manifest = folder.read_manifest()
    entry = (manifest.get("tracking") or {}).get("mlflow") or {}
    if not entry.get("uri") or not distributed.is_main():
        return None
    run = MlflowRun(folder, entry)
    run.start(config, manifest)
    return run
