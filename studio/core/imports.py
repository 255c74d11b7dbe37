"""Heavy libraries (transformers, torch, accelerate) imported under one lock in the studio process.

transformers resolves its names lazily on first use; two Gradio worker threads asking for the first time at
once can see the module half set up ("cannot import name 'AutoTokenizer'", found by bench/load_mix.py with 20
sessions). Every first import of these in a thread of the studio goes through `heavy_imports()`, and the web
app warms them up in the background at start, so the first person to open a dataset does not wait for them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_LOCK = threading.RLock()


@contextlib.contextmanager
def heavy_imports() -> Iterator[None]:
    with _LOCK:
        yield


def warm_up() -> threading.Thread:
    """Import what the tabs need, in a background thread, under the same lock."""

    def work() -> None:
        with heavy_imports():
            import transformers

            transformers.AutoTokenizer, transformers.AutoConfig  # noqa: B018 - resolving the lazy names is the point

    thread = threading.Thread(target=work, name="warm-up imports", daemon=True)
    thread.start()
    return thread
