"""Endpoint latency: time to first token (TTFT) and tokens/s of the embedded endpoint at 1 and at N
concurrent clients, against plain in-process `model.generate` on the same prompts (the baseline).

The endpoint is the real process (`python -m studio.serving.server`) serving the base model plus one LoRA
adapter, and the clients ask the adapter, as the Chat tab does; they stream from /generate_stream
over HTTP. The baseline runs the same base+adapter model in this process with the same greedy
decoding and the same thread count: one prompt at a time for 1 client, N prompts as one left-padded
batch for N clients (the best a single `generate` call can do; it cannot admit requests mid-way).

    python bench/endpoint_latency.py                                   # demo-tiny on this CPU
    python bench/endpoint_latency.py --shape llama-1b --device cuda    # random-weight Llama-3.2-1B shape
    python bench/endpoint_latency.py --requests 8 --max-new-tokens 16  # quick (its test)
    python bench/endpoint_latency.py --vllm                            # + vLLM (`studio engines install vllm`)

With --vllm, the same base + adapter is also served by a real vLLM server (the studio's engine environment,
the argv of studio/serving/engines/vllm.py, the adapter as a LoRA module) and the same clients stream the
same raw prompts from its /v1/completions.

Writes --out/results.json and prints a markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHAPES = {"llama-1b": "meta-llama/Llama-3.2-1B-Instruct", "llama-8b": "meta-llama/Llama-3.1-8B-Instruct"}
# a shape small enough for this CPU whose 32k vocabulary makes logits cost what they cost on a real model:
# 2 x 12.3M embedding/head + 6 layers of 1.6M = 34M parameters
SMALL_32K = {"vocab": 32000, "hidden": 384, "layers": 6, "intermediate": 1024, "heads": 6, "kv_heads": 2}
QUESTIONS = [
    "How do I reset my password?", "Where is my order?", "When do orders ship?", "How long do refunds take?",
    "Can I change my delivery address?", "What if tracking has not changed?", "Who pays for returns?",
    "Where do refunds go?", "What does BP mean?", "What does PRN mean?", "Do you ship abroad?",
    "How do I cancel an order?", "Is my payment secure?", "Can I pay by invoice?", "Where is the sign-in page?",
    "What is your return policy?",
]


def build(shape: str, folder: Path) -> tuple[Path, Path]:
    """A base model (demo-tiny, or a catalog shape with random weights and demo-tiny's tokenizer) and a
    random LoRA adapter for it, saved as a training run saves them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from studio.models.demo import build_demo_model

    base = folder / "base"
    build_demo_model(folder / "demo-tiny")
    tokenizer = AutoTokenizer.from_pretrained(folder / "demo-tiny")
    if shape == "demo-tiny":
        base = folder / "demo-tiny"
    else:
        from types import SimpleNamespace

        from studio.models.catalog import catalog_entry

        s = SimpleNamespace(**SMALL_32K) if shape == "small-32k" else catalog_entry(SHAPES[shape]).shape
        config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers,
                             intermediate_size=s.intermediate, num_attention_heads=s.heads,
                             num_key_value_heads=s.kv_heads, max_position_embeddings=4096,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=None, tie_word_embeddings=shape == "llama-1b")
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.float32 if shape == "small-32k" else torch.bfloat16)
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
        del model
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      init_lora_weights=False)
    adapter = folder / "adapter"
    get_peft_model(model, lora).save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    return base, adapter


def prompts(n: int) -> list[str]:
    return [QUESTIONS[i % len(QUESTIONS)] + (f" (case {i})" if i >= len(QUESTIONS) else "") for i in range(n)]


# ---------------------------------------------------------------------- the baseline


def baseline(base: Path, adapter: Path, texts: list[str], clients: int, max_new: int, device: str) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)
    model = PeftModel.from_pretrained(model, adapter).eval()
    eos = model.generation_config.eos_token_id

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.first is None:  # the first put is the prompt
                self.first = time.perf_counter()

        def end(self):
            pass

    def one_batch(batch: list[str]) -> tuple[float, float, int]:
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in batch]
        enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        streamer = FirstToken()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id, streamer=streamer)
        if device == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        new = out[:, enc["input_ids"].shape[1]:]
        tokens = int(sum(_length(row.tolist(), eos) for row in new))
        return (streamer.first or end) - start, end - start, tokens

    one_batch(texts[:1])  # warm-up
    ttfts, tokens, started = [], 0, time.perf_counter()
    for i in range(0, len(texts), clients):
        ttft, _, n = one_batch(texts[i:i + clients])
        ttfts.append(ttft)
        tokens += n
    wall = time.perf_counter() - started
    return {"ttft_ms": _ms(ttfts), "tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1)}


def _length(ids: list[int], eos) -> int:
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(ids):
        if t in eos:
            return i + 1
    return len(ids)


# ---------------------------------------------------------------------- the endpoint


def endpoint_run(url: str, texts: list[str], clients: int, max_new: int) -> dict:
    import threading

    import httpx

    local = threading.local()  # one keep-alive connection per client, as a client library holds one

    def one(text: str) -> tuple[float, float, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=600)
        body = {"inputs": _chat(text), "parameters": {"max_new_tokens": max_new, "adapter_id": "tuned"}}
        start = time.perf_counter()
        first, n = None, 0
        with local.client.stream("POST", url + "/generate_stream", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    first = first or time.perf_counter()
                    n += 1
        end = time.perf_counter()
        return first - start, end - first, n

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, texts[:clients]))  # warm-up: each client opens its connection
        started = time.perf_counter()
        results = list(pool.map(one, texts))
    wall = time.perf_counter() - started
    tokens = sum(r[2] for r in results)
    per_request = [(n - 1) / rest for _, rest, n in results if n > 1 and rest > 0]
    return {"ttft_ms": _ms([r[0] for r in results]), "tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1),
            "per_request_tokens_per_s": round(statistics.median(per_request), 1) if per_request else None}


_TEMPLATE: dict = {}


def _chat(text: str) -> str:
    return _TEMPLATE["tokenizer"].apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)


def _ms(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered) * 1000, 1),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 1)}


def start_endpoint(base: Path, adapter: Path, port: int, threads: int, log: Path,
                   extra: list[str] | None = None) -> subprocess.Popen:
    import httpx

    argv = [sys.executable, "-m", "studio.serving.server", "--model", str(base), "--served-name", "base", "--adapter",
            f"tuned={adapter}", "--port", str(port), "--threads", str(threads), "--log-level", "warning",
            *(extra or [])]
    proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError("endpoint did not start")


def long_prompt_run(url: str, texts: list[str], long_text: str, running: int, max_new: int) -> dict:
    """`running` clients stream long answers; once each has 8 tokens, a long prompt arrives. Measured: the
    running rows' inter-token latency (ITL) before it and while it is prefilled (until its first token),
    and the long prompt's own time to first token."""
    import threading

    import httpx

    arrivals: list[list[float]] = [[] for _ in range(running)]
    ready = threading.Barrier(running + 1)

    def stream(i: int) -> None:
        body = {"inputs": _chat(texts[i]), "parameters": {"max_new_tokens": max_new, "adapter_id": "tuned"}}
        with httpx.Client(timeout=600) as client, client.stream("POST", url + "/generate_stream", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    arrivals[i].append(time.perf_counter())
                    if len(arrivals[i]) == 8:
                        ready.wait()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(running)]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(0.2)
    sent = time.perf_counter()
    body = {"inputs": long_text, "parameters": {"max_new_tokens": 4, "adapter_id": "tuned"}}
    first = None
    with httpx.Client(timeout=600) as client, client.stream("POST", url + "/generate_stream", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and first is None:
                first = time.perf_counter()
    for t in threads:
        t.join()
    before, during = [], []
    for times in arrivals:
        for a, b in zip(times, times[1:], strict=False):
            if b < sent:
                before.append(b - a)
            elif a < first and b > sent:  # a gap that overlaps the long prompt's prefill
                during.append(b - a)
    return {"long_ttft_ms": round((first - sent) * 1000, 1),
            "itl_before_ms": _ms(before) if before else None,
            "itl_during_ms": {**_ms(during), "max": round(max(during) * 1000, 1)} if during else None,
            "running_tokens": [len(a) for a in arrivals]}


def eval_memory_run(url: str, pid: int, prompt: str, rows: int, asking: int) -> dict:
    """Peak resident memory of the endpoint process while `rows` requests arrive at once, `asking` of them
    with decoder_input_details (what the evaluation's held-out loss sends): the rise of VmHWM over a warm
    endpoint's, read from /proc (the process's high-water mark)."""
    import httpx

    def hwm() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def one(i: int) -> None:
        details = i < asking
        body = {"inputs": prompt + f" ({i})", "parameters": {
            "max_new_tokens": 1, "details": details, "decoder_input_details": details, "adapter_id": "tuned"}}
        httpx.post(url + "/generate", json=body, timeout=600).raise_for_status()

    one(rows)  # warm: a short run of the same kind
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the high-water mark to the current RSS
    start = hwm()
    with ThreadPoolExecutor(rows) as pool:
        list(pool.map(one, range(rows)))
    return {"rows": rows, "asking": asking, "peak_rise_mb": round((hwm() - start) / 2**20, 1)}


def long_text(tokens: int) -> str:
    """A prompt of about `tokens` tokens in the adapter's tokenizer."""
    tokenizer = _TEMPLATE["tokenizer"]
    words, text = " ".join(QUESTIONS).split(), ""
    i = 0
    while True:
        text += words[i % len(words)] + " "
        i += 1
        if i % 50 == 0 and len(tokenizer(text)["input_ids"]) >= tokens:
            return text


def vllm_run(url: str, texts: list[str], clients: int, max_new: int) -> dict:
    """The same measurement against vLLM: streamed /v1/completions of the same rendered prompts."""
    import threading

    import httpx

    local = threading.local()

    def one(text: str) -> tuple[float, float, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=600)
        body = {"model": "tuned", "prompt": _chat(text), "max_tokens": max_new, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        first, n = None, 0
        with local.client.stream("POST", url + "/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("usage"):
                    n = chunk["usage"]["completion_tokens"]
                elif chunk.get("choices") and chunk["choices"][0].get("text"):
                    first = first or time.perf_counter()
        end = time.perf_counter()
        return (first or end) - start, end - (first or end), n

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, texts[:clients]))
        started = time.perf_counter()
        results = list(pool.map(one, texts))
    wall = time.perf_counter() - started
    tokens = sum(r[2] for r in results)
    per_request = [(n - 1) / rest for _, rest, n in results if n > 1 and rest > 0]
    return {"ttft_ms": _ms([r[0] for r in results]), "tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1),
            "per_request_tokens_per_s": round(statistics.median(per_request), 1) if per_request else None}


def start_vllm(base: Path, adapter: Path, port: int, log: Path) -> subprocess.Popen:
    """vLLM from the studio's engine environment, with the argv and environment the studio uses."""
    import httpx

    from studio.serving.engines.manage import require_engine
    from studio.serving.engines.vllm import server_argv, server_env

    engine = require_engine("vllm")
    argv = server_argv(engine, str(base), "base", port, lora=True, max_lora_rank=16, max_model_len=512)
    argv += ["--lora-modules", f"tuned={adapter}"]
    proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, **server_env(engine, str(base))})
    deadline = time.time() + 900
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("vLLM did not start")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="small-32k", choices=["demo-tiny", "small-32k", *SHAPES])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--clients", default="1,8,32", help="concurrent clients to measure, comma-separated")
    p.add_argument("--max-batch-size", type=int, default=16,
                   help="the endpoint's --max-batch-size (16: the long prompt finds a free row beside 8 running)")
    p.add_argument("--long-tokens", type=int, default=2000,
                   help="the long prompt that arrives while 8 rows decode (0: skip that measurement)")
    p.add_argument("--memory-tokens", type=int, default=600,
                   help="prompt length of the decoder_input_details memory measurement (0: skip it)")
    p.add_argument("--no-baseline", action="store_true", help="skip the in-process model.generate baseline")
    p.add_argument("--requests", type=int, default=32, help="requests per measurement")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same in both (default 1)")
    p.add_argument("--port", type=int, default=18931)
    p.add_argument("--out", default=None, help="folder for results.json (default: a temporary one)")
    p.add_argument("--vllm", action="store_true", help="also measure a vLLM server on the same model")
    args = p.parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="endpoint-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    base, adapter = build(args.shape, out / "models")
    _TEMPLATE["tokenizer"] = AutoTokenizer.from_pretrained(adapter)
    texts = prompts(args.requests)
    clients = [int(c) for c in args.clients.split(",")]
    rows, extra = [], {}
    for n in [] if args.no_baseline else clients:
        rows.append({"path": "model.generate (in-process)", "clients": n,
                     **baseline(base, adapter, texts, n, args.max_new_tokens, args.device)})
    url = f"http://127.0.0.1:{args.port}"
    proc = start_endpoint(base, adapter, args.port, args.threads, out / "server.log",
                          ["--max-batch-size", str(args.max_batch_size)])
    try:
        for n in clients:
            rows.append({"path": "endpoint over HTTP", "clients": n,
                         **endpoint_run(url, texts, n, args.max_new_tokens)})
        if args.long_tokens:
            extra["long_prompt"] = {"tokens": args.long_tokens, **long_prompt_run(
                url, texts, long_text(args.long_tokens), 8, max(args.max_new_tokens, 96))}
        if args.memory_tokens:
            prompt = long_text(args.memory_tokens)
            extra["memory"] = [eval_memory_run(url, proc.pid, prompt, 8, asking) for asking in (0, 1, 8)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if args.vllm:
        proc = start_vllm(base, adapter, args.port + 1, out / "vllm.log")
        try:
            for n in clients:
                rows.append({"path": "vLLM-CPU over HTTP" if args.device == "cpu" else "vLLM over HTTP",
                             "clients": n,
                             **vllm_run(f"http://127.0.0.1:{args.port + 1}", texts, n, args.max_new_tokens)})
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    facts = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "shape": args.shape, "device": args.device,
        "machine": _machine(args.device), "threads": args.threads, "requests": args.requests,
        "max_new_tokens": args.max_new_tokens, "max_batch_size": args.max_batch_size,
        "load_average_after": os.getloadavg(),
        "command": "python bench/endpoint_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    result = {"facts": facts, "rows": rows, **extra}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return result


def _machine(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def markdown(result: dict) -> str:
    f = result["facts"]
    lines = [f"{f['shape']} on {f['machine']} ({f['device']}, {f['threads']} torch thread(s)), {f['date']}, "
             f"{f['requests']} requests of {f['max_new_tokens']} new tokens, greedy; `{f['command']}`", "",
             "| path | clients | TTFT median (ms) | TTFT p90 (ms) | tokens/s (all clients) | tokens/s per request |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['path']} | {r['clients']} | {r['ttft_ms']['median']} | {r['ttft_ms']['p90']} | "
                     f"{r['tokens_per_s']} | {r.get('per_request_tokens_per_s') or '-'} |")
    if "long_prompt" in result:
        lp = result["long_prompt"]
        lines += ["", f"A {lp['tokens']}-token prompt arriving while 8 rows decode: its TTFT {lp['long_ttft_ms']} "
                      f"ms; the running rows' ITL before it {lp['itl_before_ms']}, while it is prefilled "
                      f"{lp['itl_during_ms']}"]
    for m in result.get("memory", []):
        lines.append(f"- {m['rows']} requests at once, {m['asking']} with decoder_input_details: "
                     f"peak RSS rise {m['peak_rise_mb']} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
