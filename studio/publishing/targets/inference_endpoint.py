"""The Inference Endpoint target: push the merged model to a Hub repo (as the Hub target does), then create or
update a dedicated TGI Inference Endpoint from that commit and follow it until it runs."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from studio.core.errors import ModelUnavailable, ResourceError
from studio.publishing import docker
from studio.publishing.source import RunSource, token_limits
from studio.publishing.targets.base import Deployed, Plan, Progress
from studio.publishing.targets.hub import HubOptions, HubTarget, files_check, hub_errors
from studio.publishing.verify import Served

if TYPE_CHECKING:
    from studio.publishing.export import Export


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
        checks = [files_check(problems)]
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
