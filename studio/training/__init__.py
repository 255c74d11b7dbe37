"""The training process: `python -m studio.training RUN_DIR` (see __main__.py and run.py).

Only code that runs inside that process lives here; it reads and writes its run folder and nothing
else (never SQLite, never gradio). recipe.py holds the config → library translators.
"""
