"""The one JSON reader: a missing, unreadable or malformed file is one line naming it."""

import pytest

from sasan.atomic import read_json
from sasan.errors import DataError
from sasan.tracking.client import TrackingError


def test_reads_a_document(tmp_path):
    (tmp_path / "a.json").write_text('{"x": [1, 2]}')
    assert read_json(tmp_path / "a.json", missing="-") == {"x": [1, 2]}


@pytest.mark.parametrize("make, needle", [
    (lambda p: None, "run `sasan ingest` first"),                        # missing
    (lambda p: p.mkdir(), "not valid JSON: Is a directory"),             # a folder
    (lambda p: p.write_bytes(b"\x1f\x8b\x08\x00\xff"), "not valid JSON: 'utf-8' codec"),   # binary
    (lambda p: p.write_text('{"x": '), "not valid JSON: Expecting value"),                 # truncated
])
def test_every_failure_is_one_line_naming_the_file(tmp_path, make, needle):
    path = tmp_path / "manifest.json"
    make(path)
    with pytest.raises(DataError) as err:
        read_json(path, missing="manifest.json not found: run `sasan ingest` first")
    text = str(err.value)
    assert text.startswith(f"{path}: ") and needle in text and "\n" not in text


def test_the_error_class_and_wording_are_the_callers(tmp_path):
    (tmp_path / "ref.json").write_text("[")
    with pytest.raises(TrackingError, match="ref.json: run reference is not valid JSON"):
        read_json(tmp_path / "ref.json", missing="-", invalid="run reference is not valid JSON", error=TrackingError)
