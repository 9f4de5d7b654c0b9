"""The measured tables in docs/collapse.md are generated from committed JSON: each committed table must
equal what its generator writes, so a number edited by hand fails."""
import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


collapse_tables = _load("docs/collapse_tables.py")


def test_committed_collapse_tables_are_generated():
    diffs = collapse_tables.check()
    assert not diffs, "regenerate with `python docs/collapse_tables.py`:\n" + "".join(diffs)


def _first_number_row(text: str, begin: str) -> str:
    table = text[text.index(begin):]
    return next(line for line in table.splitlines() if line.startswith("| ") and any(c.isdigit() for c in line)
                and "---" not in line and not line.startswith("| what") and not line.startswith("| variant"))


def test_a_number_edited_by_hand_is_caught(tmp_path):
    doc = tmp_path / "collapse.md"
    shutil.copy(collapse_tables.DOC, doc)
    row = _first_number_row(doc.read_text(), collapse_tables.begin("default"))
    doc.write_text(doc.read_text().replace(row, row.replace("0.", "1.", 1)))
    assert collapse_tables.check(collapse_tables.RESULTS, doc)
