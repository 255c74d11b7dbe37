"""Column mapping: safe guesses (exact, then whole words, then typos), validation, rows to chats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from studio.core.errors import InvalidInput
from studio.data.mapping import build_conversations, check_mapping, guess_mapping, too_few_columns
from studio.data.table import SourceTable


def table(columns, rows=None, object_columns=()):
    rows = rows or [[f"{c} text number {i}" for c in columns] for i in range(3)]
    frame = pd.DataFrame({c: pd.Series([r[i] for r in rows], dtype=object if c in object_columns else "str")
                          for i, c in enumerate(columns)})
    return SourceTable(frame=frame, rows=np.arange(2, 2 + len(rows)), name="t.csv", format="csv")


@pytest.mark.parametrize("columns,expected", [
    (["question", "answer"], {"instruction": "question", "output": "answer"}),
    (["Instruction", "Input", "Output"], {"instruction": "Instruction", "input": "Input", "output": "Output"}),
    (["prompt", "completion", "system_prompt"], {"instruction": "prompt", "output": "completion",
                                                  "system": "system_prompt"}),
    (["input", "output"], {"instruction": "input", "output": "output"}),
    (["Customer Question", "agentAnswer"], {"instruction": "Customer Question", "output": "agentAnswer"}),
    (["answer_short", "answer", "question"], {"instruction": "question", "output": "answer"}),
    # experts export in their own language; accented names are whole words
    (["Frage", "Antwort"], {"instruction": "Frage", "output": "Antwort"}),
    (["Pregunta", "Contexto", "Respuesta"], {"instruction": "Pregunta", "input": "Contexto", "output": "Respuesta"}),
    (["Question", "Réponse"], {"instruction": "Question", "output": "Réponse"}),
    (["Domanda del cliente", "Risposta"], {"instruction": "Domanda del cliente", "output": "Risposta"}),
])
def test_confident_guesses(columns, expected):
    guess = guess_mapping(table(columns))
    assert guess.mapping == expected and guess.confident, guess.notes


def test_context_is_not_text():
    """The trap: a substring match would take 'context' for 'text'. Whole words only."""
    guess = guess_mapping(table(["context", "text", "response"]))
    assert guess.mapping == {"instruction": "text", "input": "context", "output": "response"}
    only_context = guess_mapping(table(["context", "answer"]))
    assert only_context.mapping == {"instruction": "context", "output": "answer"}
    assert guess_mapping(table(["contextual", "answer"])).mapping == {"output": "answer"}


def test_id_and_number_columns_are_not_questions():
    columns = ["question_id", "question", "answer"]
    rows = [[str(i), f"Question {i} about things?", f"Answer {i}."] for i in range(3)]
    assert guess_mapping(table(columns, rows)).mapping == {"instruction": "question", "output": "answer"}
    numeric = [["1", "Fine answer."], ["2", "Other answer."]]
    guess = guess_mapping(table(["question", "answer"], numeric))
    assert "instruction" not in guess.mapping and not guess.confident
    # an answer may be a number, under its exact name: a dose, an amount, a year
    doses = [["Adult dose of drug X in mg?", "500"], ["Maximum per day in g?", "4"]]
    assert guess_mapping(table(["question", "answer"], doses)).mapping == {"instruction": "question",
                                                                           "output": "answer"}
    assert "output" not in guess_mapping(table(["question", "answer_no"], doses)).mapping
    assert "output" not in guess_mapping(table(["question", "answer"], [["Why?", ""], ["How?", " "]])).mapping


def test_typos_are_guessed_but_not_confident():
    guess = guess_mapping(table(["quesiton", "respone"]))
    assert guess.mapping == {"instruction": "quesiton", "output": "respone"}
    assert not guess.confident and any("spelled like" in n for n in guess.notes)


def test_no_guess_and_ties_are_not_confident():
    assert not guess_mapping(table(["foo", "bar"])).confident
    tie = guess_mapping(table(["agent answer", "bot answer", "question"]))
    assert not tie.confident and any("matched as well" in n for n in tie.notes)


def test_messages_column_is_found_by_content():
    chat = '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]'
    guess = guess_mapping(table(["dialog_json", "lang"], [[chat, "en"], [chat, "en"]]))
    assert guess.mapping == {"messages": "dialog_json"} and guess.confident


def test_check_mapping_refuses_bad_choices():
    t = table(["q", "a", "ctx"])
    with pytest.raises(InvalidInput, match="no column 'nope'.*'q', 'a', 'ctx'"):
        check_mapping(t, {"instruction": "nope", "output": "a"})
    with pytest.raises(InvalidInput, match="mapped to instruction and output"):
        check_mapping(t, {"instruction": "q", "output": "q"})
    with pytest.raises(InvalidInput, match="No column is chosen for the output"):
        check_mapping(t, {"instruction": "q", "input": "ctx"})
    with pytest.raises(InvalidInput, match="not a column role"):
        check_mapping(t, {"question": "q", "output": "a"})
    assert check_mapping(t, {"instruction": "q", "output": "a", "input": None}) == {"instruction": "q", "output": "a"}


def test_one_column_is_refused_with_the_reason_unless_it_holds_chats():
    one = table(["question"])
    guess = guess_mapping(one)
    assert not any("choose it by hand" in n for n in guess.notes)  # there is nothing to choose
    problem = too_few_columns(one)
    assert problem.message == ("'t.csv' has only one column ('question'); a dataset needs a question column "
                               "and an answer column.") and "second column" in problem.fix
    for mapping in ({"instruction": "question"}, {"instruction": "question", "output": "question"}, {}):
        with pytest.raises(InvalidInput, match="only one column"):
            check_mapping(one, mapping)
    chat = '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]'
    chats = table(["messages"], [[chat], [chat]])
    assert too_few_columns(chats) is None and check_mapping(chats, {"messages": "messages"})
    assert too_few_columns(table(["q", "a"])) is None


def test_columns_become_chats_with_context_and_system():
    t = table(["instruction", "input", "output", "system"], [
        ["Summarise.", "A long note.", "Short.", ""],
        ["  Translate hi  ", "", "Bonjour", "You translate."],
    ])
    conv = build_conversations(t, {"instruction": "instruction", "input": "input", "output": "output",
                                   "system": "system"}, system_prompt="Be brief.")
    assert conv.messages.to_pylist() == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Summarise.\n\nA long note."},
         {"role": "assistant", "content": "Short."}],
        [{"role": "system", "content": "You translate."}, {"role": "user", "content": "Translate hi"},
         {"role": "assistant", "content": "Bonjour"}],
    ]
    plain = build_conversations(t, {"instruction": "instruction", "output": "output"}, None)
    assert [len(m) for m in plain.messages.to_pylist()] == [2, 2]


def test_messages_rows_are_validated_one_by_one():
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    sharegpt = [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]
    rows = [[good], [sharegpt], [[{"role": "user", "content": "no answer"}]],
            [[{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]],
            [[{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]]]
    t = table(["messages"], rows, object_columns=("messages",))
    conv = build_conversations(t, {"messages": "messages"}, "Sys.")
    assert conv.messages.to_pylist()[1] == [{"role": "system", "content": "Sys."}, {"role": "user", "content": "a"},
                                            {"role": "assistant", "content": "b"}]
    reasons = dict(conv.invalid)
    assert set(reasons) == {2, 3, 4}
    assert "does not end with an assistant" in reasons[2] and "role 'tool'" in reasons[3]
    assert "expected the user" in reasons[4]


def test_a_list_column_mapped_as_text_uses_its_json():
    t = table(["tags", "answer"], [[["billing", "refund"], "Refunds take a week."]], object_columns=("tags",))
    conv = build_conversations(t, {"instruction": "tags", "output": "answer"}, None)
    assert conv.messages.to_pylist()[0][0] == {"role": "user", "content": '["billing", "refund"]'}
