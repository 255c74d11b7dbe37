"""`studio users add|list|rm|passwd|role|allow-targets` and `studio audit`: the accounts that may log in to a
shared studio, their roles, and the log of who did what. The CLI acts as the machine's own user (admin)."""

from __future__ import annotations

import getpass
import os
import sys

from studio.cli import Output
from studio.core.argtypes import whole


def register(verbs, common) -> None:
    p = verbs.add_parser("users", parents=[common], help="accounts and roles for a shared studio")
    sub = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    add = sub.add_parser("add", parents=[common], help="add an account (the password is asked, or $STUDIO_PASSWORD)")
    add.add_argument("name")
    add.add_argument("--role", choices=["admin", "expert", "viewer"], default="expert",
                     help="admin: everything; expert: data, train, chat, evaluate, publish; viewer: read only")
    add.set_defaults(handler=run_add)

    ls = sub.add_parser("list", parents=[common], help="list the accounts and their roles")
    ls.set_defaults(handler=run_list)

    rm = sub.add_parser("rm", parents=[common], help="remove an account (never the last admin)")
    rm.add_argument("name")
    rm.set_defaults(handler=run_rm)

    pw = sub.add_parser("passwd", parents=[common], help="set an account's password")
    pw.add_argument("name")
    pw.set_defaults(handler=run_passwd)

    role = sub.add_parser("role", parents=[common], help="change an account's role")
    role.add_argument("name")
    role.add_argument("role", choices=["admin", "expert", "viewer"])
    role.set_defaults(handler=run_role)

    allow = sub.add_parser("allow-targets", parents=[common],
                           help="the publish targets experts may use, comma-separated (default: local)")
    allow.add_argument("targets")
    allow.set_defaults(handler=run_allow)

    audit = verbs.add_parser("audit", parents=[common], help="the audit log: who did what, when, from where")
    audit.add_argument("--limit", type=whole(1), default=50, metavar="N", help="the newest N events (default 50)")
    audit.add_argument("--user", default=None, help="only this user's events")
    audit.add_argument("--action", default=None, help="only actions starting with this (e.g. users, publish)")
    audit.set_defaults(handler=run_audit)


def _password(confirm: bool = True) -> str:
    from studio.core.errors import InvalidInput

    env = os.environ.get("STUDIO_PASSWORD")
    if env:
        return env
    if not sys.stdin.isatty():  # piped: the first line is the password
        line = sys.stdin.readline().rstrip("\n")
        if line:
            return line
        raise InvalidInput("No password was given (standard input is empty and STUDIO_PASSWORD is not set).",
                           "Run the command in a terminal to be asked, pipe the password in, or set STUDIO_PASSWORD.")
    try:
        first = getpass.getpass("Password: ")
        again = getpass.getpass("Again: ") if confirm else first
    except EOFError:
        raise InvalidInput("No password was given.", "Type it at the prompt, or set STUDIO_PASSWORD.") from None
    if again != first:
        raise InvalidInput("The two passwords differ.", "Type the same password twice.")
    return first


def run_add(args, ws) -> Output:
    from studio.core import accounts

    user = accounts.add_user(ws, args.name, _password(), args.role)
    return Output(user, f"Added {user['name']} ({user['role']}). They can log in once the studio is started with "
                        "--host 0.0.0.0 (or --share).")


def run_list(args, ws) -> Output:
    from studio.core import access, accounts

    users = accounts.list_users(ws)
    targets = access.expert_targets(ws)
    if not users:
        return Output({"users": [], "expert_targets": targets},
                      "No accounts. Add one with `studio users add NAME --role admin` before exposing the studio.")
    lines = [f"{'NAME':<24} {'ROLE':<8} CREATED"]
    lines += [f"{u['name']:<24} {u['role']:<8} {u['created_at']} by {u['created_by'] or '-'}" for u in users]
    lines.append(f"Experts may publish to: {', '.join(targets) or 'nothing (only admins may publish)'}")
    return Output({"users": users, "expert_targets": targets}, "\n".join(lines))


def run_rm(args, ws) -> Output:
    from studio.core import accounts

    accounts.remove_user(ws, args.name)
    return Output({"removed": args.name}, f"Removed {args.name}.")


def run_passwd(args, ws) -> Output:
    from studio.core import accounts

    accounts.get_user(ws, args.name)  # an unknown name is said before a password is asked for
    accounts.set_password(ws, args.name, _password())
    return Output({"name": args.name, "password": "changed"}, f"Changed the password of {args.name}.")


def run_role(args, ws) -> Output:
    from studio.core import accounts

    user = accounts.set_role(ws, args.name, args.role)
    return Output(user, f"{user['name']} is now {user['role']}.")


def run_allow(args, ws) -> Output:
    from studio.core import accounts
    from studio.publishing.targets import target_classes

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    accounts.allow_targets(ws, targets, list(target_classes()))
    return Output({"expert_targets": targets},
                  f"Experts may publish to: {', '.join(targets) or 'nothing (only admins may publish)'}")


def run_audit(args, ws) -> Output:
    from studio.core import access, audit

    access.require(ws, "audit.read")
    found = audit.events(ws, limit=args.limit, actor=args.user, action=args.action)
    if not found:
        return Output([], "The audit log is empty.")
    lines = [f"{'WHEN':<25} {'WHO':<16} {'FROM':<15} {'ACTION':<22} TARGET"]
    lines += [f"{e['at']:<25} {e['actor']:<16} {e['origin']:<15} {e['action']:<22} {e['target']}" for e in found]
    return Output(found, "\n".join(lines))
