"""`studio cluster show|check|set|clear`: the Ray cluster runs are submitted to (the System tab's field)."""

from __future__ import annotations

from studio.cli import Output


def register(verbs, common) -> None:
    p = verbs.add_parser("cluster", parents=[common], help="the Ray cluster training runs go to (docs/scale.md)")
    sub = p.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    show = sub.add_parser("show", parents=[common], help="the address in use and where it comes from")
    show.set_defaults(handler=run_show)
    check = sub.add_parser("check", parents=[common], help="connect and show the cluster's nodes and resources")
    check.add_argument("address", nargs="?", default=None,
                       help="the dashboard, e.g. http://HOST:8265 (default: the address in use)")
    check.set_defaults(handler=run_check)
    put = sub.add_parser("set", parents=[common], help="send runs to this cluster from now on (checked first)")
    put.add_argument("address", help="the dashboard, e.g. http://HOST:8265")
    put.set_defaults(handler=run_set)
    clear = sub.add_parser("clear", parents=[common], help="forget the stored address (runs train here again)")
    clear.set_defaults(handler=run_clear)


def run_show(args, ws) -> Output:
    from studio.training.cluster import configured

    address, source = configured(ws)
    text = (f"Runs go to the Ray cluster at {address} (set in {source})." if address else
            "No Ray cluster is set: runs train on this machine (`studio cluster set http://HOST:8265`).")
    return Output({"address": address, "source": source or None}, text)


def run_check(args, ws) -> Output:
    from studio.core.errors import InvalidInput
    from studio.training.cluster import check, configured, describe

    address = args.address or configured(ws)[0]
    if not address:
        raise InvalidInput("No Ray cluster address is set.", "Give one: studio cluster check http://HOST:8265")
    facts = check(address)
    return Output(facts, describe(facts))


def run_set(args, ws) -> Output:
    from studio.training.cluster import set_address

    address = set_address(ws, args.address)
    return Output({"address": address}, f"Runs now go to the Ray cluster at {address}.")


def run_clear(args, ws) -> Output:
    from studio.training.cluster import set_address

    set_address(ws, None)
    return Output({"address": None}, "No Ray cluster is stored; runs train on this machine "
                                     "(unless STUDIO_RAY_ADDRESS is set).")
