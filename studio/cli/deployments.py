"""`studio deployments list|show|verify|rollback`: what was published, whether it still answers like
the studio model, and putting a slot's previous version back."""

from __future__ import annotations

from studio.cli import Output
from studio.cli.publish import _progress, finish


def register(verbs, common) -> None:
    p = verbs.add_parser("deployments", parents=[common], help="list, re-verify and roll back deployments")
    sub = p.add_subparsers(dest="deployments_command", required=True, metavar="ACTION")
    ls = sub.add_parser("list", parents=[common], help="every publish, newest first")
    ls.add_argument("--run", default=None, help="only this run's deployments")
    ls.add_argument("--slot", default=None, help="only this slot's (e.g. local:published, hub:me/model)")
    ls.set_defaults(handler=list_)
    show = sub.add_parser("show", parents=[common], help="one deployment with its verification and a curl example")
    show.add_argument("ref", help="a deployment id, or a slot (its current deployment)")
    show.set_defaults(handler=show_)
    for name, handler, text in (("verify", verify_, "ask the deployment the verification prompts again"),
                                ("rollback", rollback_, "publish the slot's previous version again and verify it")):
        sp = sub.add_parser(name, parents=[common], help=text)
        sp.add_argument("ref", help="a deployment id, or a slot (its current deployment)")
        sp.add_argument("--api-key", default=None, help="the remote server's API key (never stored)")
        sp.add_argument("--token", default=None, help="a Hub token (default: HF_TOKEN; never stored)")
        sp.set_defaults(handler=handler)


def list_(args, ws) -> Output:
    from studio.publishing.deployments import list_deployments

    deps = list_deployments(ws, run_id=args.run, slot=args.slot)
    rows = [f"{'ID':<26} {'STATUS':<11} {'VERIFIED':<24} {'SLOT':<30} {'VERSION':<40} URL"]
    rows += [f"{d.id:<26} {d.status:<11} {d.verdict:<24} {d.slot:<30} {d.model_version or '':<40} {d.url or ''}"
             for d in deps]
    text = "\n".join(rows) if deps else "Nothing published yet. Publish a finished run: studio publish RUN"
    return Output([d.to_dict() for d in deps], text)


def show_(args, ws) -> Output:
    from studio.publishing.deployments import curl_example, format_deployment, resolve

    dep = resolve(ws, args.ref)
    return Output(dep.to_dict() | {"curl": curl_example(dep)}, format_deployment(dep))


def _secrets(args) -> dict:
    return {"api_key": args.api_key, "token": args.token}


def verify_(args, ws) -> Output | None:
    from studio.publishing import pipeline
    from studio.publishing.deployments import curl_example, format_deployment

    dep = pipeline.reverify(ws, args.ref, _secrets(args), progress=_progress)
    return finish(args, dep.to_dict() | {"curl": curl_example(dep)}, format_deployment(dep), dep.status)


def rollback_(args, ws) -> Output | None:
    from studio.publishing import pipeline
    from studio.publishing.deployments import curl_example, format_deployment

    dep = pipeline.rollback(ws, args.ref, _secrets(args), progress=_progress)
    return finish(args, dep.to_dict() | {"curl": curl_example(dep)}, format_deployment(dep), dep.status)
