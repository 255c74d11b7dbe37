"""The embedded endpoint: one process holding a base model and its LoRA adapters behind TGI's HTTP API.

Started from an argv list (`python -m studio.serving.server --model M --adapter NAME=DIR ... --port P`); it
binds 127.0.0.1, never touches SQLite and never imports gradio. `model.py` loads the weights and the
chat formats, `engine.py` generates (continuous batching in one worker thread; `cache.py`, `sampling.py` and
`scheduler.py` are its cache, its token choice and its admission order), `schemas.py`
validates request bodies as TGI does, `prepare.py` turns a request into token ids and sampling settings,
`app.py` is the FastAPI app.
"""
