"""Who the current web request is from: the Gradio login's user name, looked up in the accounts.

Registered as the resolver of studio.core.access when the studio serves, so every core action sees who asked
and from where (the audit log's actor and origin). With a login, the logged-in user with their role; without
one (127.0.0.1, one person at the desk) the machine's user as in the CLI, with the request's address as its
origin, so the audit log tells the web studio's actions from the command line's.
"""

from __future__ import annotations

from studio.core import access, accounts
from studio.core.workspace import Workspace


def install(ws: Workspace, env_login: tuple[str, str] | None, *, login: bool = True) -> None:
    def resolve() -> access.Actor | None:
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
        if request is None:  # not in a web request: the scheduler's threads, the CLI
            return None
        origin = getattr(getattr(request, "client", None), "host", None) or "web"
        name = getattr(request, "username", None)
        if not login:
            return access.Actor(access.machine_actor().name, "admin", origin)
        if not name:
            return None
        if env_login and name == env_login[0]:
            return access.Actor(name, "admin", origin)
        # an account removed while its session lives on keeps no rights
        return access.Actor(name, accounts.role_of(ws, name) or "none", origin)

    access.set_resolver(resolve)


def login(ws: Workspace, env_login: tuple[str, str] | None):
    """Gradio's `auth` callable: the workspace's accounts, and the STUDIO_USERNAME/PASSWORD admin if set."""
    import hmac

    def check(name: str, password: str) -> bool:
        if env_login and hmac.compare_digest(name, env_login[0]) and hmac.compare_digest(password, env_login[1]):
            return True
        return accounts.authenticate(ws, name, password) is not None

    return check


def who(ws: Workspace, request=None) -> str:
    if not getattr(request, "username", None):  # no login: nobody to name
        return ""
    actor = access.current()
    return f"Signed in as **{actor.name}** ({actor.role}) · [Log out](/logout)"
