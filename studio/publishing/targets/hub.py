"""The Hugging Face Hub targets: push the export to a (private by default) model repo, and create or
update an Inference Endpoint (TGI) from that repo and follow it until it runs.

A Hub push is verified in two ways: the repo's files must be byte for byte the export's (git blob ids
and LFS sha256), and the pushed folder, served here, must answer like the studio model.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from studio.core.errors import InvalidInput, ModelUnavailable, NotFound, ResourceError
from studio.publishing import docker
from studio.publishing.source import RunSource, token_limits
from studio.publishing.targets.base import Deployed, Options, Plan, Progress, Target
from studio.publishing.verify import Served

if TYPE_CHECKING:
    from studio.publishing.export import Export

REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


def _repo(value: str) -> str:
    value = (value or "").strip()
    if not REPO_ID.match(value) or ".." in value or value.endswith((".git", ".")):
        raise ValueError("give a repo name like 'my-model' or 'my-org/my-model'")
    return value


class HubOptions(Options):
    repo_id: str = Field(..., description="The model repo to push to: 'name' (in your account) or 'org/name'.")
    private: bool = Field(True, description="Keep the repo private (only you and your organisation see it).")
    merged: bool = Field(True, description="Push the merged model (loads anywhere without the base model). Off: "
                         "push the adapter alone (a few MB; needs the base model to run).")
    token: str | None = Field(None, description="A Hub token with write access; empty: HF_TOKEN or the saved login "
                              "(never stored).")
    endpoint: str | None = Field(None, description="The Hub's address; empty: HF_ENDPOINT or huggingface.co.")
    serve_check: bool = Field(True, description="After the push, serve the pushed files on this machine and "
                              "check they answer like the studio model (needs the memory to load the model).")

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, v: str) -> str:
        return _repo(v)


@contextlib.contextmanager
def hub_errors(what: str, endpoint: str):
    """Hub failures as a sentence and a fix."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    from studio.publishing.verify import transport_errors

    try:
        yield
    except LocalTokenNotFoundError as exc:
        raise InvalidInput(f"No Hub token is set, so {what} is impossible.",
                           "Set HF_TOKEN to a token with write access (huggingface.co/settings/tokens), or paste "
                           "it in the token field.") from exc
    except OfflineModeIsEnabled as exc:
        raise ModelUnavailable(f"HF_HUB_OFFLINE is set, so {what} is impossible.",
                               "Unset HF_HUB_OFFLINE for this command.") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        first = (getattr(exc, "server_message", None) or str(exc).splitlines()[0])[:300]
        if status == 401:
            raise InvalidInput(f"The Hub refused the token (HTTP 401) while {what}: {first}",
                               "Check the token: it may be mistyped, revoked or expired; make one with write "
                               "access at huggingface.co/settings/tokens.") from exc
        if status == 403:
            raise InvalidInput(f"The token may not do this (HTTP 403) while {what}: {first}",
                               "Use a token with write access to that namespace.") from exc
        if status == 404:
            raise NotFound(f"Not found on the Hub while {what}: {first}",
                           "Check the repo or namespace name.") from exc
        raise ModelUnavailable(f"The Hub answered HTTP {status} while {what}: {first}",
                               "Try again later; if it persists, check the Hub's status page.") from exc
    except transport_errors() as exc:
        raise ModelUnavailable(f"The Hub at {endpoint} cannot be reached while {what} ({type(exc).__name__}).",
                               "Check the network connection (and HF_ENDPOINT if you set it).") from exc


def git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_sha256(path: Path) -> str:
    from studio.publishing.export_worker import file_hash

    return file_hash(path)


def compare_repo_files(remote: dict[str, Any], folder: Path) -> list[str]:
    """Problems between the repo's files (path -> RepoFile) and the exported folder."""
    problems = []
    local = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    for name, path in sorted(local.items()):
        entry = remote.get(name)
        if entry is None:
            problems.append(f"{name} is missing from the repo")
        elif entry.lfs is not None:
            sha = entry.lfs.sha256 if hasattr(entry.lfs, "sha256") else entry.lfs["sha256"]
            if sha != file_sha256(path):
                problems.append(f"{name} differs (LFS sha256)")
        elif entry.blob_id != git_blob_id(path):
            problems.append(f"{name} differs (git blob id)")
    for name in sorted(set(remote) - set(local) - {".gitattributes"}):
        problems.append(f"{name} is in the repo but not in this export (left from an earlier push)")
    return problems


class HubTarget(Target):
    kind = "hub"
    label = "Hugging Face Hub (a model repo)"
    help = "Push the merged model or the adapter, with its model card, to a model repo (private by default)."
    Options = HubOptions

    def api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.options.endpoint or None, token=self.options.token or None)

    def endpoint(self) -> str:
        from huggingface_hub import constants

        return (self.options.endpoint or constants.ENDPOINT).rstrip("/")

    def slot(self, source: RunSource) -> str:
        return f"hub:{self.options.repo_id}"

    def plan(self, source: RunSource, export_dir: str | None = None) -> Plan:
        o = self.options
        steps = [f"export {'the merged model' if o.merged else 'the adapter'} of {source.run_id} with its model card",
                 f"create the {'private' if o.private else 'public'} repo {o.repo_id} on {self.endpoint()} if "
                 "needed, and push the export as one commit (files of an earlier push that this export lacks "
                 "are deleted)",
                 "check the repo's files are byte for byte the export's"]
        if o.serve_check:
            steps.append("serve the pushed files here for a moment and verify their replies")
        return Plan(target=self.kind, slot=self.slot(source), export_kind=self.export_kind(), steps=steps,
                    url=f"{self.endpoint()}/{o.repo_id}")

    def full_repo_id(self, api) -> str:
        if "/" in self.options.repo_id:
            return self.options.repo_id
        with hub_errors("finding your account name", self.endpoint()):
            return f"{api.whoami()['name']}/{self.options.repo_id}"

    def push(self, source: RunSource, export: Export, progress: Progress) -> tuple[str, str, list[str]]:
        """Push the export; (repo id, commit sha, problems found comparing the repo with the export)."""
        from huggingface_hub import RepoFile

        api = self.api()
        repo_id = self.full_repo_id(api)
        progress(0.1, f"creating {repo_id} on {self.endpoint()} (if needed)")
        with hub_errors(f"creating the repo {repo_id}", self.endpoint()):
            api.create_repo(repo_id, private=self.options.private, exist_ok=True, repo_type="model")
        size = sum(p.stat().st_size for p in export.model_dir.rglob("*") if p.is_file())
        progress(0.2, f"pushing {size / 1e6:.1f} MB to {repo_id}")
        with hub_errors(f"pushing to {repo_id}", self.endpoint()):
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=export.model_dir, repo_type="model", delete_patterns="*",
                commit_message=f"Publish {source.run_id} ({export.kind}, {export.version})",
                commit_description=f"Pushed by LLMOps Studio from export {export.id}.",
            )
        revision = commit.oid
        progress(0.6, f"pushed commit {revision[:12]}; comparing the repo's files with the export")
        with hub_errors(f"listing the files of {repo_id}", self.endpoint()):
            remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=revision, recursive=True)
                      if isinstance(f, RepoFile)}
        return repo_id, revision, compare_repo_files(remote, export.model_dir)

    def deploy(self, source: RunSource, export: Export, progress: Progress) -> Deployed:
        repo_id, revision, problems = self.push(source, export, progress)
        url = f"{self.endpoint()}/{repo_id}"
        checks = [_files_check(problems)]
        details = {"repo_id": repo_id, "revision": revision, "private": self.options.private}
        if not self.options.serve_check:
            return Deployed(url=url, served=None, checks=checks, details=details,
                            message="Pushed; the replies were not checked (serve check off).")
        served, cleanup = serve_folder_here(self.ws, source, export, progress, self.options.merged)
        return Deployed(url=url, served=served, checks=checks, details=details, cleanup=cleanup)

    def recheck(self, source: RunSource, export: Export, details: dict, progress: Progress) -> Deployed:
        """Re-verification of a push: the repo's current files against the export, then the replies."""
        from huggingface_hub import RepoFile

        api = self.api()
        repo_id = details.get("repo_id") or self.full_repo_id(api)
        progress(0.2, f"comparing the files of {repo_id} with export {export.id}")
        with hub_errors(f"listing the files of {repo_id}", self.endpoint()):
            remote = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True) if isinstance(f, RepoFile)}
        problems = compare_repo_files(remote, export.model_dir)
        checks = [_files_check(problems)]
        url = f"{self.endpoint()}/{repo_id}"
        if not self.options.serve_check:
            return Deployed(url=url, served=None, checks=checks, details=details)
        served, cleanup = serve_folder_here(self.ws, source, export, progress, self.options.merged)
        return Deployed(url=url, served=served, checks=checks, details=details, cleanup=cleanup)


def _files_check(problems: list[str]) -> dict:
    return {"ok": not problems, "cause": "files",
            "text": "the repo holds exactly the exported files" if not problems
            else "the repo's files differ from the export: " + "; ".join(problems)}


def serve_folder_here(ws, source: RunSource, export: Export, progress: Progress, merged: bool):
    """A temporary embedded endpoint on the exported folder (the bytes that were pushed)."""
    from studio.serving import endpoints

    progress(0.7, "serving the pushed files here to check their replies")
    if merged:
        ep = endpoints.start_endpoint(ws, str(export.model_dir), None, run_id=source.run_id,
                                      name=f"check-{export.id}", quantize="none")
        served = Served(url=ep.url, model="tgi")
    else:
        ep = endpoints.start_endpoint(ws, source.base_model, {source.adapter_name: str(export.model_dir)},
                                      run_id=source.run_id, name=f"check-{export.id}", quantize="none")
        served = Served(url=ep.url, model=source.adapter_name, adapter_id=source.adapter_name)
    return served, lambda: endpoints.stop_endpoint(ws, ep.id, reason="verification of a Hub push finished")


# -- Inference Endpoints ---------------------------------------------------------------------------------


def _endpoint_name(value: str) -> str:
    value = (value or "").strip()
    if not re.match(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$", value):
        raise ValueError("use 1 to 32 lowercase letters, digits or '-', not starting or ending with '-'")
    return value


class InferenceEndpointOptions(HubOptions):
    merged: Literal[True] = Field(True, description="An Inference Endpoint serves the merged model.")
    serve_check: bool = Field(False, description="Not needed: the endpoint itself is verified.")
    name: str | None = Field(None, description="The endpoint's name (lowercase letters, digits, '-'; up to 32); "
                             "empty: made from the repo name.")
    namespace: str | None = Field(None, description="The account or organisation that owns it; empty: the repo's.")
    vendor: str = Field("aws", description="The cloud: aws, gcp or azure.")
    region: str = Field("us-east-1", description="The cloud region, e.g. us-east-1 or eu-west-1.")
    accelerator: Literal["gpu", "cpu"] = Field("gpu", description="GPU or CPU instances.")
    instance_type: str = Field("nvidia-a10g", description="The instance type, e.g. nvidia-a10g, nvidia-l4, "
                               "nvidia-a100.")
    instance_size: str = Field("x1", description="How many of them per replica: x1, x2, x4...")
    scale_to_zero_minutes: int = Field(15, ge=0, description="Stop paying after this many idle minutes (it wakes "
                                       "on the next request, slowly); 0 keeps it always on.")
    max_replica: int = Field(1, ge=1, description="The most replicas it may scale up to.")
    image: str = Field(docker.IMAGE, description="The TGI image the endpoint runs.")
    tag: str = Field(docker.TAG, description="The TGI image tag.")
    timeout: float = Field(1800, gt=0, description="Seconds to wait for it to be running.")
    poll: float = Field(10, gt=0, description="Seconds between two looks at its status.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return v if v is None else _endpoint_name(v)


class InferenceEndpointTarget(HubTarget):
    kind = "inference-endpoint"
    label = "Hugging Face Inference Endpoint (TGI)"
    help = "Push the merged model to a repo, then create or update a dedicated TGI endpoint from it."
    Options = InferenceEndpointOptions

    def endpoint_name(self) -> str:
        if self.options.name:
            return self.options.name
        base = re.sub(r"[^a-z0-9-]+", "-", self.options.repo_id.split("/")[-1].lower()).strip("-")
        return (base[:32].strip("-") or "studio-model")

    def slot(self, source: RunSource) -> str:
        namespace = f"{self.options.namespace}/" if self.options.namespace else ""
        return f"inference-endpoint:{namespace}{self.endpoint_name()}"

    def endpoint_env(self, source: RunSource) -> dict[str, str]:
        limits = token_limits(self.ws, source)
        return {"MODEL_ID": "/repository", "MAX_INPUT_TOKENS": str(limits.max_input_tokens),
                "MAX_TOTAL_TOKENS": str(limits.max_total_tokens)}

    def plan(self, source: RunSource, export_dir: str | None = None) -> Plan:
        o = self.options
        plan = super().plan(source, export_dir)
        plan.steps = plan.steps[:3] + [
            f"create the Inference Endpoint '{self.endpoint_name()}' ({o.vendor} {o.region}, {o.accelerator} "
            f"{o.instance_type} {o.instance_size}, scale to zero after "
            f"{o.scale_to_zero_minutes or 'never'}{' min' if o.scale_to_zero_minutes else ''}) running "
            f"{o.image}:{o.tag} on that commit, or point the existing one at it",
            f"follow it until it runs (up to {o.timeout:.0f} s), then verify its replies",
        ]
        plan.limits = token_limits(self.ws, source)
        plan.notes.append("Billing: an endpoint costs per hour while it runs (see the instance's price on "
                          "endpoints.huggingface.co); scale to zero stops the cost when idle.")
        return plan

    def deploy(self, source: RunSource, export: Export, progress: Progress) -> Deployed:
        from huggingface_hub.errors import HfHubHTTPError

        o = self.options
        repo_id, revision, problems = self.push(source, export, lambda f, m: progress(f * 0.4, m))
        api = self.api()
        namespace = o.namespace or repo_id.split("/")[0]
        name = self.endpoint_name()
        env = self.endpoint_env(source)
        image = {"healthRoute": "/health", "url": f"{o.image}:{o.tag}"}
        scaling = {"min_replica": 0 if o.scale_to_zero_minutes else 1, "max_replica": o.max_replica,
                   "scale_to_zero_timeout": o.scale_to_zero_minutes or None}
        with hub_errors(f"looking for the Inference Endpoint {namespace}/{name}", self.endpoint()):
            try:
                api.get_inference_endpoint(name, namespace=namespace, token=o.token)
                exists = True
            except HfHubHTTPError as exc:
                if exc.response is None or exc.response.status_code != 404:
                    raise
                exists = False
        with hub_errors(f"{'updating' if exists else 'creating'} the Inference Endpoint {name}", self.endpoint()):
            if exists:
                progress(0.45, f"pointing the endpoint {name} at commit {revision[:12]}")
                endpoint = api.update_inference_endpoint(
                    name, namespace=namespace, repository=repo_id, revision=revision, framework="pytorch",
                    task="text-generation", custom_image=image, env=env, accelerator=o.accelerator,
                    instance_type=o.instance_type, instance_size=o.instance_size, token=o.token, **scaling)
            else:
                progress(0.45, f"creating the endpoint {name}")
                endpoint = api.create_inference_endpoint(
                    name, namespace=namespace, repository=repo_id, revision=revision, framework="pytorch",
                    task="text-generation", accelerator=o.accelerator, vendor=o.vendor, region=o.region,
                    instance_type=o.instance_type, instance_size=o.instance_size, custom_image=image, env=env,
                    token=o.token, **scaling)
        endpoint = self.follow(endpoint, progress)
        checks = [_files_check(problems)]
        token = o.token or _saved_token()
        details = {"repo_id": repo_id, "revision": revision, "endpoint": name, "namespace": namespace,
                   "status": endpoint.status, "env": env}
        return Deployed(url=endpoint.url, checks=checks, details=details,
                        served=Served(url=endpoint.url, model="tgi", api_key=token,
                                      max_total_tokens=int(env["MAX_TOTAL_TOKENS"])))

    def follow(self, endpoint, progress: Progress):
        """Poll the endpoint until it runs; a failure or the timeout says so."""
        o = self.options
        started = time.monotonic()
        while True:
            with hub_errors(f"following the Inference Endpoint {endpoint.name}", self.endpoint()):
                endpoint.fetch()
            status = str(endpoint.status)
            waited = time.monotonic() - started
            if status == "running" and endpoint.url:
                progress(0.9, f"the endpoint runs at {endpoint.url}")
                return endpoint
            if status in ("failed", "updateFailed"):
                raise ModelUnavailable(
                    f"The Inference Endpoint {endpoint.name} failed to start (status {status}).",
                    "Open it on endpoints.huggingface.co to read its logs; a larger instance type often helps.")
            if waited > o.timeout:
                raise ResourceError(
                    f"The Inference Endpoint {endpoint.name} was not running after {o.timeout:.0f} s "
                    f"(status {status}); it keeps starting.",
                    "Re-verify the deployment later with `studio deployments verify`.")
            progress(0.45 + 0.45 * min(1.0, waited / o.timeout), f"endpoint {endpoint.name}: {status} "
                     f"({waited:.0f} s)")
            time.sleep(o.poll)


def _saved_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()
