"""A file bigger than one batch imports exactly as it does whole: the same rows, the same split, the same duplicates,
rejected rows and report, whether it is read in batches of 7 rows, in one batch, or from a table in memory, and
whether its kept rows wait in memory or on disk."""

from __future__ import annotations

import csv
import gc
import json
from pathlib import Path

import pyarrow.parquet as pq

from studio.data import store
from studio.data.importer import import_file, inspect_file, prepare

MAPPING = {"instruction": "question", "output": "answer", "system": "persona"}


def write_rows(path: Path) -> Path:
    """60 rows whose problems fall in different batches of 7: duplicates of rows many batches back, ragged rows,
    empty cells, a row too long, personal data, conflicting answers, a system prompt from a column."""
    rows = []
    for i in range(60):
        rows.append([f"How do I reset switch {i % 23}?", f"Hold button {i} for ten seconds, then release it.",
                     "Be brief." if i % 5 else ""])
    rows[30] = list(rows[2])  # exact duplicate of a row four batches earlier
    rows[44] = [rows[9][0].upper() + "!!", rows[9][1].lower(), rows[9][2]]  # near duplicate
    rows[15][1] = ""  # empty answer
    rows[16][0] = " "  # empty question
    rows[50][1] = "word " * 400  # too long for max_length 128
    rows[33][1] = "Write to help@example.com for a new one."  # personal data
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["question", "answer", "persona"])
        for i, row in enumerate(rows):
            if i in (20, 41):  # ragged: a delimiter in an unquoted cell
                fh.write(f"{row[0]},{row[1]},extra,{row[2]}\r\n")
            else:
                out.writerow(row)
        fh.write(",,\r\n")  # an empty row: skipped, and counted
    return path


def run(ws, path, batch_rows, **kwargs):
    return import_file(ws, path, MAPPING, max_length=128, val_fraction=0.25, seed=3, batch_rows=batch_rows,
                       **kwargs)


def split_of(version) -> dict[str, list]:
    return {s: pq.read_table(version.split_path(s)).column("messages").to_pylist() for s in store.SPLITS}


def test_a_file_in_many_batches_imports_as_it_does_whole(ws, tmp_path, monkeypatch):
    path = write_rows(tmp_path / "switches.csv")
    whole = run(ws, path, 10_000)
    assert whole.created
    checks = {(c["check"], c["action"]): c for c in whole.report["checks"]}
    assert checks[("exact duplicate", "rejected")]["rows"] == [32]  # rows counted with the header as row 1
    assert checks[("near duplicate", "rejected")]["rows"] == [46]
    assert checks[("unreadable row", "rejected")]["rows"] == [22, 43]
    assert whole.report["source"]["skipped_empty_rows"] == 1 and whole.report["rows_in"] == 60
    assert {("empty answer", "rejected"), ("empty question", "rejected"), ("too long", "rejected"),
            ("possible personal data: email addresses", "warning"),
            ("same question, different answers", "warning")} <= set(checks)
    rejected = whole.prepared.rejected
    assert list(rejected["row"]) == sorted(rejected["row"]) and "raw" == rejected.columns[-1]

    monkeypatch.setenv("STUDIO_IMPORT_SPOOL_MB", "0.001")  # every batch's kept rows go to disk
    streamed = run(ws, path, 7)
    assert not streamed.created and streamed.version.id == whole.version.id  # the same content, found again
    assert streamed.report == whole.report
    assert streamed.prepared.rejected.equals(whole.prepared.rejected)
    assert streamed.prepared.previews == whole.prepared.previews
    spool = streamed.prepared.splits.folder.path
    assert spool is not None and spool.parent == ws.datasets_dir and any(spool.iterdir())
    del streamed
    gc.collect()
    assert not spool.exists()  # the spool goes with the prepared import

    in_memory = prepare(ws, inspect_file(path).table, MAPPING, max_length=128, val_fraction=0.25, seed=3,
                        batch_rows=5)
    assert in_memory.content_hash == whole.prepared.content_hash and in_memory.report == whole.report

    saved = split_of(whole.version)
    assert len(saved["train"]) + len(saved["val"]) == whole.report["rows_train"] + whole.report["rows_val"] == 53
    questions = {s: {m[1]["content"].split("?")[0].lower() for m in saved[s]} for s in store.SPLITS}
    assert not questions["train"] & questions["val"]  # a question (23 of them, repeated) sits on one side only
    assert all(m[0] == {"role": "system", "content": "Be brief."} for s in saved.values() for m in s
               if m[0]["role"] == "system")


def test_jsonl_and_an_uploaded_validation_file_stream_too(ws, tmp_path):
    lines = [{"question": f"What is code {i % 9}?", "answer": f"Code {i} means the filter is full."} for i in range(30)]
    lines[25] = dict(lines[4])
    data = tmp_path / "codes.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in lines[:12]) + "\n\n" +
                    "\n".join(json.dumps(x) for x in lines[12:]) + "\n", encoding="utf-8")
    val = tmp_path / "val.csv"
    with val.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["question", "answer"])
        out.writerows([["What is code 3?", "A leak: the question is in training."]] +
                      [[f"What is error {i}?", f"Error {i} means the door is open."] for i in range(9)])
    one = import_file(ws, data, max_length=128, val_file=val, batch_rows=1000)
    many = import_file(ws, data, max_length=128, val_file=val, batch_rows=4)
    assert many.version.id == one.version.id and many.report == one.report
    checks = {c["check"]: c for c in one.report["checks"]}
    assert checks["exact duplicate"]["rows"] == [27]  # JSONL lines, the blank line counted
    assert checks["leaked into validation"]["rows"] == [2] and one.report["rows_val"] == 9
    assert many.prepared.rejected.equals(one.prepared.rejected)


def test_training_memory_maps_a_big_split_and_counts_cut_rows_in_arrow(ws, tmp_path, monkeypatch):
    from studio.training import recipe
    from studio.training.run import _rows_at_least, read_split

    version = run(ws, write_rows(tmp_path / "switches.csv"), 10_000).version
    path = version.split_path("train")
    small = read_split(path, tmp_path / "cache")
    assert not small.cache_files  # a small split is read into memory, as before
    monkeypatch.setenv("STUDIO_TRAIN_MMAP_MB", "0")
    big = read_split(path, tmp_path / "cache")
    assert big.cache_files and all(f["filename"].startswith(str(tmp_path / "cache")) for f in big.cache_files)
    assert big["messages"] == small["messages"]
    rows = recipe.to_prompt_completion(big)
    assert rows.cache_files  # the trainers' map() writes its rows beside the memory-mapped ones, not to memory
    tokenised = rows.map(lambda r: {"input_ids": list(range(len(r["completion"][0]["content"]) % 50))})
    assert _rows_at_least(tokenised, 20) == sum(1 for ids in tokenised["input_ids"] if len(ids) >= 20)
    val = read_split(version.split_path("val"), tmp_path / "cache")
    assert val["messages"] == pq.read_table(version.split_path("val")).column("messages").to_pylist()
