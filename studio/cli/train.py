"""`studio train`: start a fine-tune from the terminal, like the Train tab's Start button."""

from __future__ import annotations

from studio.cli import Output


def register(verbs, common) -> None:
    p = verbs.add_parser(
        "train", parents=[common], help="fine-tune a base model on a dataset version (queued as a run)",
        description="Freeze the settings (preset + --set overrides) into a new run, check that it fits this "
                    "machine, and queue it. With --wait the queue runs here until the run ends, printing its "
                    "progress; the exit status is non-zero if it failed.",
    )
    p.add_argument("--data", required=True, metavar="ID", help="the dataset version (ds-..., see `studio data list`)")
    p.add_argument("--model", default=None, metavar="M",
                   help="base model: a catalog name (`studio models list`), a hub id org/model, or a local folder "
                        "(with --from: the earlier run's model)")
    p.add_argument("--method", choices=["sft", "dpo", "orpo", "kto"], default=None,
                   help="what to learn from: sft (question/answer rows, the default), dpo or orpo (chosen/rejected "
                        "pairs), kto (answers marked good or bad); the same as --set objective=...")
    p.add_argument("--from", dest="from_run", default=None, metavar="RUN",
                   help="continue from an earlier run's adapter (e.g. SFT first, then DPO from it)")
    p.add_argument("--preset", default=None, metavar="P",
                   help="quick-test, balanced (default), quality, low-memory, long-context; dpo, orpo, kto "
                        "(the default with that --method)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="change one setting of the preset, e.g. --set lora_r=8 (repeat for more)")
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="train with N processes on this machine, one per GPU (DDP, or FSDP when the model does "
                        "not fit one GPU; the fit check says which), started with `accelerate launch`; without a "
                        "GPU, N CPU processes (gloo). The same as --set processes=N")
    p.add_argument("--executor", choices=["local", "ray"], default=None,
                   help="where it trains: local (this machine) or ray (a Ray cluster, as a Ray job); default: ray "
                        "when a cluster address is set (System tab, STUDIO_RAY_ADDRESS, --ray-address), else local")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="the Ray cluster's dashboard, e.g. http://HOST:8265 (implies --executor ray)")
    p.add_argument("--name", default=None, help="a name for the run")
    p.add_argument("--wait", action="store_true", help="run the queue here and follow this run until it ends")
    p.add_argument("--force", action="store_true", help="start even if the fit check says it will not fit")
    p.add_argument("--dry-run", action="store_true", help="show the settings and the fit check; start nothing")
    p.set_defaults(handler=run)


def run(args, ws) -> Output | None:
    from studio.cli.runs import _ended, follow
    from studio.core.errors import InvalidInput
    from studio.training import submit
    from studio.training.presets import build_config, parse_overrides
    from studio.training.runs import get_run

    overrides = parse_overrides(args.overrides)
    if args.method:
        overrides["objective"] = args.method
    if args.processes is not None:
        overrides["processes"] = args.processes
    model = args.model or (get_run(ws, args.from_run).base_model if args.from_run else None)
    if not model:
        raise InvalidInput("No base model was given.", "Add --model M (see `studio models list`), or --from RUN.")
    args.preset = args.preset or (args.method if args.method in ("dpo", "orpo", "kto") else "balanced")
    cfg = build_config(model, args.data, args.preset, overrides)
    planned = submit.plan(ws, cfg, from_run=args.from_run)
    if args.dry_run:
        settings = "\n".join(f"  {k}: {v}" for k, v in cfg.model_dump(mode="json").items())
        return Output({"config": cfg.model_dump(mode="json"), "fit_check": planned.estimate},
                      f"Settings:\n{settings}\n{planned.summary}")
    run = submit.submit(ws, cfg, preset=args.preset, overrides=overrides, name=args.name, force=args.force,
                        estimate=planned.estimate, from_run=args.from_run,
                        launcher=args.executor or ("ray" if args.ray_address else None),
                        launch_options={"ray_address": args.ray_address})
    start = f", from {args.from_run}" if args.from_run else ""
    head = (f"Run {run.id} queued ({cfg.objective.upper()}, {args.preset} preset, {cfg.base_model} on "
            f"{cfg.dataset_id}{start}).\n{planned.summary}")
    if not args.wait:
        return Output({"run": run.id, "fit_check": planned.estimate},
                      head + f"\nFollow it: studio runs show {run.id} --follow "
                             "(the studio or `studio runs worker` runs the queue).")
    print(head, flush=True)
    # a quarter second between passes (~5 ms of CPU each): the end is seen at once, not up to a second late
    follow(ws, run.id, schedule=True, poll=0.25, out=lambda line: print(line, flush=True))
    return _ended(ws, run.id)
