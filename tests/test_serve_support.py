"""Helpers for the endpoint tests: LoRA adapters on demo-tiny, a real endpoint process, and a small
checker of JSON bodies against TGI's OpenAPI schemas (shared/tgi/openapi.json)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

# TGI 3.3's OpenAPI document (Apache-2.0), kept beside the endpoint it describes
OPENAPI = Path(__file__).resolve().parents[1] / "studio" / "serving" / "server" / "tgi-openapi.json"


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved with the tokenizer as training saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"],
                        init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


class Server:
    """`python -m studio.serving.server ...` in its own process, as the studio starts it."""

    def __init__(self, argv: list[str], port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "studio.serving.server", *argv, "--port", str(port)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 120) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"endpoint exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("endpoint not ready in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------- TGI schema checks


def _spec() -> dict:
    return json.loads(OPENAPI.read_text())


def schema(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def check(value, node: dict, path: str = "$", spec: dict | None = None) -> None:
    """Assert that `value` fits the OpenAPI schema `node` (the subset TGI's spec uses)."""
    spec = spec or _spec()
    if "$ref" in node:
        node = spec["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    if value is None:
        assert node.get("nullable") or node.get("default") == "null", f"{path} is null but not nullable"
        return
    for part in node.get("allOf", []):
        check(value, part, path, spec)
    if "oneOf" in node:
        errors = []
        for option in node["oneOf"]:
            try:
                check(value, option, path, spec)
                break
            except AssertionError as exc:
                errors.append(str(exc))
        else:
            raise AssertionError(f"{path} fits none of the options: {errors}")
    kind = node.get("type")
    if kind == "object":
        assert isinstance(value, dict), f"{path} should be an object"
        for key in node.get("required", []):
            assert key in value, f"{path}.{key} is required"
        for key, sub in node.get("properties", {}).items():
            if key in value:
                check(value[key], sub, f"{path}.{key}", spec)
    elif kind == "array":
        assert isinstance(value, list), f"{path} should be an array"
        for i, item in enumerate(value):
            check(item, node.get("items", {}), f"{path}[{i}]", spec)
    elif kind == "string":
        assert isinstance(value, str), f"{path} should be a string"
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path} should be an integer"
    elif kind == "number":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path} should be a number"
    elif kind == "boolean":
        assert isinstance(value, bool), f"{path} should be a boolean"
    if "enum" in node:
        assert value in node["enum"], f"{path}={value!r} is not one of {node['enum']}"
    if "minimum" in node and isinstance(value, (int, float)):
        assert value >= node["minimum"], f"{path}={value} is below {node['minimum']}"


def sse_events(response: httpx.Response) -> list:
    """The data payloads of a server-sent-events response ([DONE] kept as the string)."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            payload = line[5:].strip()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
