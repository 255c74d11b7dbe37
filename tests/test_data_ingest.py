"""Reading uploaded files: every format and encoding, sniffing, and the refusal of bad files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from studio.core.errors import InvalidInput
from studio.data.ingest import read_table

ROWS = [("How do I reset my password?", "Use the Forgot password link."),
        ("Où est ma commande ?", "Elle arrive demain, à 9 h.")]


def csv_text(delimiter: str = ",", newline: str = "\n") -> str:
    lines = [delimiter.join(["question", "answer"])] + [delimiter.join(f'"{c}"' for c in row) for row in ROWS]
    return newline.join(lines) + newline


def assert_rows(table, columns=("question", "answer")):
    assert table.columns == list(columns)
    assert [tuple(r) for r in table.frame[list(columns)].itertuples(index=False)] == ROWS
    assert table.rows.tolist() == [2, 3]


@pytest.mark.parametrize("encoding,expected", [
    ("utf-8", "utf-8"), ("utf-8-sig", "utf-8 (BOM)"), ("utf-16", "utf-16"), ("utf-16-le", "utf-16-le"),
    ("cp1252", "cp1252"), ("latin-1", "cp1252"),
])
def test_csv_encodings_are_sniffed(tmp_path, encoding, expected):
    path = tmp_path / "faq.csv"
    path.write_bytes(csv_text().encode(encoding))
    table = read_table(path)
    assert table.encoding == expected
    assert_rows(table)


def test_latin1_bytes_that_cp1252_cannot_decode(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_bytes(b"question,answer\nwhy\x81,because\n")  # 0x81 is undefined in cp1252
    table = read_table(path)
    assert table.encoding == "latin-1" and table.frame["question"][0] == "why\x81"


def test_utf8_head_with_windows_bytes_further_down(tmp_path):
    body = "question,answer\n" + "plain question,plain answer\n" * 5000
    path = tmp_path / "mixed.csv"
    path.write_bytes(body.encode() + "café?,oui\n".encode("cp1252"))
    table = read_table(path)
    assert table.encoding == "cp1252" and table.frame["question"].iloc[-1] == "café?"


def test_excel_export_semicolons_crlf_quoted_newlines(tmp_path):
    path = tmp_path / "export.csv"
    text = 'Question;Answer\r\n"Two\r\nlines?";"Yes; really ""quoted"""\r\nNext;One\r\n'
    path.write_bytes(text.encode("cp1252"))
    table = read_table(path)
    assert table.delimiter == ";" and table.columns == ["Question", "Answer"]
    assert table.frame["Question"][0] == "Two\r\nlines?" or table.frame["Question"][0] == "Two\nlines?"
    assert table.frame["Answer"][0] == 'Yes; really "quoted"'
    assert table.rows.tolist() == [2, 3]


def test_tsv_and_pipe_delimiters(tmp_path):
    tsv = tmp_path / "faq.tsv"
    tsv.write_text(csv_text("\t"), encoding="utf-8")
    assert read_table(tsv).delimiter == "\t"
    pipe = tmp_path / "faq.txt"
    pipe.write_text(csv_text("|"), encoding="utf-8")
    assert_rows(read_table(pipe))


def test_header_is_sniffed_and_can_be_overridden(tmp_path):
    path = tmp_path / "noheader.csv"
    path.write_text("How do I reset my password please tell me now?,Use the Forgot password link on the page.\n"
                    "Where is my order?,On its way.\n", encoding="utf-8")
    table = read_table(path)
    assert not table.header and table.columns == ["column_1", "column_2"] and len(table.frame) == 2
    assert table.rows.tolist() == [1, 2]
    forced = read_table(path, header=True)
    assert forced.header and len(forced.frame) == 1


def test_numbers_stay_text(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("code,answer\n007,Bond\n1e5,big\n", encoding="utf-8")
    assert read_table(path).frame["code"].tolist() == ["007", "1e5"]


def test_jsonl_records_and_messages(tmp_path):
    path = tmp_path / "faq.jsonl"
    lines = [json.dumps({"question": q, "answer": a, "votes": 3}) for q, a in ROWS]
    path.write_text("\n".join(lines[:1] + [""] + lines[1:]) + "\n", encoding="utf-8")
    table = read_table(path)
    assert table.format == "jsonl" and table.row_label == "line"
    assert table.rows.tolist() == [1, 3] and table.frame["votes"].tolist() == ["3", "3"]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    assert read_table(chat).frame["messages"][0][1]["content"] == "hello"


def test_json_records_wrapped_records_and_list_of_chats(tmp_path):
    records = [{"question": q, "answer": a} for q, a in ROWS]
    plain = tmp_path / "faq.json"
    plain.write_text(json.dumps(records), encoding="utf-8")
    table = read_table(plain)
    assert table.format == "json" and table.rows.tolist() == [1, 2] and table.frame["answer"][1] == ROWS[1][1]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": records}), encoding="utf-8")
    assert len(read_table(wrapped).frame) == 2
    chats = tmp_path / "chats.json"
    chats.write_text(json.dumps([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]))
    assert read_table(chats).columns == ["messages"]


def test_nested_json_values_become_text(tmp_path):
    path = tmp_path / "nested.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a", "meta": {"k": 1}, "tags": ["x", "y"]}) + "\n")
    table = read_table(path)
    assert table.frame["meta"][0] == '{"k": 1}' and table.frame["tags"][0] == ["x", "y"]


def test_parquet_with_text_numbers_and_messages(tmp_path):
    path = tmp_path / "faq.parquet"
    pd.DataFrame({"question": [q for q, _ in ROWS], "answer": [a for _, a in ROWS], "n": [1, 2]}).to_parquet(path)
    table = read_table(path)
    assert table.format == "parquet" and table.frame["n"].tolist() == ["1", "2"]
    assert table.frame["answer"].tolist() == [a for _, a in ROWS]


def test_xlsx_first_sheet_or_a_chosen_one(tmp_path):
    import openpyxl

    path = tmp_path / "faq.xlsx"
    book = openpyxl.Workbook()
    first = book.active
    first.title = "Notes"
    first.append(["just", "notes"])
    first.append(["a", "b"])
    sheet = book.create_sheet("FAQ")
    sheet.append(["question", "answer", None])
    sheet.append([ROWS[0][0], ROWS[0][1]])
    sheet.append([None, None])  # an empty row in the middle keeps the numbering right
    sheet.append([ROWS[1][0], ROWS[1][1]])
    sheet.append([12.0, 3.5])
    book.save(path)
    assert read_table(path).sheet == "Notes"
    table = read_table(path, sheet="FAQ")
    assert table.columns == ["question", "answer"] and table.sheets == ["Notes", "FAQ"]
    assert table.rows.tolist() == [2, 4, 5] and table.frame["question"].tolist()[2] == "12"
    with pytest.raises(InvalidInput, match="no sheet called 'Sheet9'.*'Notes', 'FAQ'"):
        read_table(path, sheet="Sheet9")
    # inspected (Data tab) or imported (CLI) without a sheet: the notes sheet's columns match nothing, so
    # the sheet whose columns do is taken; a sheet asked for by name is read as asked
    from studio.data.importer import inspect_file

    found = inspect_file(path)
    assert found.table.sheet == "FAQ" and found.guess.mapping == {"instruction": "question", "output": "answer"}
    assert inspect_file(path, sheet="Notes").table.sheet == "Notes"


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "PNG image"),
    (bytes(range(256)) * 50, "binary file"),
    (b"PK\x03\x04" + b"\x00" * 100, "zip archive|not a readable"),
    (b"question,answer\n", "no rows of data"),
    (b"question,answer\nfine,ok\nbad,row,with,commas\n", "Row 3 .* has 4 cells where the header has 2"),
    (b"answer,answer\nx,y\n", "both called 'answer'"),
    (b"question,,answer\nx,y,z\n", "Column 2 .* has no name but holds values"),
])
def test_bad_files_are_refused_with_a_reason(tmp_path, content, message):
    path = tmp_path / "upload.csv"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=message) as info:
        read_table(path)
    assert info.value.fix


def test_malformed_json_names_the_place(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"question": "a", "answer": "b"},\n {"question": "c" "answer": "d"}]')
    with pytest.raises(InvalidInput, match="not valid JSON.*line 2"):
        read_table(path)
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"question": "a"}\n{"question": \n')
    with pytest.raises(InvalidInput, match="Line 2 .* not valid JSON"):
        read_table(lines)
    scalar = tmp_path / "scalar.jsonl"
    scalar.write_text('{"question": "a"}\n[1, 2]\n')
    with pytest.raises(InvalidInput, match="Line 2 .* is a list"):
        read_table(scalar)


def test_size_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "faq.csv"
    path.write_text(csv_text() * 10)
    with pytest.raises(InvalidInput, match="over the upload limit"):
        read_table(path, max_bytes=100)
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_MB", "0.0001")
    with pytest.raises(InvalidInput, match="STUDIO_MAX_UPLOAD_MB"):
        read_table(path)


def test_csv_bomb_of_giant_fields_is_refused(tmp_path):
    cell = tmp_path / "cell.csv"
    cell.write_text("question,answer\nshort,\"" + "x" * 200_000 + "\"\n")
    with pytest.raises(InvalidInput, match="Row 2, column 'answer' .* 200,000 characters"):
        read_table(cell)
    row = tmp_path / "row.csv"
    with row.open("w") as fh:
        fh.write('question,answer\nshort,"')
        fh.write("y" * (17 << 20))  # an unclosed quote: the rest of the file is one giant cell
        fh.write('\nnext,row\n' * 1000)
    with pytest.raises(InvalidInput, match="longer than 16 MB|17,8[0-9,]+ characters"):
        read_table(row)


def test_trailing_empty_columns_and_rows_are_dropped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("question,answer,,\nq1,a1,,\n,,,\nq2,a2,,\n")
    table = read_table(path)
    assert table.columns == ["question", "answer"] and table.skipped_empty == 1
    assert table.rows.tolist() == [2, 4]
