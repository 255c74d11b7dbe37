"""The System tab: the facts of `studio doctor`, refreshed on demand."""

from __future__ import annotations

import gradio as gr

from studio.core.system import report
from studio.core.workspace import Workspace


def render(facts: dict) -> str:
    rows = ["| Resource | What this machine has |", "|---|---|"]
    if facts["gpus"]:
        for gpu in facts["gpus"]:
            rows.append(
                f"| GPU {gpu['index']} | {gpu['name']}: {gpu['memory_free_gb']} GB free of "
                f"{gpu['memory_total_gb']} GB, compute {gpu['compute_capability']}, "
                f"bf16 {'yes' if gpu['bf16'] else 'no'} |"
            )
    else:
        rows.append("| GPU | none found |")
    rows += [
        f"| Training | {facts['training_mode']} |",
        f"| CPU | {facts['cpu']['model']}, {facts['cpu']['cores']} cores |",
        f"| Memory | {facts['memory_gb']['available']} GB available of {facts['memory_gb']['total']} GB |",
        f"| Disk | {facts['disk_gb']['free']} GB free of {facts['disk_gb']['total']} GB (workspace drive) |",
        f"| Workspace | `{facts['workspace']}` |",
        f"| Python | {facts['python']} on {facts['platform']} |",
    ]
    token = facts["hf_token"]
    rows.append(
        "| Hugging Face token | "
        + (f"set (from {token['source']})" if token["set"] else "not set: gated models (Llama, Gemma, "
           "Mistral) cannot be downloaded; set HF_TOKEN before starting the studio")
        + " |"
    )
    libs = ["| Library | Version |", "|---|---|"] + [
        f"| {name} | {version or 'not installed'} |" for name, version in facts["libraries"].items()
    ]
    return "\n".join(rows) + "\n\n" + "\n".join(libs)


def render_engines() -> str:
    """The serving engines: what is installed (version, health, size, folder) and what would be."""
    from studio.serving.engines.manage import engines_dir, list_engines

    found = list_engines()
    if not found:
        return (f"No serving engine is installed (in `{engines_dir()}`). The embedded endpoint serves every "
                "model; install vLLM for the engine production servers run (`studio engines install vllm`).")
    rows = ["| Engine | Package | Device | Health | Size | Folder |", "|---|---|---|---|---|---|"]
    rows += [f"| {e.name} | {e.package} {e.version} | {e.device} | {e.health} | {e.size_gb} GB | `{e.folder}` |"
             for e in found]
    return "\n".join(rows)


def install_engine(name: str):
    """Install an engine, showing pip's progress as it goes (a generator: Gradio streams each step)."""
    import contextvars
    import queue
    import threading

    from studio.core.errors import StudioError
    from studio.serving.engines.manage import install

    steps: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["engine"] = install(name, progress=lambda f, m: steps.put(f"{f * 100:.0f}% {m}"))
        except StudioError as exc:
            outcome["error"] = str(exc)
        finally:
            steps.put(None)

    # the copied context carries the web request, so the install acts as (and is checked against) its user
    threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True).start()
    log: list[str] = []
    while (step := steps.get()) is not None:
        log = (log + [step])[-12:]
        yield "```\n" + "\n".join(log) + "\n```", render_engines()
    if "error" in outcome:
        raise gr.Error(outcome["error"])
    yield f"Installed: {outcome['engine'].package} {outcome['engine'].version}.", render_engines()


USER_COLUMNS = ["name", "role", "created_at", "created_by", "updated_at"]
AUDIT_COLUMNS = ["at", "actor", "role", "origin", "action", "target", "detail"]


def users_frame(ws: Workspace):
    import pandas as pd

    from studio.core import access, accounts

    access.require(ws, "users.manage")
    return pd.DataFrame(accounts.list_users(ws), columns=USER_COLUMNS)


def audit_frame(ws: Workspace, limit: int = 200):
    import pandas as pd

    from studio.core import access, audit

    access.require(ws, "audit.read")
    rows = [{**e, "detail": ", ".join(f"{k}={v}" for k, v in e["detail"].items())}
            for e in audit.events(ws, limit=limit)]
    return pd.DataFrame(rows, columns=AUDIT_COLUMNS)


def _admin_view(ws: Workspace):
    """Users and audit log for an admin; for anyone else, why they are not shown."""
    import pandas as pd

    from studio.core import access

    actor = access.current()
    if not actor.may("audit.read"):
        return (f"You are signed in as {actor.name} ({actor.role}); only admins see accounts and the audit log.",
                pd.DataFrame(columns=USER_COLUMNS), pd.DataFrame(columns=AUDIT_COLUMNS))
    return "", users_frame(ws), audit_frame(ws)


def build_accounts(ws: Workspace) -> None:
    from studio.core import accounts

    gr.Markdown("### Accounts and audit log\nOn a shared server every person logs in with their own account: "
                "**admin** (everything, including users and deleting), **expert** (data, training, chat, "
                "evaluation, publishing to the targets an admin allowed), **viewer** (read only). Served beyond "
                "this machine, the studio refuses to start without one (`studio users add NAME --role admin`).")
    import pandas as pd

    note = gr.Markdown(elem_id="system-accounts-note")
    users = gr.Dataframe(pd.DataFrame(columns=USER_COLUMNS), label="Accounts", interactive=False, wrap=True)
    with gr.Row():
        name = gr.Textbox(label="User name", scale=2,
                          info="What the person types to log in (letters, digits, . _ - @). Also used to remove one.")
        password = gr.Textbox(label="Password (8 characters or more)", type="password", scale=2,
                              info="Give it to the person; they can change it with `studio users passwd NAME`.")
        role = gr.Dropdown(["expert", "viewer", "admin"], value="expert", label="Role", scale=1,
                           info="expert: does the work; viewer: reads only; admin: also users and deleting.")
    with gr.Row():
        add = gr.Button("Add account", size="sm")
        remove = gr.Button("Remove account", size="sm", variant="stop")
    events = gr.Dataframe(pd.DataFrame(columns=AUDIT_COLUMNS), label="Audit log (newest first)", interactive=False,
                          wrap=True, max_height=360, elem_id="system-audit")
    refresh = gr.Button("Refresh accounts and log", size="sm")

    def add_user(user_name: str, user_password: str, user_role: str):
        try:
            accounts.add_user(ws, (user_name or "").strip(), user_password or "", user_role)
        except Exception as exc:  # noqa: BLE001 - StudioError shown as the page's error
            raise gr.Error(str(exc)) from exc
        return (*_admin_view(ws), "")

    def remove_user(user_name: str):
        try:
            accounts.remove_user(ws, (user_name or "").strip())
        except Exception as exc:  # noqa: BLE001
            raise gr.Error(str(exc)) from exc
        return _admin_view(ws)

    refresh.click(lambda: _admin_view(ws), outputs=[note, users, events], api_name="system_audit")
    add.click(add_user, [name, password, role], [note, users, events, password], api_name="users_add")
    remove.click(remove_user, [name], [note, users, events], api_name="users_remove")
    # filled when the page loads, for an admin; anyone else sees the headers and why they are empty
    note.attach_load_event(lambda: _admin_view(ws)[0], None)
    users.attach_load_event(lambda: _admin_view(ws)[1], None)
    events.attach_load_event(lambda: _admin_view(ws)[2], None)


def cluster_state(ws: Workspace) -> tuple[str, str]:
    """(the address in the field, where runs train now) for the Ray cluster section."""
    from studio.training.cluster import configured

    address, source = configured(ws)
    where = (f"Runs go to the Ray cluster at {address} (from {source})." if address else
             "No Ray cluster is set: runs train on this machine.")
    return address or "", where


def check_cluster(address: str) -> str:
    from studio.core.errors import StudioError
    from studio.training.cluster import check, describe

    try:
        facts = check(address)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    rows = ["| Node | Head | CPUs | GPUs |", "|---|---|---|---|"]
    rows += [f"| {n['ip']} | {'yes' if n['head'] else ''} | {n['cpus']:g} | {n['gpus']:g} |" for n in facts["nodes"]]
    return describe(facts) + "\n\n" + "\n".join(rows)


def save_cluster(ws: Workspace, address: str | None) -> tuple[str, str]:
    from studio.core.errors import StudioError
    from studio.training.cluster import set_address

    try:
        set_address(ws, address)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return cluster_state(ws)


def build_cluster(ws: Workspace) -> None:
    gr.Markdown("### Ray cluster\nSend training runs to a Ray cluster instead of this machine: each run becomes a "
                "Ray job on a node with a GPU; its progress and adapter come back here, so Runs, Chat and Publish "
                "work as for a local run (docs/scale.md). The address is the cluster's dashboard, "
                "e.g. http://10.0.0.5:8265 (`studio cluster set|check|clear`; or STUDIO_RAY_ADDRESS).")
    where = gr.Markdown(elem_id="system-cluster-where")
    with gr.Row():
        address = gr.Textbox(label="Ray cluster address (dashboard)", placeholder="http://HOST:8265", scale=3,
                             elem_id="system-cluster-address",
                             info="The Ray dashboard's address (port 8265): runs go there as Ray jobs once saved.")
        check_btn = gr.Button("Check", size="sm", scale=0)
        save_btn = gr.Button("Use for runs", size="sm", scale=0, variant="primary")
        clear_btn = gr.Button("Train here", size="sm", scale=0)
    facts = gr.Markdown(elem_id="system-cluster-facts")
    check_btn.click(check_cluster, [address], [facts], api_name="cluster_check")
    save_btn.click(lambda a: save_cluster(ws, a), [address], [address, where], api_name="cluster_set")
    clear_btn.click(lambda: save_cluster(ws, None), None, [address, where], api_name="cluster_clear")
    address.attach_load_event(lambda: cluster_state(ws)[0], None)
    where.attach_load_event(lambda: cluster_state(ws)[1], None)


def build(ws: Workspace) -> None:
    gr.Markdown("What this machine offers for training and serving. The same facts: `studio doctor`.")
    facts_md = gr.Markdown(elem_id="system-facts")
    refresh = gr.Button("Refresh", size="sm")
    refresh.click(lambda: render(report(ws)), outputs=facts_md, api_name="system_report")
    # filled when the page loads, so a reload always shows current free memory and disk
    facts_md.attach_load_event(lambda: render(report(ws)), None)

    gr.Markdown("### Serving engines\nReal serving programs the studio can start for you, each in its own "
                "environment (`studio engines list|install|remove`). Publish to vLLM once it is installed.")
    engines_md = gr.Markdown(elem_id="system-engines")
    engines_md.attach_load_event(render_engines, None)
    install_btn = gr.Button("Install or update vLLM", size="sm")
    install_log = gr.Markdown(elem_id="system-engine-install")

    def install_vllm():
        yield from install_engine("vllm")

    install_btn.click(install_vllm, outputs=[install_log, engines_md], api_name="install_engine")

    build_cluster(ws)
    from studio.ui.tracking_view import build_tracking

    build_tracking(ws)
    build_accounts(ws)
