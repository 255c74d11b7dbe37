"""Roles, and who is acting.

Three roles, each a set of actions: a viewer reads, an expert does the work (data, training, chat,
evaluation, publishing to the targets an admin allowed), an admin does everything, including users,
engines and deleting. The accounts themselves are in accounts.py.

Who is acting is asked, not passed: `current()` returns the Actor of the request being served. The web
app registers a resolver that reads the logged-in user of the Gradio request; with none registered, or
outside a request, the actor is the machine's own user as admin — the CLI, and a studio bound to
127.0.0.1 without accounts, which is the single-user desk case. Core actions call `require(ws, action)`.
"""

from __future__ import annotations

import contextlib
import contextvars
import getpass
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from studio.core import settings
from studio.core.errors import StudioError

ROLES = ("admin", "expert", "viewer")

_EXPERT = {
    "data.import", "data.rename",
    "train.start", "train.cancel", "train.resume",
    "chat", "chat.feedback", "evaluate",
    "endpoint.start", "endpoint.stop", "endpoint.register",
    "publish", "publish.rollback", "export",
    "url.fetch",
}
_ADMIN_ONLY = {
    "users.manage", "settings.change", "engines.manage", "audit.read",
    "data.delete", "train.delete", "endpoint.remove", "model.any_folder",
}
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset(),
    "expert": frozenset(_EXPERT),
    "admin": frozenset(_EXPERT | _ADMIN_ONLY),
}
# what each action is, in words, for a refusal
_WORDS = {
    "data.import": "import datasets", "data.rename": "rename datasets", "data.delete": "delete datasets",
    "train.start": "start training runs", "train.cancel": "cancel runs", "train.resume": "resume runs",
    "train.delete": "delete runs", "chat": "chat with models", "chat.feedback": "record feedback",
    "evaluate": "run evaluations", "endpoint.start": "start endpoints", "endpoint.stop": "stop endpoints",
    "endpoint.register": "register remote endpoints", "endpoint.remove": "remove endpoints",
    "publish": "publish models", "publish.rollback": "roll deployments back", "export": "export models",
    "url.fetch": "make the studio fetch a URL", "users.manage": "manage users",
    "settings.change": "change studio settings", "engines.manage": "install or remove serving engines",
    "audit.read": "read the audit log", "model.any_folder": "load a model from any folder of the server",
}
EXPERT_TARGETS_KEY = "expert_publish_targets"
DEFAULT_EXPERT_TARGETS = ("local",)


class Forbidden(StudioError):
    kind = "forbidden"


@dataclass(frozen=True)
class Actor:
    name: str
    role: str
    origin: str  # "cli", "local", or the client address of a web request

    def may(self, action: str) -> bool:
        return action in PERMISSIONS.get(self.role, frozenset())


def machine_actor() -> Actor:
    try:
        name = getpass.getuser()
    except Exception:  # no passwd entry (a container's arbitrary uid)
        name = "local"
    return Actor(name, "admin", "cli")


_acting: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("studio_actor", default=None)
_resolver: Callable[[], Actor | None] | None = None


def set_resolver(resolver: Callable[[], Actor | None] | None) -> None:
    """The web app's way to say who the current request is from (None: not in a request)."""
    global _resolver
    _resolver = resolver


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    token = _acting.set(actor)
    try:
        yield actor
    finally:
        _acting.reset(token)


def current() -> Actor:
    actor = _acting.get()
    if actor is None and _resolver is not None:
        actor = _resolver()
    return actor or machine_actor()


def require(ws, action: str, *, target: str | None = None) -> Actor:
    """The current actor, if it may do `action` (and publish to `target`); else Forbidden, in words."""
    actor = current()
    if not actor.may(action):
        raise Forbidden(
            f"{actor.name} ({actor.role}) may not {_WORDS.get(action, action)}.",
            "Ask an admin for the role that allows it: studio users role NAME expert (or admin).",
        )
    if action == "publish" and target and actor.role != "admin":
        allowed = expert_targets(ws)
        if target not in allowed:
            raise Forbidden(
                f"Experts may publish to {', '.join(allowed)}; '{target}' has not been allowed by an admin.",
                f"An admin can allow it: studio users allow-targets {','.join([*allowed, target])}",
            )
    return actor


def expert_targets(ws) -> list[str]:
    """The publish targets an admin allowed experts to use."""
    return settings.read(ws, EXPERT_TARGETS_KEY, list(DEFAULT_EXPERT_TARGETS))


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(*, host: str, share: bool, has_accounts: bool, insecure: bool) -> str | None:
    """Refuse to serve the studio beyond this machine with nobody to log in as; return a warning for the
    page when the admin chose --insecure, else None."""
    exposed = share or not is_loopback(host)
    if not exposed or has_accounts:
        return None
    where = "a public gradio.live link (--share)" if share else f"{host} (reachable from other machines)"
    if not insecure:
        raise Forbidden(
            f"The studio would be open on {where} with no login: anyone who reaches it could read your data, "
            "load any folder of this server as a model and publish with your tokens.",
            "Add an account first: studio users add NAME --role admin  (or set STUDIO_USERNAME and "
            "STUDIO_PASSWORD); --insecure starts it without one anyway.",
        )
    return (f"This studio is open on {where} without a login (--insecure): anyone who reaches it acts as admin. "
            "Add accounts with `studio users add` and restart without --insecure.")
