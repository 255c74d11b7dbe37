"""Serving engines the studio manages: a real serving program (vLLM) in a virtual environment of its own,
installed with pip (manage.py), and its server started as a supervised endpoint process (vllm.py).

The embedded endpoint (studio/serving/server/) stays the default for demo-tiny and machines without an
engine; an engine is what a production server runs.
"""
