"""Publish: a finished run → an export (adapter or merged model) → a target (embedded endpoint, TGI in
Docker, a remote TGI/vLLM/SGLang, the Hub, an Inference Endpoint) → verification → a deployment record.

`pipeline.publish(ws, run_id, target, options)` is the one call the Publish tab and `studio publish` make.
"""
