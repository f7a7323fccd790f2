"""Safe archive extraction: good archives unpack, hostile or broken ones are refused."""

import io
import tarfile
import zipfile

import pytest

from sasan.data.archive import extract_archive, is_archive
from sasan.errors import DataError


def _tar(path, members, mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_is_archive():
    assert is_archive("a.tar.gz") and is_archive("B.ZIP") and is_archive("x.tgz")
    assert not is_archive("a.nii.gz") and not is_archive("folder")


def test_zip_with_single_top_folder_returns_that_folder(tmp_path):
    arc = tmp_path / "d.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("data/mr/dataset.json", "{}")
        zf.writestr("data/mr/imagesTr/a_0000.nii.gz", b"x")
    root = extract_archive(arc, tmp_path / "out")
    assert root == tmp_path / "out/data"
    assert (root / "mr/imagesTr/a_0000.nii.gz").read_bytes() == b"x"


def test_tar_gz_with_several_top_entries_returns_target(tmp_path):
    arc = _tar(tmp_path / "d.tar.gz", [("mr/a.txt", b"1"), ("ct/b.txt", b"2")])
    root = extract_archive(arc, tmp_path / "out")
    assert root == tmp_path / "out"
    assert (root / "ct/b.txt").read_text() == "2"


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"])
def test_tar_member_escaping_target_is_rejected(tmp_path, name):
    arc = _tar(tmp_path / "evil.tar.gz", [("fine.txt", b"1"), (name, b"pwned")])
    with pytest.raises(DataError) as err:
        extract_archive(arc, tmp_path / "sub/out")
    assert "escape" in str(err.value) and "evil.tar.gz" in str(err.value)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "sub/escape.txt").exists()
    assert not (tmp_path / "sub/out").exists()  # nothing half-extracted


def test_zip_member_escaping_target_is_rejected(tmp_path):
    arc = tmp_path / "evil.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("good.txt", "1")
        zf.writestr("../../escape.txt", "pwned")
    with pytest.raises(DataError, match="escape"):
        extract_archive(arc, tmp_path / "a/out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "a/out/good.txt").exists()


def test_tar_symlink_is_rejected(tmp_path):
    arc = tmp_path / "link.tar"
    with tarfile.open(arc, "w") as tf:
        info = tarfile.TarInfo("data/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="link"):
        extract_archive(arc, tmp_path / "out")


def test_corrupt_and_truncated_archives(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match="bad.zip"):
        extract_archive(bad, tmp_path / "o1")
    good = _tar(tmp_path / "t.tar.gz", [("a.bin", bytes(range(256)) * 400)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="cut.tar.gz"):
        extract_archive(cut, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()
