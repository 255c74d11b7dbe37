"""Start the studio: `python app.py [--host H] [--port P] [--share] [--home DIR]`.

Binds 127.0.0.1 by default. Served beyond this machine (another --host, or --share) it requires a login:
accounts made with `studio users add` (or STUDIO_USERNAME/STUDIO_PASSWORD as one admin); --insecure skips
that, with a warning on the page.
"""

from __future__ import annotations

import argparse
import os
import sys

from studio.core import access, accounts
from studio.core.errors import StudioError
from studio.core.imports import warm_up
from studio.core.workspace import Workspace
from studio.publishing import deployments, export
from studio.serving import endpoints
from studio.training.scheduler import start_scheduler
from studio.ui import session
from studio.ui.app import build_app, css, theme


def main() -> None:
    parser = argparse.ArgumentParser(description="LLMOps Studio web app")
    parser.add_argument("--host", default=os.environ.get("STUDIO_HOST", "127.0.0.1"),
                        help="address to bind (0.0.0.0 to reach it from other machines)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STUDIO_PORT", "7860")),
                        help="port to serve on (default: $STUDIO_PORT or 7860)")
    parser.add_argument("--share", action="store_true", help="open a temporary public gradio.live link")
    parser.add_argument("--home", default=None, help="workspace folder (default: $STUDIO_HOME or ~/.llmops-studio)")
    parser.add_argument("--insecure", action="store_true",
                        help="serve beyond this machine without a login (not recommended)")
    args = parser.parse_args()

    ws = Workspace.open(args.home)
    user, password = os.environ.get("STUDIO_USERNAME"), os.environ.get("STUDIO_PASSWORD")
    env_login = (user, password) if user and password else None
    has_accounts = accounts.has_users(ws) or env_login is not None
    try:
        warning = access.check_exposure(host=args.host, share=args.share, has_accounts=has_accounts,
                                        insecure=args.insecure)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    session.install(ws, env_login, login=has_accounts)
    app = build_app(ws, warning=warning)
    # what ran through a restart: endpoints and exports re-adopted or failed with how they ended, a publish
    # cut short by a crash failed (not left "publishing"); then the training queue re-adopts its runs and
    # starts queued ones as devices free up
    endpoints.list_endpoints(ws)
    export.reconcile(ws)
    deployments.reconcile(ws)
    start_scheduler(ws)
    warm_up()  # transformers for the tabs, in the background: the page is up before it is done
    print(f"LLMOps Studio: workspace {ws.home}", flush=True)
    _, local_url, share_url = app.queue(default_concurrency_limit=8).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=session.login(ws, env_login) if has_accounts else None,
        auth_message="LLMOps Studio: log in with the account an admin gave you." if has_accounts else None,
        theme=theme(),
        css=css(),
        footer_links=["api"],
        quiet=True,  # Gradio's own lines name its launch() arguments; ours name the studio's flags
        prevent_thread_lock=True,
    )
    print(f"LLMOps Studio: open {local_url} in a browser", flush=True)
    if share_url:
        print(f"LLMOps Studio: public link (for 1 week): {share_url}", flush=True)
    elif args.host in ("127.0.0.1", "localhost"):
        print("LLMOps Studio: only this machine can reach it; --host 0.0.0.0 (with accounts) serves the "
              "network. Ctrl+C stops it.", flush=True)
    app.block_thread()


if __name__ == "__main__":
    main()
