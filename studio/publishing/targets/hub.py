"""The Hugging Face Hub target: push the export to a (private by default) model repo. The Inference Endpoint
target (inference_endpoint.py) builds on it.

A Hub push is verified in two ways: the repo's files must be byte for byte the export's (git blob ids
and LFS sha256), and the pushed folder, served here, must answer like the studio model.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from studio.core.errors import InvalidInput, ModelUnavailable, NotFound
from studio.publishing.source import RunSource
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


def trusted_hub(endpoint: str) -> bool:
    """huggingface.co (and its subdomains), or the Hub the server's admin set with HF_ENDPOINT."""
    import os
    from urllib.parse import urlsplit

    host = (urlsplit(endpoint).hostname or "").lower()
    admin_set = (urlsplit(os.environ.get("HF_ENDPOINT", "")).hostname or "").lower()
    return host in ("huggingface.co", "hf.co") or host.endswith((".huggingface.co", ".hf.co")) or \
        bool(admin_set and host == admin_set)


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
        """The Hub client. The server's own token (HF_TOKEN, the saved login) goes to Hugging Face's hosts only:
        a Hub address elsewhere needs a token given for it, or anyone who may publish could make the studio
        hand the server's token to a host of their choosing."""
        from huggingface_hub import HfApi

        if not self.options.token and not trusted_hub(self.endpoint()):
            raise InvalidInput(
                f"{self.endpoint()} is not a Hugging Face host, and the server's Hugging Face token is only ever "
                "sent to Hugging Face.",
                "Paste a token for that host in the token field, or leave the Hub address empty for huggingface.co.",
            )
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
        checks = [files_check(problems)]
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
        checks = [files_check(problems)]
        url = f"{self.endpoint()}/{repo_id}"
        if not self.options.serve_check:
            return Deployed(url=url, served=None, checks=checks, details=details)
        served, cleanup = serve_folder_here(self.ws, source, export, progress, self.options.merged)
        return Deployed(url=url, served=served, checks=checks, details=details, cleanup=cleanup)


def files_check(problems: list[str]) -> dict:
    return {"ok": not problems, "cause": "files",
            "text": "the repo holds exactly the exported files" if not problems
            else "the repo's files differ from the export: " + "; ".join(problems)}


def serve_folder_here(ws, source: RunSource, export: Export, progress: Progress, merged: bool):
    """A temporary embedded endpoint on the exported folder (the bytes that were pushed)."""
    from studio.serving import endpoints, launch

    progress(0.7, "serving the pushed files here to check their replies")
    exact = ["--dtype", export.dtype] if export.dtype else None  # the pushed weights as they are, on CUDA too
    if merged:
        ep = launch.start_endpoint(ws, str(export.model_dir), None, run_id=source.run_id,
                                      name=f"check-{export.id}", quantize="none", extra_args=exact)
        served = Served(url=ep.url, model="tgi")
    else:
        ep = launch.start_endpoint(ws, source.base_model, {source.adapter_name: str(export.model_dir)},
                                      run_id=source.run_id, name=f"check-{export.id}", quantize="none",
                                      extra_args=exact)
        served = Served(url=ep.url, model=source.adapter_name, adapter_id=source.adapter_name)
    return served, lambda: endpoints.stop_endpoint(ws, ep.id, reason="verification of a Hub push finished")
