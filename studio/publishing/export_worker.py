"""The export process: `python -m studio.publishing.export_worker EXPORT_DIR`.

Reads EXPORT_DIR/job.json, loads the base model in 16-bit or wider (its own dtype: bf16 stays bf16,
never 4-bit) with the run's adapter, records the studio model's greedy replies to the verification
prompts (tuned and base) and the replies of the model the expert used in Chat (4-bit base + adapter for a
QLoRA run on a GPU; elsewhere the same model), then writes EXPORT_DIR/model/: the adapter alone or the merged weights as
sharded safetensors, the tokenizer with the chat template it was trained with, a generation_config.json
whose EOS ids include the template's end-of-turn token, and a model card. Progress goes to
events.jsonl, the outcome to status.json; it never touches SQLite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from studio.core.files import is_disk_full


class Job:
    def __init__(self, folder: Path):
        self.folder = folder
        self.spec = json.loads((folder / "job.json").read_text(encoding="utf-8"))
        self.started = time.monotonic()

    def event(self, stage: str, progress: float, message: str) -> None:
        record = {"type": "stage", "stage": stage, "progress": round(progress, 3), "message": message,
                  "elapsed": round(time.monotonic() - self.started, 2), "time": time.time()}
        with open(self.folder / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"[{stage}] {message}", flush=True)

    def status(self, **fields) -> None:
        tmp = self.folder / "status.json.tmp"
        tmp.write_text(json.dumps(fields, indent=2), encoding="utf-8")
        os.replace(tmp, self.folder / "status.json")


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_hash(folder: Path) -> tuple[str, dict[str, int]]:
    """sha256 over (relative name, sha256 of content) of every file, in name order; and the sizes."""
    digest = hashlib.sha256()
    sizes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        digest.update(rel.encode() + b"\0" + file_hash(path).encode() + b"\n")
        sizes[rel] = path.stat().st_size
    return digest.hexdigest(), sizes


def merge_dtype(base_source: str):
    """The dtype to load the base in for merging: its own 16-bit dtype, or float32 when it is stored so."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_source)
    if getattr(config, "quantization_config", None):
        raise ExportError(
            f"The base model {base_source} is stored already quantized, so a 16-bit merge of it is impossible.",
            "Export the adapter alone instead (choose 'adapter'), or train on the base model's 16-bit release.",
        )
    name = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    name = name.replace("torch.", "")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


class ExportError(Exception):
    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.message, self.fix = message, fix


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the chat template puts right after an assistant answer (<|im_end|>, <|eot_id|>...)."""
    marker = "ZQXMARKERZQX"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # a template that needs other roles: no end-of-turn token to add
        return []
    after = text.split(marker, 1)[-1]
    if not after.strip():
        return []
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    return [ids[0]] if ids and ids[0] in special else []


def eos_ids(tokenizer, generation_config) -> list[int]:
    ids: list[int] = []
    configured = generation_config.eos_token_id if generation_config is not None else None
    for value in ([configured] if isinstance(configured, int) else (configured or [])):
        ids.append(int(value))
    for value in [tokenizer.eos_token_id, *end_of_turn_ids(tokenizer)]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def greedy(model, tokenizer, messages, max_new_tokens: int, eos: list[int], pad: int) -> dict:
    import torch
    from transformers import GenerationConfig

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    with torch.no_grad():
        out = model.generate(**enc, generation_config=config)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    ended = bool(new) and new[-1] in eos
    return {
        "text": tokenizer.decode(new, skip_special_tokens=True).strip(),
        "finish": "eos" if ended else "length",
        "tokens": len(new),
        "ids": new,  # compared with a server's token ids (vLLM's return_token_ids): exact, unlike text
        "prompt_tokens": int(enc["input_ids"].shape[1]),
        "prompt_text": prompt,
    }


def answer_budget(tokenizer, expected: list[str]) -> int:
    """Room for the longest expected answer twice over (32..512 tokens); 128 when none is known."""
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in expected if a]
    return min(512, max(32, 2 * max(lengths) + 16)) if lengths else 128


def record_references(job: Job, model, tokenizer, eos: list[int], pad: int, dtype_name: str) -> None:
    """The studio model's greedy replies (tuned, and with the adapter off) to the verification prompts."""
    spec = job.spec
    prompts = spec.get("prompts") or []
    budget = spec.get("max_new_tokens") or answer_budget(tokenizer, spec.get("expected") or [])
    references = []
    for i, messages in enumerate(prompts):
        tuned = greedy(model, tokenizer, messages, budget, eos, pad)
        with model.disable_adapter():
            plain = greedy(model, tokenizer, messages, budget, eos, pad)
        expected = (spec.get("expected") or [None] * len(prompts))[i]
        references.append({"messages": messages, "expected": expected, "prompt_text": tuned.pop("prompt_text"),
                           "prompt_tokens": tuned.pop("prompt_tokens"), "tuned": tuned,
                           "base": {k: plain[k] for k in ("text", "finish", "tokens", "ids")}})
        job.event("reference", 0.15 + 0.3 * (i + 1) / len(prompts),
                  f"studio reply {i + 1}/{len(prompts)}: {tuned['tokens']} tokens, {tuned['finish']}")
    chat = record_chat_replies(job, references, tokenizer, eos, pad, budget, dtype_name)
    (job.folder / "reference.json").write_text(json.dumps(
        {"max_new_tokens": budget, "eos_ids": eos, "dtype": dtype_name, "chat_precision": chat,
         "prompts_from": spec.get("prompts_from"), "prompts": references}, indent=2))


def chat_precision(spec: dict) -> tuple[str, str]:
    """(quantize, dtype) the Chat tab serves this run in, as serving/launch.start_for_run and
    serving/server/model.load choose them: a QLoRA run's base in 4-bit on CUDA, else the widest fast dtype."""
    import torch
    import yaml

    config = Path(spec["adapter_dir"]).parent / "config.yaml"
    method = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("method") if config.exists() else None
    cuda = torch.cuda.is_available()
    dtype = "float32" if not cuda else "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return ("4bit" if method == "qlora" and cuda else "none"), dtype


def record_chat_replies(job: Job, references: list[dict], tokenizer, eos: list[int], pad: int, budget: int,
                        dtype_name: str) -> str:
    """Each prompt's reply from the model the expert used in Chat, into references[i]["chat"]; returns its
    precision ("nf4-4bit+bfloat16", "float32"). When that is the export's own precision it is the same model:
    its replies are the ones just recorded."""
    quantize, dtype = chat_precision(job.spec)
    precision = f"nf4-4bit+{dtype}" if quantize == "4bit" else dtype
    if precision == dtype_name:
        for ref in references:
            ref["chat"] = {k: ref["tuned"][k] for k in ("text", "finish", "tokens", "ids")}
        return precision
    import torch

    from studio.serving.server.model import load

    job.event("reference", 0.46, f"loading the Chat model ({precision} base + adapter) for its replies")
    served = load(job.spec["base_source"], {"tuned": job.spec["adapter_dir"]}, quantize=quantize, dtype=dtype)
    for i, ref in enumerate(references):
        reply = greedy(served.model, tokenizer, ref["messages"], budget, eos, pad)
        ref["chat"] = {k: reply[k] for k in ("text", "finish", "tokens", "ids")}
        job.event("reference", 0.46 + 0.03 * (i + 1) / len(references),
                  f"Chat reply {i + 1}/{len(references)}: {reply['tokens']} tokens, {reply['finish']}")
    del served
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return precision


def run(job: Job) -> None:
    spec = job.spec
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from studio.publishing.card import render_card

    tokenizer = AutoTokenizer.from_pretrained(spec["adapter_dir"])
    dtype = merge_dtype(spec["base_source"])
    dtype_name = str(dtype).replace("torch.", "")
    gen_path = Path(spec["adapter_dir"]) / "generation_config.json"
    generation = GenerationConfig.from_pretrained(spec["adapter_dir"] if gen_path.exists() else spec["base_source"])
    eos = eos_ids(tokenizer, generation)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    kind, reused = spec["kind"], spec.get("reference_from")
    model = None
    if kind == "merged" or not reused:  # an adapter export with recorded replies needs no weights at all
        from peft import PeftModel

        device = "cuda" if torch.cuda.is_available() else "cpu"
        job.event("load", 0.02, f"loading {spec['base_source']} in {dtype_name} on {device} with the adapter of "
                  f"{spec['run_id']}")
        base = AutoModelForCausalLM.from_pretrained(spec["base_source"], dtype=dtype).to(device)
        model = PeftModel.from_pretrained(base, spec["adapter_dir"]).eval()
        job.event("load", 0.15, f"loaded; end-of-sequence ids {eos}")
    if reused:
        recorded = json.loads(Path(reused).read_text(encoding="utf-8"))
        recorded["prompts_from"] = spec.get("prompts_from") or recorded.get("prompts_from")
        (job.folder / "reference.json").write_text(json.dumps(recorded, indent=2))
        job.event("reference", 0.45, f"reusing the studio model's replies recorded in {reused}")
    else:
        record_references(job, model, tokenizer, eos, pad, dtype_name)

    partial = job.folder / "model.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    if kind == "merged":
        job.event("merge", 0.5, f"merging the adapter into the {dtype_name} weights")
        merged = model.merge_and_unload()
        job.event("save", 0.6, f"writing sharded safetensors (shards up to {spec.get('shard_size', '2GB')})")
        merged.save_pretrained(partial, max_shard_size=spec.get("shard_size") or "2GB")
    else:
        job.event("save", 0.6, "copying the adapter")
        for path in Path(spec["adapter_dir"]).iterdir():
            if path.is_file() and path.name.startswith(("adapter_model", "adapter_config")):
                shutil.copy2(path, partial / path.name)
    tokenizer.save_pretrained(partial)
    generation.eos_token_id = eos if len(eos) > 1 else eos[0]
    generation.pad_token_id = pad
    generation.save_pretrained(partial)
    card = dict(spec.get("card") or {}, kind=kind, dtype=dtype_name,
                eos_tokens=tokenizer.convert_ids_to_tokens(eos))
    (partial / "README.md").write_text(render_card(card), encoding="utf-8")
    job.event("hash", 0.9, "hashing the exported files")
    digest, sizes = folder_hash(partial)
    target = job.folder / "model"
    shutil.rmtree(target, ignore_errors=True)
    os.rename(partial, target)
    manifest = {"export_hash": digest, "kind": kind, "dtype": dtype_name, "eos_ids": eos, "files": sizes,
                "bytes": sum(sizes.values()), "shards": sorted(n for n in sizes if n.endswith(".safetensors"))}
    (job.folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    job.event("done", 1.0, f"exported {len(sizes)} files, {manifest['bytes'] / 1e6:.1f} MB, hash {digest[:12]}")
    job.status(state="succeeded", export_hash=digest, bytes=manifest["bytes"], dtype=dtype_name)


def classify(exc: BaseException) -> tuple[str, str]:
    text = str(exc)
    if isinstance(exc, ExportError):
        return exc.message, exc.fix
    if is_disk_full(exc):
        return (f"The disk filled up while the export was written ({text.strip().splitlines()[-1][:200]}).",
                "Free space on the workspace drive, or export the adapter alone (a few MB) instead of the "
                "merged model.")
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return ("The machine ran out of memory while loading or merging the model.",
                "Close other models (stop local endpoints), or export the adapter alone.")
    return f"The export failed: {type(exc).__name__}: {text.splitlines()[0] if text else ''}", ""


def main(argv: list[str]) -> int:
    job = Job(Path(argv[0]))
    job.status(state="running", pid=os.getpid())
    try:
        run(job)
        return 0
    except BaseException as exc:  # the outcome must reach status.json whatever happened
        traceback.print_exc()
        message, fix = classify(exc)
        shutil.rmtree(job.folder / "model.partial", ignore_errors=True)
        try:
            job.event("failed", 1.0, message)
            job.status(state="failed", error=message, fix=fix)
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
