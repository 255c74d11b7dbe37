"""A tab's guide folded under its title, so that the tab's controls fit a laptop window (1366x768) and the steps
are one click away."""

from __future__ import annotations

import gradio as gr


def guide(text: str, *, open: bool = False, elem_id: str | None = None) -> None:  # noqa: A002 (gradio's word)
    """`text` starts with its '### Title' line: the title becomes the accordion's label, the rest its content."""
    title, _, body = text.strip().partition("\n")
    with gr.Accordion(f"{title.lstrip('#').strip()} — how it works", open=open, elem_classes="studio-howto"):
        gr.Markdown(body.strip(), elem_id=elem_id)
