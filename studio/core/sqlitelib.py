"""sqlite_utils, imported without pandas and numpy.

sqlite_utils imports pandas and numpy whenever they are installed, only to map their value types to column
types (pandas also loads pyarrow): about half a second of CPU in every `studio` command that touches the
registry, which writes plain Python values only. When neither is loaded yet they are hidden for that one
import (sqlite_utils then maps Python's types only) and importable again right after. In a process that has
already loaded them (the web app, with gradio) nothing is hidden.
"""

from __future__ import annotations

import sys

_OPTIONAL = ("pandas", "numpy")


def _load():
    hidden = [name for name in _OPTIONAL if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import pandas` raises ImportError, which sqlite_utils expects
    try:
        import sqlite_utils
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return sqlite_utils


sqlite_utils = _load()
