"""Data import benchmark: import, check and version a generated 100,000-row CSV (~300 tokens a row).

Runs the same call as the Data tab and `studio data import` (studio.data.importer.import_file) with two
tokenizers: demo-tiny's (a ~1k-token vocabulary, so many more tokens per row) and a real-size ~32k
byte-level BPE trained here with `tokenizers` on generated text (no downloads). Each import runs in a
fresh process, so its peak memory (RSS) is its own; bigger files (--sizes) show that it does not grow with the
rows: the import streams the file in batches of STUDIO_IMPORT_BATCH_ROWS rows.

    python bench/data_import.py                      # 100k rows, both tokenizers, plus a 25k-row run
    python bench/data_import.py --rows 2000 --out /tmp/bench-data   # a quick look
    python bench/data_import.py --out /tmp/bench-data --small-rows 0 --models bpe \
        --sizes 100000,300000,1000000                # peak memory as the file grows (1M rows: 1.4 GB of CSV)
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORDS_SEED = 7
# about 300 tokens of the 32k BPE per row: question ~35 words, context ~120, answer ~75
QUESTION_WORDS, CONTEXT_WORDS, ANSWER_WORDS = 35, 120, 75


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    """English-like words, most frequent first: the demo corpus's words by frequency, then syllable compounds,
    shorter ones more often (as in English, where frequent words are short)."""
    corpus = (ROOT / "assets" / "demo_corpus.txt").read_text(encoding="utf-8")
    counts: dict[str, int] = {}
    for w in corpus.split():
        w = w.strip(".,;:?!()").lower()
        if w:
            counts[w] = counts.get(w, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))
    syllables = ["ka", "lo", "mi", "ren", "sta", "tor", "vel", "pa", "qui", "nor", "des", "ab", "ul", "ion", "ter",
                 "pre", "con", "ment", "ly", "ing", "ex", "ro", "sa", "ble", "dis", "tra", "ven", "co", "mo", "ur"]
    extra: set[str] = set()
    while len(words) + len(extra) < size:
        extra.add("".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 2, 3, 3, 4)))))
    return words + sorted(extra - set(words), key=lambda w: (len(w), w))


def sentence_maker(seed: int):
    rng = random.Random(seed)
    words = vocabulary(random.Random(WORDS_SEED))
    weights = [1 / (rank + 3) for rank in range(len(words))]  # Zipf: a few words are very common

    def make(n: int) -> str:
        chosen = rng.choices(words, weights=weights, k=n)
        out, start = [], True
        for i, w in enumerate(chosen):
            out.append(w.capitalize() if start else w)
            start = i % 14 == 13
            if start:
                out[-1] += "."
        return " ".join(out) + "."

    return make


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    make = sentence_maker(seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "context", "answer"])
        for i in range(rows):
            writer.writerow([f"Case {i}: " + make(QUESTION_WORDS), make(CONTEXT_WORDS), make(ANSWER_WORDS)])


def replicate_csv(source: Path, path: Path, rows: int) -> None:
    """A bigger file from a generated one: its rows again and again, each question numbered anew (so no row
    is a duplicate); fast where generating a million rows of text is not."""
    with source.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        base = list(itertools.islice(reader, rows))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i in range(rows):
            question, context, answer = base[i % len(base)]
            writer.writerow([f"Case {i}:" + question.split(":", 1)[1], context, answer])


def build_bpe(out: Path, vocab_size: int = 32_000) -> float:
    """A 32k byte-level BPE with a ChatML template, saved as a model folder AutoTokenizer can open."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from studio.models.demo import CHATML

    start = time.perf_counter()
    make = sentence_maker(seed=99)
    text = [make(200) for _ in range(8_000)]  # ~10 MB
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>",
                                  "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(text, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  model_input_names=["input_ids", "attention_mask"], chat_template=CHATML,
                                  model_max_length=4096)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=4096).save_pretrained(out)
    return time.perf_counter() - start


def measure(csv_path: Path, base_model: str, home: Path) -> dict:
    """One import in this process, with its timings and the peak RSS sampled every 20 ms."""
    import psutil

    from studio.core.workspace import Workspace
    from studio.data import preference
    from studio.data.importer import prepare, save
    from studio.data.ingest import batch_rows_default, open_source
    from studio.data.mapping import guess_mapping

    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    ws = Workspace.open(home)
    from studio.data import checks
    from studio.models.resolve import load_tokenizer

    counting = {"cpu_s": 0.0}
    count_tokens = checks.count_tokens

    def timed_count(*a, **k):  # the tokenizer's share of the CPU time
        start = time.process_time()
        try:
            return count_tokens(*a, **k)
        finally:
            counting["cpu_s"] += time.process_time() - start

    checks.count_tokens = timed_count

    from studio.data import split

    progress_path = os.environ.get("BENCH_PROGRESS")  # one line per batch read: rows so far, peak RSS so far
    count_batch = split.Outcome.source
    seen = {"rows": 0}
    start = time.perf_counter()

    def logged_source(self, file, table):
        count_batch(self, file, table)
        seen["rows"] += len(table.frame)
        if progress_path:
            with open(progress_path, "a") as fh:
                fh.write(json.dumps({"rows_read": seen["rows"], "peak_rss_mb": round(peak[0] / 2**20),
                                     "rss_mb": round(proc.memory_info().rss / 2**20),
                                     "elapsed_s": round(time.perf_counter() - start, 1),
                                     "cpu_s": round(time.process_time(), 1)}) + "\n")

    split.Outcome.source = logged_source

    load_tokenizer(ws, base_model)  # builds demo-tiny once, outside the timing
    baseline = proc.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0, cpu0 = time.perf_counter(), time.process_time()
    source = open_source(csv_path)  # what `studio data import` does: the file streams in batches
    guess = preference.guess(source.head) or guess_mapping(source.head)
    t1 = time.perf_counter()
    prepared = prepare(ws, source, guess.mapping, base_model=base_model, max_length=4096)
    t2 = time.perf_counter()
    version, created = save(ws, prepared)
    t3, cpu3 = time.perf_counter(), time.process_time()
    done.set()
    sampler.join()
    arrow_bytes = sum(p.stat().st_size for p in Path(version.path).glob("*.parquet"))
    report = prepared.report
    return {
        "batch_rows": batch_rows_default(), "baseline_rss_mb": round(baseline / 2**20),
        "base_model": base_model if len(base_model) < 40 else "bpe-32k", "rows": report["rows_in"],
        "file_mb": round(csv_path.stat().st_size / 2**20, 1),
        "tokens_per_row_median": report["tokens"]["median"], "tokens_total": report["tokens"]["total"],
        "read_s": round(t1 - t0, 2), "check_s": round(t2 - t1, 2), "save_s": round(t3 - t2, 2),
        "total_s": round(t3 - t0, 2), "rows_per_s": round(report["rows_in"] / (t3 - t0)),
        "peak_rss_mb": round(peak[0] / 2**20), "rss_growth_mb": round((peak[0] - baseline) / 2**20),
        "parquet_out_mb": round(arrow_bytes / 2**20), "created": created, "version": version.id,
        "load_avg_1min_after": round(os.getloadavg()[0], 1),
        "cpu_s": round(cpu3 - cpu0, 1), "tokenize_cpu_s": round(counting["cpu_s"], 1),
    }


def run_child(csv_path: Path, base_model: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-data-home-") as home:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(csv_path), base_model, home],
            capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "true"},
        )
    if out.returncode:
        raise SystemExit(f"the import of {csv_path} with {base_model} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small-rows", type=int, default=25_000, help="a second, smaller file (0: skip)")
    parser.add_argument("--out", type=Path, default=None, help="where to keep the files (default: a temp dir)")
    parser.add_argument("--sizes", default="", help="memory runs: row counts (e.g. 100000,300000,1000000), each "
                        "file made from the --rows file, imported with the 32k BPE only")
    parser.add_argument("--models", default="demo-tiny,bpe", help="tokenizers of the --rows runs")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        csv_path, model, home = args.child
        print(json.dumps(measure(Path(csv_path), model, Path(home))))
        return

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-data-"))
    out.mkdir(parents=True, exist_ok=True)
    bpe_dir = out / "bpe-32k"
    bpe_s = build_bpe(bpe_dir) if not (bpe_dir / "tokenizer.json").exists() else 0.0
    results = []
    models = [str(bpe_dir) if m == "bpe" else m for m in args.models.split(",") if m]
    for rows in [r for r in (args.rows, args.small_rows) if r]:
        path = out / f"rows-{rows}.csv"
        if not path.exists():
            write_csv(path, rows)
        for model in models:
            result = run_child(path, model)
            results.append(result)
            print(json.dumps(result), flush=True)
    for rows in [int(r) for r in args.sizes.split(",") if r]:
        path = out / f"rows-{rows}.csv"
        if not path.exists():
            base = out / f"rows-{args.rows}.csv"
            if not base.exists():
                write_csv(base, args.rows)
            replicate_csv(base, path, rows)
        result = run_child(path, str(bpe_dir))
        results.append(result)
        print(json.dumps(result), flush=True)
    import psutil

    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{round(psutil.virtual_memory().total / 2**30)} GiB", "python": platform.python_version(),
        "bpe_build_s": round(bpe_s, 1), "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
