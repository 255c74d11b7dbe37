"""The Publish tab through its named Gradio endpoints (gradio_client against the real app): the plan
shows the exact command and limits, Publish publishes and verifies, Re-verify asks again."""

from __future__ import annotations

import pytest
from conftest import free_port
from device import PUBLISH_VERDICTS

from studio.serving import endpoints

pytestmark = pytest.mark.slow


@pytest.fixture
def tab_client(trained_run):
    from gradio_client import Client

    from studio.ui.app import build_app

    app = build_app(trained_run.ws)
    port = free_port()
    app.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()
        for ep in endpoints.list_endpoints(trained_run.ws, include_stopped=False):
            if ep.kind == "local" and ep.name == "publish-from-tab":
                endpoints.stop_endpoint(trained_run.ws, ep.id)


def test_publish_tab_shows_the_plan_publishes_and_reverifies(trained_run, tab_client):
    run_id = trained_run.run_id
    plan = tab_client.predict(run_id, "tgi-docker", {"port": 9090}, api_name="/publish_preview")
    assert plan["command"][:5] == ["docker", "run", "-d", "--name", "studio-tgi-published"]
    assert "127.0.0.1:9090:80" in plan["command"] and plan["limits"]["max_total_tokens"] > 0
    assert "compose.yaml" in plan["files"]

    dep = tab_client.predict(run_id, "local", {"name": "from-tab"}, api_name="/publish")
    assert dep["status"] == "healthy" and dep["verification"]["verdict"] in PUBLISH_VERDICTS
    assert dep["curl"].startswith(f"curl {dep['url']}/v1/chat/completions")
    assert dep["options"]["system_prompt"] == "" and '"role": "system"' not in dep["curl"]  # its dataset has none
    assert dep["id"] in [d["id"] for d in tab_client.predict(api_name="/deployments_list")]

    again = tab_client.predict(dep["id"], None, api_name="/deployment_verify")
    assert again["id"] == dep["id"] and again["status"] == "healthy"
    with pytest.raises(Exception, match="no earlier version to roll back to"):
        tab_client.predict("local:from-tab", None, api_name="/deployment_rollback")


def test_publish_tab_widgets_make_the_right_options(trained_run):
    """The tab's own formatting: option widgets → target options, plan and verification as text."""
    from studio.publishing import deployments, pipeline
    from studio.ui.publish_tab import collect, plan_markdown, verification_markdown

    assert collect("tgi-docker", ["name", "port", "quantize", "max_total_tokens", "merged", "timeout"],
                   ["a", 8081.0, "", " ", False, 30.0]) == {"name": "a", "port": 8081, "merged": False, "timeout": 30.0}
    assert collect("local", ["port"], ["9000"]) == {"port": 9000}
    plan = pipeline.preview(trained_run.ws, trained_run.run_id, "tgi-docker", {"port": 8081}).to_dict()
    text = plan_markdown(plan)
    assert "docker run -d --name studio-tgi-published" in text and "**Token limits:**" in text
    dep = deployments.Deployment(id="dep-x", run_id="r", target="local", slot="local:x", status="unhealthy",
                                 created_at="t", verification={
                                     "verdict": "failed", "summary": "Failed.", "items": [
                                         {"match": False, "prompt": "q?", "studio": "a b", "studio_finish": "eos",
                                          "endpoint": "a c", "endpoint_finish": "eos", "cause": "template",
                                          "diff": "a [-b-] {+c+}"}]})
    md = verification_markdown(dep)
    assert "❌ **unhealthy**" in md and "a [-b-] {+c+}" in md and "chat template differs" in md
