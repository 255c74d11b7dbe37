"""`studio tracking show|check|set|clear`: the MLflow tracking server runs and publishes log to (the System
tab's field; MLFLOW_TRACKING_URI when none is stored)."""

from __future__ import annotations

from studio.cli import Output


def register(verbs, common) -> None:
    p = verbs.add_parser("tracking", parents=[common], help="the MLflow server runs and publishes log to")
    sub = p.add_subparsers(dest="tracking_command", required=True, metavar="ACTION")
    show = sub.add_parser("show", parents=[common], help="the tracking URI in use and where it comes from")
    show.set_defaults(handler=run_show)
    check = sub.add_parser("check", parents=[common], help="ask the tracking server for its experiments")
    check.add_argument("uri", nargs="?", default=None,
                       help="e.g. http://HOST:5000 (default: the URI in use)")
    check.set_defaults(handler=run_check)
    put = sub.add_parser("set", parents=[common], help="log every new run and publish there (checked first)")
    put.add_argument("uri", help="e.g. http://HOST:5000 or sqlite:///PATH/mlflow.db")
    put.set_defaults(handler=run_set)
    clear = sub.add_parser("clear", parents=[common], help="forget the stored URI")
    clear.set_defaults(handler=run_clear)


def run_show(args, ws) -> Output:
    from studio.training.tracking import configured, experiment_name

    uri, source = configured(ws)
    text = (f"Runs and publishes log to MLflow at {uri} (experiment '{experiment_name()}', set in {source})."
            if uri else "No MLflow tracking URI is set: nothing is logged to MLflow "
                        "(`studio tracking set http://HOST:5000`, or MLFLOW_TRACKING_URI). "
                        "TensorBoard event files are in every run folder.")
    return Output({"uri": uri, "source": source or None, "experiment": experiment_name()}, text)


def run_check(args, ws) -> Output:
    from studio.core.errors import InvalidInput
    from studio.training.tracking import check, configured, describe

    uri = args.uri or configured(ws)[0]
    if not uri:
        raise InvalidInput("No MLflow tracking URI is set.", "Give one: studio tracking check http://HOST:5000")
    facts = check(uri)
    return Output(facts, describe(facts))


def run_set(args, ws) -> Output:
    from studio.training.tracking import set_uri

    uri = set_uri(ws, args.uri)
    return Output({"uri": uri}, f"New runs and publishes log to MLflow at {uri}.")


def run_clear(args, ws) -> Output:
    from studio.training.tracking import set_uri

    set_uri(ws, None)
    return Output({"uri": None}, "No MLflow tracking URI is stored; nothing is logged to MLflow "
                                 "(unless MLFLOW_TRACKING_URI is set).")
