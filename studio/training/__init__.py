"""Training: from a frozen config to a trained adapter.

Studio side (never loads weights): config.py (TrainConfig), presets.py, fitcheck.py, submit.py (plan and
queue a run), runs.py (the registry and its guarded transitions), scheduler.py (claim, admit, launch,
reconcile, cancel), launchers/ (how a claimed run is started: a local process today), summary.py.

Process side: `python -m studio.training RUN_DIR` (__main__.py, run.py, recipe.py, progress.py,
failures.py) reads and writes only its run folder (folder.py, the contract), never SQLite, never gradio.
"""
