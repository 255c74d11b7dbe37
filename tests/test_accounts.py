"""Accounts, roles and the audit log: the CLI that manages them, the core actions that check them, and a real
`python app.py` that refuses to be exposed without a login and, with accounts, lets each role do what it may —
through `gradio_client` logged in as each user."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from browser import ROOT, studio_process
from conftest import FAQ_PAIRS, free_port
from test_gradio_api import Studio

from studio.core import access, accounts, audit
from studio.core.access import Actor, Forbidden


def studio_cli(home, *args, password: str | None = None):
    env = {"STUDIO_HOME": str(home), "PATH": "/usr/bin:/bin"}
    if password:
        env["STUDIO_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_users_are_managed_from_the_cli_and_every_change_is_audited(studio_home):
    assert studio_cli(studio_home, "users", "add", "alice", "--role", "admin", password="correct horse").returncode == 0
    assert studio_cli(studio_home, "users", "add", "bob", password="battery staple").returncode == 0
    short = studio_cli(studio_home, "users", "add", "carol", password="short")
    assert short.returncode == 2 and "at least 8" in short.stderr
    users = json.loads(studio_cli(studio_home, "users", "list", "--json").stdout)
    assert [(u["name"], u["role"]) for u in users["users"]] == [("alice", "admin"), ("bob", "expert")]
    assert users["expert_targets"] == ["local"]

    last = studio_cli(studio_home, "users", "rm", "alice")
    assert last.returncode == 2 and "last admin" in last.stderr
    assert studio_cli(studio_home, "users", "role", "bob", "viewer").returncode == 0
    unknown = studio_cli(studio_home, "users", "allow-targets", "local,nowhere")
    assert unknown.returncode == 2 and "nowhere" in unknown.stderr

    events = json.loads(studio_cli(studio_home, "audit", "--json").stdout)
    assert [e["action"] for e in events] == ["users.role", "users.add", "users.add"]
    assert events[0]["detail"] == {"role": "viewer", "was": "expert"} and events[0]["origin"] == "cli"
    stored = (studio_home / "studio.db").read_bytes()
    assert b"correct horse" not in stored and b"$argon2id$" in stored


def test_each_role_may_do_what_it_is_for(ws):
    accounts.add_user(ws, "root2", "long enough", "admin")
    viewer, expert = Actor("vic", "viewer", "10.0.0.9"), Actor("bob", "expert", "10.0.0.8")
    with access.acting_as(viewer), pytest.raises(Forbidden, match=r"vic \(viewer\) may not import datasets"):
        access.require(ws, "data.import")
    with access.acting_as(expert):
        access.require(ws, "train.start")
        access.require(ws, "publish", target="local")
        with pytest.raises(Forbidden, match="may not delete runs"):
            access.require(ws, "train.delete")
        with pytest.raises(Forbidden, match="'hub' has not been allowed") as refused:
            access.require(ws, "publish", target="hub")
        assert "studio users allow-targets local,hub" in str(refused.value)
        with pytest.raises(Forbidden, match="may not manage users"):
            accounts.add_user(ws, "mallory", "long enough", "admin")
    accounts.allow_targets(ws, ["local", "hub"], ["local", "hub", "remote"])
    with access.acting_as(expert):
        access.require(ws, "publish", target="hub")
    assert access.current().origin == "cli" and access.current().role == "admin"


def test_a_dataset_records_who_made_it_and_a_viewer_cannot_make_one(ws):
    from conftest import save_qa_dataset

    with access.acting_as(Actor("bob", "expert", "10.0.0.8")):
        version = save_qa_dataset(ws, FAQ_PAIRS[:8], val_pairs=2)
    with ws.db() as db:
        assert db["datasets"].get(version.id)["created_by"] == "bob"
    made = audit.events(ws, action="data")
    assert made[0]["actor"] == "bob" and made[0]["origin"] == "10.0.0.8" and made[0]["target"] == version.id
    with access.acting_as(Actor("vic", "viewer", "10.0.0.9")), pytest.raises(Forbidden):
        save_qa_dataset(ws, FAQ_PAIRS[8:14], name="other", val_pairs=2)


def test_the_studio_is_not_exposed_without_a_login(studio_home):
    env = {"STUDIO_HOME": str(studio_home), "PATH": "/usr/bin:/bin"}
    for flags in (["--host", "0.0.0.0"], ["--share"]):
        refused = subprocess.run([sys.executable, str(ROOT / "app.py"), "--port", str(free_port()), *flags],
                                 capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert refused.returncode == 2, refused.stderr
        assert "no login" in refused.stderr and "studio users add NAME --role admin" in refused.stderr
        assert "--insecure" in refused.stderr


@pytest.mark.slow
def test_logged_in_users_act_with_their_own_role(studio_home):
    """A real studio with accounts: no way in without the password; a viewer's import is refused with its
    reason; an expert's is done, recorded as theirs, from their address."""
    from gradio_client import Client, handle_file

    from studio.core.workspace import Workspace

    ws = Workspace.open(studio_home)
    accounts.add_user(ws, "vic", "viewer password", "viewer")
    accounts.add_user(ws, "bob", "expert password", "expert")
    sample = ROOT / "assets" / "samples" / "support_faq.csv"
    upload = "1. Your spreadsheet (CSV, TSV, XLSX, JSONL, JSON or Parquet)"
    with studio_process(studio_home, free_port()) as url:
        with pytest.raises(Exception):  # noqa: B017 - gradio_client's own error type for a refused login
            Client(url, auth=("bob", "wrong password"), verbose=False)
        for name, password in (("vic", "viewer password"), ("bob", "expert password")):
            studio = Studio(Client(url, auth=(name, password), verbose=False, download_files=False), ws)
            found = studio("/data_inspect", **{upload: handle_file(str(sample))})
            columns = {role: found[role] for role in ("Question / instruction", "Answer")}
            if name == "vic":
                with pytest.raises(Exception, match=r"vic \(viewer\) may not import datasets"):
                    studio("/data_save", **columns, **{"Version name": "by vic"})
            else:
                studio("/data_save", **columns, **{"Version name": "by bob"})
    with ws.db() as db:
        made = list(db["datasets"].rows)
    assert [d["created_by"] for d in made] == ["bob"]
    events = audit.events(ws)
    assert {(e["actor"], e["action"]) for e in events} >= {("bob", "login.failed"), ("bob", "data.import")}
    assert next(e for e in events if e["action"] == "data.import")["origin"] == "127.0.0.1"


def test_only_an_admin_loads_a_model_from_any_folder_of_the_server(ws, demo_model_source, tmp_path, monkeypatch):
    import shutil

    from studio.models.resolve import resolve

    expert = Actor("bob", "expert", "10.0.0.8")
    with access.acting_as(expert), pytest.raises(Forbidden, match="only from the studio's model folders") as info:
        resolve(ws, str(demo_model_source))
    assert str(ws.models_dir) in info.value.fix and "STUDIO_MODEL_ROOTS" in info.value.fix
    assert resolve(ws, str(demo_model_source)).local  # the machine's user (admin) may
    inside = ws.models_dir / "my-model"
    shutil.copytree(demo_model_source, inside)
    with access.acting_as(expert):
        assert resolve(ws, str(inside)).source == str(inside.resolve())
        monkeypatch.setenv("STUDIO_MODEL_ROOTS", str(demo_model_source.parent))
        assert resolve(ws, str(demo_model_source)).local
