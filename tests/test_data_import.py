"""Import end to end with demo-tiny's tokenizer: checks, report, rejected.csv, split, versions, templates."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from studio.core.errors import Conflict, InvalidInput
from studio.data import store
from studio.data.importer import import_file, inspect_file, prepare, preview_version, save

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


def write_csv(path: Path, rows: list[list[str]], header=("question", "answer")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def good_rows(n: int, start: int = 0) -> list[list[str]]:
    return [[f"How do I change setting number {i}?", f"Open Settings and change item {i} there."]
            for i in range(start, start + n)]


def checks_by_name(report) -> dict[str, dict]:
    return {(c["check"], c["action"]): c for c in report["checks"]}


def registry(ws) -> list[str]:
    return sorted(v.id for v in store.list_versions(ws)) + sorted(p.name for p in ws.datasets_dir.iterdir())


def test_sample_faq_imports_and_reimport_finds_the_same_version(ws):
    first = import_file(ws, SAMPLES / "support_faq.csv", system_prompt="You are a support agent.")
    assert first.created and first.mapping == {"instruction": "question", "output": "answer"}
    version = first.version
    assert (version.rows_train, version.rows_val, version.rows_rejected) == (45, 5, 0)
    assert version.template == "model" and version.base_model == "demo-tiny" and version.max_length == 1024
    folder = Path(version.path)
    assert {"train.parquet", "val.parquet", "meta.json", "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    train = store.load_split(ws, version.id, "train")
    assert train[0]["messages"][0] == {"role": "system", "content": "You are a support agent."}
    assert train[0]["messages"][-1]["role"] == "assistant"
    val_questions = {r["messages"][1]["content"] for r in store.load_split(ws, version.id, "val")}
    assert not val_questions & {r["messages"][1]["content"] for r in train}
    again = import_file(ws, SAMPLES / "support_faq.csv", system_prompt="You are a support agent.")
    assert not again.created and again.version.id == version.id and len(store.list_versions(ws)) == 1
    other = import_file(ws, SAMPLES / "support_faq.csv", seed=7)
    assert other.created and other.version.id != version.id


def test_every_check_trips_and_rejected_csv_says_why(ws, tmp_path):
    rows = good_rows(12) + [
        ["", "An answer without a question."],                                   # row 14: empty question
        ["A question without an answer?", "   "],                                # row 15: empty answer
        ["How do I change setting number 1?", "Open Settings and change item 1 there."],  # 16: exact dup of 3
        ["how do I change SETTING number 2", "Open settings, and change item 2 there"],  # 17: near dup of 4
        ["Tell me everything.", "word " * 400],                                   # 18: too long (max 128)
        ["Is it free?", "Yes."],                                                  # 19: very short answer
        ["Who do I write to?", "Write to help.desk@example.com for help."],      # 20: email
        ["Can I call?", "Call +44 20 7946 0958 on weekdays."],                   # 21: phone
        ["My id?", "Your number 123-45-6789 is on file."],                       # 22: national id
        ["How do I change setting number 5?", "Ask the admin to do it for you."],  # 23: conflicting answer
    ]
    result = import_file(ws, write_csv(tmp_path / "faq.csv", rows), max_length=128, val_fraction=0)
    report, checks = result.report, checks_by_name(result.report)
    assert checks[("empty question", "rejected")]["rows"] == [14]
    assert checks[("empty answer", "rejected")]["rows"] == [15]
    assert checks[("exact duplicate", "rejected")]["rows"] == [16]
    assert checks[("near duplicate", "rejected")]["rows"] == [17]
    assert checks[("too long", "rejected")]["rows"] == [18]
    assert 19 in checks[("very short answers", "warning")]["rows"]
    assert checks[("possible personal data: email addresses", "warning")]["rows"] == [20]
    assert checks[("possible personal data: phone numbers", "warning")]["rows"] == [21]
    assert checks[("possible personal data: national-id-like numbers", "warning")]["rows"] == [22]
    assert sorted(checks[("same question, different answers", "warning")]["rows"]) == [7, 23]
    assert report["rows_rejected"] == 5 and report["rows_train"] == 22 - 5 and report["rows_val"] == 0
    assert report["rows_over_max_length"] == 1 and sum(report["histogram"]["counts"]) == 18
    rejected = list(csv.DictReader(io.StringIO((Path(result.version.path) / "rejected.csv").read_text("utf-8-sig"))))
    assert [(r["row"], r["file"]) for r in rejected] == [(str(n), "data") for n in (14, 15, 16, 17, 18)]
    assert rejected[2]["reason"] == "exact duplicate of row 3"
    assert rejected[3]["reason"] == "same as row 4 apart from case, spacing or punctuation"
    assert "over the max length of 128" in rejected[4]["reason"]
    assert rejected[0]["answer"] == "An answer without a question."  # the original cells, to fix and re-upload


def test_truncate_cuts_the_answer_to_fit(ws, tmp_path):
    rows = good_rows(4) + [["Tell me everything.", "word " * 400]]
    result = import_file(ws, write_csv(tmp_path / "long.csv", rows), max_length=128, length_policy="truncate",
                         val_fraction=0)
    assert result.report["rows_truncated"] == 1 and result.report["rows_rejected"] == 0
    assert checks_by_name(result.report)[("too long", "truncated")]["rows"] == [6]
    assert result.report["tokens"]["max"] <= 128
    cut = [r for r in store.load_split(ws, result.version.id) if r["messages"][0]["content"] == "Tell me everything."]
    assert 0 < len(cut[0]["messages"][-1]["content"]) < len("word " * 400)


def test_uploaded_validation_file_and_leakage(ws, tmp_path):
    train = write_csv(tmp_path / "train.csv", good_rows(10))
    val = write_csv(tmp_path / "val.csv", good_rows(3, start=100) + [["how do I change setting number 2??",
                                                                        "A different answer."]])
    result = import_file(ws, train, val_file=val)
    assert (result.report["rows_train"], result.report["rows_val"]) == (10, 3)
    leak = checks_by_name(result.report)[("leaked into validation", "rejected")]
    assert leak["rows"] == [5]
    rejected = (Path(result.version.path) / "rejected.csv").read_text("utf-8-sig")
    assert "validation,5,the same question is in the training data" in rejected
    assert "uploaded file val.csv" in result.report["validation_source"]
    missing = write_csv(tmp_path / "other.csv", good_rows(2), header=("q", "a"))
    with pytest.raises(InvalidInput, match="Validation file: The file has no column 'question'"):
        import_file(ws, train, val_file=missing)


def test_messages_jsonl_multi_turn(ws, tmp_path):
    chats = [[{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hello {i}!"},
              {"role": "user", "content": "And then?"}, {"role": "assistant", "content": f"Then step {i}."}]
             for i in range(6)]
    chats.append([{"role": "user", "content": "dangling"}])
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps({"messages": c}) for c in chats))
    result = import_file(ws, path, val_fraction=0)
    assert result.mapping == {"messages": "messages"} and result.version.rows_train == 6
    assert checks_by_name(result.report)[("not a usable chat", "rejected")]["rows"] == [7]
    preview = result.prepared.previews[0]
    trained = "".join(p["text"] for p in preview["pieces"] if p["trained"])
    assert trained == "Then step 0.<|im_end|>\n"  # the final answer: earlier turns are context, as in training
    assert "Hello 0!" in preview["text"]


def test_preview_marks_exactly_the_answer_tokens(ws):
    from studio.data.templates import apply_template
    from studio.models.resolve import load_tokenizer

    inspection = inspect_file(SAMPLES / "support_faq.csv")
    prepared = prepare(ws, inspection.table, inspection.guess.mapping, system_prompt="Be kind.")
    preview = prepared.previews[0]
    answer = inspection.table.frame["answer"][0]
    trained = "".join(p["text"] for p in preview["pieces"] if p["trained"])
    assert trained == answer + "<|im_end|>\n"
    assert "".join(p["text"] for p in preview["pieces"]) == preview["text"]
    tokenizer = apply_template(load_tokenizer(ws, "demo-tiny"), "model")
    question = inspection.table.frame["question"][0]
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]
    ids = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    assert preview["tokens"] == len(ids)
    prompt = tokenizer.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)
    assert preview["trained_tokens"] == len(ids) - len(prompt["input_ids"])


def test_fallback_templates_and_apply_template(ws):
    from studio.data.templates import FALLBACK_TEMPLATES, apply_template, default_template
    from studio.models.resolve import load_tokenizer

    tokenizer = load_tokenizer(ws, "demo-tiny")
    assert default_template(tokenizer) == "model"
    result = import_file(ws, SAMPLES / "clinical_notes.csv", template="alpaca")
    assert result.mapping == {"instruction": "instruction", "input": "context", "output": "response"}
    text = result.prepared.previews[0]["text"]
    assert "### Instruction:\nWrite a one-line triage summary.\n\n58-year-old man" in text
    assert text.rstrip().endswith("physician.<|im_end|>")
    apply_template(tokenizer, result.version.template)
    assert tokenizer.chat_template == FALLBACK_TEMPLATES["alpaca"]
    assert preview_version(ws, result.version.id, rows=1)[0]["text"].startswith("Below is an instruction")
    tokenizer.chat_template = None
    assert default_template(tokenizer) == "chatml"
    with pytest.raises(InvalidInput, match="no chat template of its own"):
        apply_template(tokenizer, "model")
    with pytest.raises(InvalidInput, match="not a chat template"):
        apply_template(tokenizer, "vicuna")


def test_unreachable_hub_model_says_so(ws, monkeypatch):
    import huggingface_hub.constants

    from studio.core.errors import ModelUnavailable

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no waiting on a network that is not there
    with pytest.raises(ModelUnavailable, match="not downloaded yet|cannot be reached|no model called"):
        import_file(ws, SAMPLES / "support_faq.csv", base_model="example-org/not-a-real-model-xyz")
    assert store.list_versions(ws) == []


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"\x00\x01\x02\x03" * 500, "binary"),
    (b'[{"question": "a", "answer": ', "not valid JSON"),
    (b"question,answer\n,\n ,  \n", "no rows of data"),
    (b"question,answer\n,only an answer\nonly a question,\n", "No training rows are left after the checks"),
    (b"question,answer\nq," + b'"' + b"z" * 150_000 + b'"\n', "a cell may hold at most"),
])
def test_bad_files_leave_the_registry_unchanged(ws, tmp_path, content, message):
    import_file(ws, SAMPLES / "support_faq.csv")
    before = registry(ws)
    suffix = ".json" if content.startswith(b"[") else ".csv"
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=message) as info:
        import_file(ws, path)
    assert info.value.fix
    assert registry(ws) == before


def test_oversized_file_leaves_the_registry_unchanged(ws, tmp_path):
    before = registry(ws)
    with pytest.raises(InvalidInput, match="over the upload limit"):
        import_file(ws, write_csv(tmp_path / "big.csv", good_rows(50)), max_bytes=1000)
    assert registry(ws) == before


def test_zero_rows_after_checks_keeps_the_report_for_the_ui(ws, tmp_path):
    inspection = inspect_file(write_csv(tmp_path / "empty_answers.csv", [["q1", ""], ["q2", " "]]))
    prepared = prepare(ws, inspection.table, {"instruction": "question", "output": "answer"})
    assert not prepared.usable and len(prepared.rejected) == 2
    with pytest.raises(InvalidInput, match=r"No training rows .*2 empty answer"):
        save(ws, prepared)
    assert store.list_versions(ws) == []


def test_versions_rename_and_delete_refused_while_a_run_uses_it(ws):
    version = import_file(ws, SAMPLES / "support_faq.csv").version
    assert store.rename_version(ws, version.id, "FAQ v1").name == "FAQ v1"
    with ws.db() as db:
        db["runs"].insert({"id": "run-1", "dataset_id": version.id, "status": "succeeded",
                           "created_at": "2026-01-01T00:00:00+00:00", "path": str(ws.runs_dir / "run-1")})
    with pytest.raises(Conflict, match="used by 1 run"):
        store.delete_version(ws, version.id)
    assert Path(version.path).exists() and store.get_version(ws, version.id)
    with ws.db() as db:
        db["runs"].delete("run-1")
    store.delete_version(ws, version.id)
    assert not Path(version.path).exists() and store.list_versions(ws) == []


def test_fast_rendering_counts_exactly_what_the_template_gives(ws):
    """The Arrow fill-in of template literals must agree with Jinja, token for token, on every row; a template
    whose output depends on the content (here: upper-casing) falls back to Jinja row by row."""
    import pyarrow as pa

    from studio.data.mapping import build_conversations
    from studio.data.render import count_tokens
    from studio.data.templates import apply_template
    from studio.models.resolve import load_tokenizer

    inspection = inspect_file(SAMPLES / "clinical_notes.csv")
    conv = build_conversations(inspection.table, inspection.guess.mapping, "Be precise.")
    chats = conv.messages.to_pylist()
    upper = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | upper }}</s>{% endfor %}" \
            "{% if add_generation_prompt %}<assistant>{% endif %}"
    for template in ("model", "alpaca", upper):
        tokenizer = load_tokenizer(ws, "demo-tiny")
        if template == upper:
            tokenizer.chat_template = upper
        else:
            apply_template(tokenizer, template)
        counts = count_tokens(tokenizer, conv)
        assert (counts.linear_shapes, counts.jinja_shapes) == ((0, 1) if template == upper else (1, 0))
        for i, chat in enumerate(chats):
            full = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
            prompt = tokenizer.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True,
                                                   return_dict=True)["input_ids"]
            assert counts.tokens[i] == len(full), (template, i)
            assert counts.prompt_tokens[i] == len(prompt), (template, i)
    assert isinstance(conv.messages, pa.ListArray)


def test_a_csv_read_in_many_blocks_gives_the_same_version(ws, tmp_path, monkeypatch):
    from studio.data.readers import delimited

    path = write_csv(tmp_path / "many.csv", good_rows(300))
    one = prepare(ws, inspect_file(path).table, {"instruction": "question", "output": "answer"})
    monkeypatch.setattr(delimited, "CSV_BLOCK_BYTES", 4096)  # several blocks: Arrow hands back chunked columns
    table = inspect_file(path).table
    many = prepare(ws, table, {"instruction": "question", "output": "answer"})
    assert many.content_hash == one.content_hash and many.report["rows_train"] == one.report["rows_train"] == 270


def test_split_is_seeded_sized_and_keeps_a_question_on_one_side():
    import pyarrow as pa

    from studio.data.checks import normalise, split_rows

    keys = normalise(pa.array([f"question {i // 3}" for i in range(60)]))  # 20 questions, 3 rows each
    is_val = split_rows(keys, val_fraction=0.2, val_size=None, seed=1)
    assert is_val.sum() == 12 and (split_rows(keys, val_fraction=0.2, val_size=None, seed=1) == is_val).all()
    for i in range(0, 60, 3):
        assert len(set(is_val[i:i + 3])) == 1  # all three rows of a question on the same side
    assert split_rows(keys, val_fraction=0.5, val_size=6, seed=1).sum() == 6
    assert split_rows(keys, val_fraction=0.0, val_size=None, seed=1).sum() == 0
    assert not (split_rows(keys, val_fraction=0.2, val_size=None, seed=2) == is_val).all()


def test_a_template_that_refuses_the_system_role_says_what_to_do(ws):
    from studio.data.render import render

    tokenizer = load_demo_tokenizer(ws)
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                               "supported') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(InvalidInput, match="refused a conversation.*System role not supported.*Remove the system"):
        render(tokenizer, [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])


def load_demo_tokenizer(ws):
    from studio.models.resolve import load_tokenizer

    return load_tokenizer(ws, "demo-tiny")


def test_save_version_writes_only_the_selected_rows(ws):
    import datasets

    rows = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]} for i in range(4)])
    version, created = store.save_version(ws, content_hash="f" * 64, name="picked", train=rows.select([3, 1]),
                                          val=rows.select([]))
    assert created and (version.rows_train, version.rows_val) == (2, 0)
    assert [r["messages"][0]["content"] for r in store.load_split(ws, version.id, "train")] == ["q3", "q1"]
    assert len(store.load_split(ws, version.id, "val")) == 0
