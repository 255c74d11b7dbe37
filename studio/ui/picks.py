"""Which item a list in the UI shows picked: the newest one (the lists are newest first) until the expert
picks another, so "pick it in the Train tab" finds it picked. Pure: the tabs pass their choices in."""

from __future__ import annotations

from typing import Any

Choices = list[tuple[str, Any]]  # (label, value), newest first, as dataset_choices / finished_runs give them


def keep_or_newest(choices: Choices, current: Any = None) -> Any:
    """The value to show: the expert's own pick while it is still listed, else the newest item, else None."""
    values = [value for _, value in choices]
    if current not in (None, "", []) and current in values:
        return current
    return values[0] if values else None


def fill_if_empty(choices: Choices, current: Any = None) -> Any:
    """The newest item when nothing is picked yet and there is one (e.g. a version saved since the page
    loaded); None to leave the list as it is (something is picked, or there is nothing to pick)."""
    if current not in (None, "", []) or not choices:
        return None
    return choices[0][1]
