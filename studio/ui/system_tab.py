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


def build(ws: Workspace) -> None:
    gr.Markdown("What this machine offers for training and serving. The same facts: `studio doctor`.")
    facts_md = gr.Markdown(elem_id="system-facts")
    refresh = gr.Button("Refresh", size="sm")
    refresh.click(lambda: render(report(ws)), outputs=facts_md, api_name="system_report")
    # filled when the page loads, so a reload always shows current free memory and disk
    facts_md.attach_load_event(lambda: render(report(ws)), None)
