"""`studio data`: import (guessed or --map), list, show, rename, rm — the same core as the Data tab."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from studio.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_import_in_a_real_process_prints_the_guess_report_and_preview(ws):
    out = subprocess.run([sys.executable, "-m", "studio", "data", "import", str(SAMPLES / "support_faq.csv"),
                          "--system", "You are the support agent of Acme."], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Columns: instruction='question', output='answer' (guessed from the column names)" in out.stdout
    assert "45 training and 5 validation rows kept of 50 read" in out.stdout
    assert "⟦Open the sign-in page" in out.stdout and "Saved dataset version ds-" in out.stdout


def test_unconfident_guess_stops_and_lists_the_columns(ws, tmp_path, capsys):
    path = tmp_path / "odd.csv"
    path.write_text("Spalte A,Spalte B\nWie geht's?,Gut.\n", encoding="utf-8")
    code, out, err = run(capsys, "data", "import", str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "'Spalte A', 'Spalte B'" in err and "--map" in err
    code, out, _ = run(capsys, "data", "import", str(path), "--map", "instruction=Spalte A", "--map", "output=Spalte B",
                       "--val", "0", "--json")
    data = json.loads(out)
    assert code == 0 and data["created"] and data["mapping"] == {"instruction": "Spalte A", "output": "Spalte B"}
    code, _, err = run(capsys, "data", "import", str(path), "--map", "output")
    assert code == 2 and "not ROLE=COLUMN" in err
    wordy = tmp_path / "wordy.csv"
    wordy.write_text("What the customer wrote in the ticket form,What our agent replied to the customer\n"
                     "Where is my parcel?,On its way.\nCan I pay later?,Yes.\n", encoding="utf-8")
    code, out, _ = run(capsys, "data", "import", str(wordy), "--dry-run", "--val", "0", "--json", "--header",
                       "--map", "instruction=What the customer wrote in the ticket form",
                       "--map", "output=What our agent replied to the customer")
    assert code == 0 and json.loads(out)["report"]["rows_train"] == 2


def test_list_show_rename_rm_and_dry_run(ws, capsys):
    code, out, _ = run(capsys, "data", "import", str(SAMPLES / "clinical_notes.csv"), "--dry-run", "--max-length",
                       "150", "--truncate")
    assert code == 0 and "Dry run: nothing was saved." in out and "[truncated] too long" in out
    code, out, _ = run(capsys, "data", "list")
    assert "No dataset versions yet" in out
    code, out, _ = run(capsys, "data", "import", str(SAMPLES / "clinical_notes.csv"), "--template", "alpaca",
                       "--json")
    version = json.loads(out)["version"]
    code, out, _ = run(capsys, "data", "list", "--json")
    assert [v["id"] for v in json.loads(out)] == [version["id"]]
    code, out, _ = run(capsys, "data", "show", version["id"], "--rows", "1")
    assert code == 0 and "### Response:\n⟦" in out and "instruction='instruction'" in out
    code, out, _ = run(capsys, "data", "rename", version["id"], "Triage v1")
    assert "is now called 'Triage v1'" in out
    code, out, _ = run(capsys, "data", "rm", version["id"])
    assert code == 0 and not Path(version["path"]).exists()
    code, _, err = run(capsys, "data", "show", version["id"])
    assert code == 2 and "There is no dataset version" in err
