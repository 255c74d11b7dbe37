"""A server that asks for an API key, kept for Chat by the name of the environment variable that holds it: the
key is read when a request is made and never written anywhere. The server is a real embedded endpoint started
with --api-key-env (as `python -m studio.serving.server` runs for a published model)."""

from __future__ import annotations

import httpx
import pytest
from conftest import free_port
from test_serve_support import Server

from studio.core import audit
from studio.core.errors import InvalidInput
from studio.serving import chat, client, endpoints

pytestmark = pytest.mark.slow
KEY = "sk-planted-endpoint-key-5d1e"


@pytest.fixture
def keyed(demo_model_source, tmp_path, monkeypatch):
    monkeypatch.setenv("KEYED_SERVER_KEY", KEY)
    server = Server(["--model", str(demo_model_source), "--served-name", "demo-tiny", "--api-key-env",
                     "KEYED_SERVER_KEY"], free_port(), tmp_path / "server.log").wait()
    yield server
    server.stop()


def test_a_keyed_server_is_registered_by_the_name_of_its_key_and_chats(ws, keyed, monkeypatch):
    assert httpx.get(keyed.url + "/health").status_code == 200  # the probe needs no key
    refused = httpx.get(keyed.url + "/v1/models")
    assert refused.status_code == 401 and refused.json()["error_type"] == "unauthorized"

    with pytest.raises(InvalidInput, match="asks for an API key and none was given") as info:
        endpoints.register_remote(ws, keyed.url, "keyed")
    assert "--api-key-env" in info.value.fix
    with pytest.raises(InvalidInput, match="KEY_NOBODY_SET.*not set"):
        endpoints.register_remote(ws, keyed.url, "keyed", api_key_env="KEY_NOBODY_SET")
    with pytest.raises(InvalidInput, match="not the name of an environment variable"):
        endpoints.register_remote(ws, keyed.url, "keyed", api_key_env=KEY)  # the key itself, by mistake
    monkeypatch.setenv("WRONG_KEY", "sk-not-it")
    with pytest.raises(InvalidInput, match="refused the one given"):
        endpoints.register_remote(ws, keyed.url, "keyed", api_key_env="WRONG_KEY")

    monkeypatch.setenv("MY_SERVER_KEY", KEY)
    ep = endpoints.register_remote(ws, keyed.url, "keyed", api_key_env="MY_SERVER_KEY")
    assert ep.base_model == "demo-tiny" and ep.options["api_key_env"] == "MY_SERVER_KEY"
    target = chat.open_target(ws, "keyed")
    body = chat.chat_body(target.base, chat.build_messages([], "Where is my parcel?", ""),
                          chat.Settings(max_new_tokens=8).check())
    assert client.complete_chat(target.url, {**body, "stream": False}, api_key=target.api_key)
    assert "".join(client.stream_chat(target.url, body, api_key=target.api_key))
    assert KEY not in repr(target)

    monkeypatch.delenv("MY_SERVER_KEY")  # the studio restarted without it: said plainly
    with pytest.raises(InvalidInput, match="needs its API key in the environment variable MY_SERVER_KEY"):
        chat.open_target(ws, "keyed")

    assert [e["target"] for e in audit.events(ws, action="url.fetch")][0] == keyed.url
    leaked = [str(p) for p in ws.home.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaked, leaked
