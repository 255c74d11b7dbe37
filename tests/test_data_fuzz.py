"""Bad input, found by fuzzing rather than guessed: random bytes and mutated real spreadsheets through the real
import path. Whatever comes in, the outcome is a complete dataset version or an InvalidInput that says what is
wrong and how to fix it — never a traceback, never a half-written version, never a registry row without its
files. And a few ragged rows no longer sink a whole file: they go to rejected.csv with their reason."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.core.errors import InvalidInput
from studio.core.paths import SAMPLES
from studio.data.importer import import_file, inspect_file

FAQ = (SAMPLES / "support_faq.csv").read_bytes()
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


def consistent(ws) -> list[str]:
    """The registry and the datasets folder agree: each row has its complete folder, no stray folders."""
    with ws.db() as db:
        ids = [r["id"] for r in db["datasets"].rows]
    folders = sorted(p.name for p in ws.datasets_dir.iterdir())
    assert folders == sorted(ids), (folders, ids)  # no temporary or orphaned folder left behind
    for vid in ids:
        assert {"train.parquet", "val.parquet", "meta.json"} <= {p.name for p in (ws.datasets_dir / vid).iterdir()}
    return ids


def refused_well(exc: InvalidInput) -> None:
    assert exc.message and exc.fix, exc.to_dict()
    assert "Traceback" not in str(exc)


@FUZZ
@given(content=st.binary(min_size=1, max_size=3000), suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json",
                                                                              ".parquet", ".xlsx", ".txt"]))
def test_random_bytes_are_read_or_refused_with_a_fix(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("fuzz") / f"upload{suffix}"
    path.write_bytes(content)
    try:
        inspect_file(path)
    except InvalidInput as exc:
        refused_well(exc)


def _mutations():
    lines = FAQ.decode("utf-8").splitlines(keepends=True)
    line = st.integers(min_value=0, max_value=len(lines) - 1)
    return st.one_of(
        st.tuples(st.just("quote"), line, st.integers(0, 80)),          # a stray double quote
        st.tuples(st.just("delimiter"), line, st.sampled_from([",", ";", "\t", "|"])),  # an extra delimiter
        st.tuples(st.just("nul"), line, st.integers(0, 80)),            # a NUL byte
        st.tuples(st.just("drop_cell"), line, st.just(0)),              # a ragged row: a cell too few
        st.tuples(st.just("huge"), line, st.integers(10_000, 200_000)),  # a huge field
        st.tuples(st.just("truncate"), line, st.integers(0, 40)),       # the file cut short
        st.tuples(st.just("blank"), line, st.just(0)),                  # an empty line
    ), lines


MUTATIONS, LINES = _mutations()


def mutate(lines: list[str], steps, encoding: str, bom: bool) -> bytes:
    lines = list(lines)
    for kind, i, arg in steps:
        if not lines:
            break
        i %= len(lines)  # an earlier truncation may have shortened the file
        text = lines[i]
        if kind == "quote":
            lines[i] = text[:arg] + '"' + text[arg:]
        elif kind == "delimiter":
            lines[i] = text[: len(text) // 2] + arg + text[len(text) // 2:]
        elif kind == "nul":
            lines[i] = text[:arg] + "\x00" + text[arg:]
        elif kind == "drop_cell":
            row = next(csv.reader([text]))
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerow(row[:-1] or [""])
            lines[i] = out.getvalue()
        elif kind == "huge":
            lines[i] = text.rstrip("\n") + " " + "x" * arg + "\n"
        elif kind == "truncate":
            lines = lines[: i + 1]
            lines[-1] = lines[-1][:arg]
        elif kind == "blank":
            lines.insert(i, "\n")
    data = "".join(lines).encode(encoding, errors="replace")
    return ("\ufeff".encode(encoding) if bom and encoding.startswith("utf-8") else b"") + data


@settings(FUZZ, max_examples=40)
@given(steps=st.lists(MUTATIONS, min_size=1, max_size=4),
       encoding=st.sampled_from(["utf-8", "cp1252", "utf-16"]), bom=st.booleans())
def test_mutated_spreadsheets_import_whole_or_are_refused_whole(ws, tmp_path_factory, steps, encoding, bom):
    path = tmp_path_factory.mktemp("mutated") / "faq.csv"
    path.write_bytes(mutate(LINES, steps, encoding, bom))
    before = consistent(ws)
    try:
        result = import_file(ws, path, max_length=256)
    except InvalidInput as exc:
        refused_well(exc)
        assert consistent(ws) == before
        return
    after = consistent(ws)
    assert result.version.id in after
    report = result.prepared.report
    assert report["rows_train"] + report["rows_val"] + report["rows_rejected"] <= report["rows_in"]


def test_a_few_ragged_rows_go_to_rejected_csv_and_the_rest_imports(ws, tmp_path):
    rows = [["question", "answer"]] + [[f"How do I do thing number {i}?", f"You do thing {i} like this."]
                                       for i in range(1, 40)]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    lines = text.getvalue().splitlines(keepends=True)
    lines[6] = "just one cell here\n"  # row 7 of the sheet (header = 1)
    lines[10] = "a question, with a comma,and an answer\n"  # row 11: three cells
    path = tmp_path / "faq.csv"
    path.write_text("".join(lines))

    result = import_file(ws, path, max_length=256)
    report = result.prepared.report
    assert report["rows_in"] == 39 and report["rows_rejected"] == 2
    assert report["rows_train"] + report["rows_val"] == 37
    unreadable = next(c for c in report["checks"] if c["check"] == "unreadable row")
    assert unreadable["rows"] == [7, 11] and unreadable["action"] == "rejected" and "quotes" in unreadable["fix"]
    rejected = list(csv.DictReader(io.StringIO((Path(result.version.path) / "rejected.csv").read_text("utf-8-sig"))))
    assert [(r["row"], r["reason"]) for r in rejected] == [
        ("7", "row 7 has 1 field where the header has 2"), ("11", "row 11 has 3 fields where the header has 2")]
    assert rejected[0]["raw"] == "just one cell here"
    # the kept rows keep their own numbers: the row after the first ragged one is still row 8
    table = inspect_file(path).table
    assert 7 not in table.rows and table.rows[5] == 8 and table.rows[0] == 2


def test_a_file_mostly_ragged_is_still_refused_with_the_delimiter_hint(tmp_path):
    path = tmp_path / "commas.csv"
    path.write_text("question,answer\n" + "".join(f"q{i}, unquoted,a{i}\n" for i in range(10)) + "q,a\n")
    with pytest.raises(InvalidInput, match=r"Row 2 of 'commas.csv' has 3 cells where the header has 2.*9 more") as info:
        inspect_file(path, header=True)
    assert "delimiter ','" in info.value.fix
