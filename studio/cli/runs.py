"""`studio runs`: list, show (and follow), cancel, resume, re-run and delete training runs, and `worker`
to run the queue on a machine without the web studio. The same core calls as the Runs tab (studio.training.runs).
"""

from __future__ import annotations

import time

from studio.cli import Output
from studio.core.argtypes import seconds, whole


def register(verbs, common) -> None:
    p = verbs.add_parser("runs", parents=[common], help="follow, cancel, resume and delete training runs")
    sub = p.add_subparsers(dest="runs_command", required=True, metavar="ACTION")

    ls = sub.add_parser("list", parents=[common], help="list runs, newest first, with status and progress")
    ls.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"], default=None)
    ls.set_defaults(handler=run_list)

    show = sub.add_parser("show", parents=[common], help="show a run: status, progress, metrics, config, log")
    show.add_argument("id", help="the run id (run-...)")
    show.add_argument("--follow", "-f", action="store_true",
                      help="keep printing progress until the run ends (Ctrl+C stops following, not the run)")
    show.add_argument("--log", type=whole(0), default=10, metavar="N", help="how many log lines to show (default 10)")
    show.set_defaults(handler=run_show)

    cancel = sub.add_parser("cancel", parents=[common],
                            help="stop a run at its next step (it saves a checkpoint and the adapter)")
    cancel.add_argument("id")
    cancel.add_argument("--wait", type=seconds(0), default=60.0, metavar="S",
                        help="seconds to wait for it to stop (default 60; 0 = do not wait)")
    cancel.set_defaults(handler=run_cancel)

    resume = sub.add_parser("resume", parents=[common],
                            help="queue a cancelled or failed run again; it continues from its last checkpoint")
    resume.add_argument("id")
    resume.add_argument("--wait", action="store_true", help="run the queue here until this run ends")
    resume.set_defaults(handler=run_resume)

    rerun = sub.add_parser("rerun", parents=[common], help="start a new run with exactly the same settings")
    rerun.add_argument("id")
    rerun.add_argument("--wait", action="store_true", help="run the queue here until the new run ends")
    rerun.set_defaults(handler=run_rerun)

    rm = sub.add_parser("rm", parents=[common], help="delete a finished run and its files")
    rm.add_argument("id")
    rm.set_defaults(handler=run_rm)

    worker = sub.add_parser("worker", parents=[common],
                            help="run the training queue in the foreground (for a machine without the web studio)")
    worker.add_argument("--once", action="store_true", help="one pass: start what can start, then exit")
    worker.add_argument("--poll", type=seconds(0.1), default=2.0, metavar="S",
                        help="seconds between passes (default 2)")
    worker.set_defaults(handler=run_worker)

    compare = sub.add_parser("compare", parents=[common],
                             help="two or more runs side by side: curves, settings that differ, scores, data, outcomes")
    compare.add_argument("ids", nargs="+", metavar="RUN", help="the run ids (two or more)")
    compare.set_defaults(handler=run_compare)

    lineage = sub.add_parser("lineage", parents=[common],
                             help="a run's lineage: dataset version → runs it continues → run → exports → deployments")
    lineage.add_argument("id")
    lineage.set_defaults(handler=run_lineage)


def _row(run) -> dict:
    return {
        "id": run.id, "name": run.name, "status": run.status, "base_model": run.base_model,
        "dataset_id": run.dataset_id, "preset": run.preset, "step": run.step, "max_steps": run.max_steps,
        "progress": round(run.progress, 3), "loss": run.loss, "eval_loss": run.eval_loss,
        "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
        "error": run.error, "fix": run.fix, "notice": run.notice, "path": run.path,
    }


def run_list(args, ws) -> Output:
    from studio.training import runs, scheduler

    scheduler.reconcile(ws)
    found = runs.list_runs(ws, args.status)
    if not found:
        return Output([], "No runs yet. Start one with `studio train --data ID --model M` (or the Train tab).")
    lines = [f"{'ID':<26} {'STATUS':<10} {'PROGRESS':>9} {'LOSS':>8} {'EVAL':>8}  MODEL / DATA / PRESET"]
    for run in found:
        steps = f"{run.step or 0}/{run.max_steps or '?'}"
        loss = f"{run.loss:.4f}" if run.loss is not None else "-"
        evl = f"{run.eval_loss:.4f}" if run.eval_loss is not None else "-"
        lines.append(f"{run.id:<26} {run.status:<10} {steps:>9} {loss:>8} {evl:>8}  "
                     f"{run.base_model} / {run.dataset_id} / {run.preset or '-'}")
    return Output([_row(r) for r in found], "\n".join(lines))


def describe(ws, run_id: str, log_lines: int = 10) -> tuple[dict, str]:
    from studio.core import timetext
    from studio.training import runs, scheduler, summary
    from studio.training.lineage import lineage_text

    scheduler.reconcile(ws)
    run = runs.get_run(ws, run_id)
    progress = summary.summarize(run.folder)
    data = _row(run) | {"config": run.config, "manifest": run.folder.read_manifest(),
                        "last_step": progress["last"], "notices": progress["notices"],
                        "checkpoints": [c["path"] for c in progress["checkpoints"]],
                        "log_tail": run.folder.tail_log(log_lines)}
    data["tracking"] = data["manifest"].get("tracking") or {}
    data["learning"] = summary.learning_verdict(progress)
    status = run.status
    if run.cancel_requested_at and run.status == "running":
        status += " (cancel requested: it stops after the current step)"
    lines = [f"{run.id}  {run.name}", f"status    {status}",
             f"when      {timetext.lifecycle(run.created_at, run.started_at, run.finished_at, run.status)}"]
    lines.append(f"model     {run.base_model}    data {run.dataset_id}    preset {run.preset or '-'}")
    lines.append(f"method    {run.config.get('objective', 'sft').upper()} · {lineage_text(data['manifest'], ws)}")
    if progress["last"]:
        lines.append("progress  " + summary.step_line(progress["last"]))
    if progress["evals"]:
        lines.append("eval      " + summary.step_line(progress["evals"][-1]))
    if data["learning"]:
        lines.append("learning  " + data["learning"])
    for note in ([run.notice] if run.notice else []) + progress["notices"]:
        lines.append(f"notice    {note}")
    if run.error:
        lines.append(f"reason    {run.error}")
    if run.fix:
        lines.append(f"fix       {run.fix}")
    if run.folder.has_adapter():
        lines.append(f"adapter   {run.folder.adapter}")
    lines += _tracking_lines(data["tracking"], run.folder.path)
    lines.append(f"folder    {run.path}")
    settings = ", ".join(f"{k}={v}" for k, v in run.config.items() if k not in ("base_model", "dataset_id"))
    lines.append(f"config    {settings}")
    if log_lines:
        lines.append("log (last lines):")
        lines += ["  " + ln for ln in data["log_tail"] if "it/s]" not in ln and "examples/s]" not in ln]
    return data, "\n".join(lines)


def _tracking_lines(tracking: dict, folder) -> list[str]:
    """Where the run is in MLflow (training/reporting.py) and the TensorBoard command for its event files."""
    from studio.training.tracking import run_link

    lines = []
    entry = tracking.get("mlflow")
    if entry:
        where = f"run {entry['run_id']} at {entry['uri']}" if entry.get("run_id") else f"to {entry['uri']} (no run yet)"
        link = run_link(entry)
        lines.append(f"mlflow    {where}" + (f"  {link}" if link else ""))
    if (folder / "tensorboard").is_dir():
        lines.append(f"tensorboard --logdir {folder / 'tensorboard'}")
    return lines


def follow(ws, run_id: str, *, schedule: bool = False, poll: float = 1.0, out=print) -> str:
    """Print each new event of the run until it ends; with schedule=True also run the queue here."""
    from studio.training import runs, scheduler, summary

    printed = 0
    said_waiting = False
    while True:
        if schedule:
            scheduler.schedule(ws)
        else:
            scheduler.reconcile(ws)
        run = runs.get_run(ws, run_id)
        events = run.folder.read_events()
        for event in events[printed:]:
            if event["type"] in ("step", "eval"):
                out(summary.step_line(event))
            elif event["type"] == "notice":
                out(f"notice: {event['message']}")
            elif event["type"] == "start":
                resumed = f", resuming from {event['resumed_from']}" if event.get("resumed_from") else ""
                out(f"started at step {event['step']} of {event['max_steps']}{resumed}")
            elif event["type"] == "checkpoint":
                out(f"checkpoint saved: {event['path']}")
        printed = len(events)
        if run.status == "queued" and not said_waiting:
            ids = [r.id for r in runs.queue(ws)]
            ahead = (ids.index(run_id) if run_id in ids else 0) + len(runs.list_runs(ws, "running"))
            out(f"queued behind {ahead} run(s)" + ("" if schedule else
                "; the studio or `studio runs worker` starts it"))
            said_waiting = True
        if run.status not in runs.ACTIVE:
            return run.status
        time.sleep(poll)


def _ended(ws, run_id: str) -> Output:
    from studio.core.errors import StudioError
    from studio.training import runs

    run = runs.get_run(ws, run_id)
    if run.status == "failed":
        raise StudioError(f"Run {run.id} failed: {run.error}", run.fix)
    text = f"Run {run.id} {run.status} at step {run.step}/{run.max_steps}."
    if run.folder.has_adapter():
        text += f" Adapter: {run.folder.adapter}"
    return Output(_row(run), text)


def run_show(args, ws) -> Output | None:
    if not args.follow:
        data, text = describe(ws, args.id, args.log)
        return Output(data, text)
    _, text = describe(ws, args.id, 0)
    print(text, flush=True)
    try:
        follow(ws, args.id, out=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        from studio.training import runs

        return Output(_row(runs.get_run(ws, args.id)), "stopped following (the run goes on)")
    return _ended(ws, args.id)


def run_cancel(args, ws) -> Output:
    from studio.training import scheduler

    run = scheduler.cancel(ws, args.id, wait=args.wait)
    if run.status == "running":
        text = f"Cancel requested for {run.id}: it stops after its current step and saves a checkpoint."
    else:
        text = f"Run {run.id} is {run.status} at step {run.step or 0}."
        if run.folder.last_checkpoint():
            text += f" Resume it with `studio runs resume {run.id}`."
    return Output(_row(run), text)


def run_resume(args, ws) -> Output | None:
    from studio.training import runs

    run = runs.resume(ws, args.id)
    last = run.folder.last_checkpoint()
    where = f"from {last.name}" if last else "from the beginning (no checkpoint was saved)"
    if not args.wait:
        return Output(_row(run), f"Run {run.id} queued again; it continues {where}.")
    print(f"Run {run.id} queued again; it continues {where}.", flush=True)
    follow(ws, run.id, schedule=True, out=lambda line: print(line, flush=True))
    return _ended(ws, run.id)


def run_rerun(args, ws) -> Output | None:
    from studio.training import submit

    run = submit.rerun(ws, args.id)
    if not args.wait:
        return Output(_row(run), f"New run {run.id} queued with the settings of {args.id}.")
    print(f"New run {run.id} queued with the settings of {args.id}.", flush=True)
    follow(ws, run.id, schedule=True, out=lambda line: print(line, flush=True))
    return _ended(ws, run.id)


def run_rm(args, ws) -> Output:
    from studio.training import runs
    from studio.training.lineage import children_of

    children = children_of(ws, args.id)
    runs.delete(ws, args.id)
    text = f"Deleted run {args.id} and its files."
    if children:  # allowed: each continued run keeps its own copy of the adapter it started from
        text += (f" {', '.join(children)} continued from it and keep{'s' if len(children) == 1 else ''} the adapter "
                 "it started from; the lineage shows the run as deleted.")
    return Output({"deleted": args.id, "continued_by": children}, text)


def run_worker(args, ws) -> Output | None:
    from studio.training import runs, scheduler

    if args.once:
        started = scheduler.schedule(ws)
        return Output({"started": started}, f"Started: {', '.join(started)}" if started else "Nothing to start.")
    print(f"Running the training queue of {ws.home} (Ctrl+C to stop; running jobs go on).", flush=True)
    seen: set[str] = set()

    def report() -> None:
        for run in runs.list_runs(ws, "running"):
            if run.id not in seen and run.pid:
                seen.add(run.id)
                print(f"started {run.id} (pid {run.pid})", flush=True)

    try:
        scheduler.worker(ws, poll=args.poll, on_tick=report)
    except KeyboardInterrupt:
        pass
    return Output({"stopped": True, "started": sorted(seen)}, "worker stopped")


def run_compare(args, ws) -> Output:
    from studio.publishing.compare import compare, comparison_text

    found = compare(ws, args.ids)
    return Output(found, comparison_text(found))


def run_lineage(args, ws) -> Output:
    from studio.publishing.lineage import lineage, lineage_markdown

    found = lineage(ws, args.id)
    return Output(found, lineage_markdown(found, plain=True))
