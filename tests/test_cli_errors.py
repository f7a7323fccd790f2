"""Bad input ends in one line on stderr naming the file and the problem, a non-zero exit, no
traceback and nothing half-written: outputs that cannot be written, unreadable or binary
configuration files, overrides that do not fit, pipeline submissions with bad files."""

import errno
import os

import pytest

from sasan.cli import main
from sasan.cli import pipeline_cmds

IMAGE = "registry.example.com/sasan:0123456789ab"
BINARY = b"\x1f\x8b\x08\x00\xff\xfe\x00\x80 not yaml"  # gzip magic: what a .nii.gz starts with


def one_line(capsys) -> str:
    r"""The only line on stderr (asserting there is exactly one, and no traceback). A progress
    bar the stage drew before failing (tqdm, ``\r``-rewritten and cleared) is not a line: what
    a terminal shows is the text after the last ``\r``."""
    err = capsys.readouterr().err
    lines = err.split("\n")
    assert len(lines) == 2 and lines[1] == "", err
    assert "Traceback" not in err
    return lines[0].rsplit("\r", 1)[-1]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A tiny canonical raw data set (3 phantom cases per domain, 16^3)."""
    root = tmp_path_factory.mktemp("data")
    assert main(["data", "phantom", str(root / "ph"), "--cases", "3", "--size", "16"]) == 0
    assert main(["ingest", str(root / "ph"), str(root / "raw")]) == 0
    return root / "raw"


@pytest.fixture
def afile(tmp_path, monkeypatch):
    """A plain file where the outputs below expect a folder; the working directory (no
    params.yaml: built-in defaults) is its folder."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "afile"
    path.write_text("")
    return path


def _listing(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize("command", [
    ["data", "phantom", "{afile}/ph", "--cases", "2", "--size", "16"],
    ["ingest", "{raw}/../ph", "{afile}/raw"],
    ["validate", "{raw}", "--report", "{afile}/val"],
    ["preprocess", "{raw}", "{afile}"],
    ["pipeline", "compile", "{afile}/p.yaml", "--image", IMAGE],
])
def test_an_output_that_cannot_be_written_is_one_line(command, raw, afile, capsys):
    argv = [a.format(afile=afile, raw=raw) for a in command]
    before = _listing(afile.parent)
    capsys.readouterr()
    assert main(argv) == 1
    line = one_line(capsys)
    assert line.startswith(f"sasan {command[0]}: error: {afile}")
    assert line.endswith((os.strerror(errno.EEXIST), os.strerror(errno.ENOTDIR))), line
    assert _listing(afile.parent) == before            # nothing half-written next to it


def test_verbose_keeps_the_traceback(raw, afile):
    with pytest.raises(FileExistsError):
        main(["-v", "ingest", str(raw.parent / "ph"), str(afile / "raw")])


def test_an_os_error_that_names_no_file_keeps_its_traceback(monkeypatch):
    # a lost connection or a full disk mid-write says nothing of where: the traceback does
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline_cmds, "_compile", full)
    with pytest.raises(OSError, match="No space left"):
        main(["pipeline", "compile", "out.yaml", "--image", IMAGE])
    from sasan.cli import describe_os_error

    assert describe_os_error(OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b")) \
        == "a -> b: Invalid cross-device link"


def test_a_folder_or_a_binary_file_as_params_is_a_config_error(raw, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    binary = tmp_path / "image.nii.gz"
    binary.write_bytes(BINARY)
    for params, reason in ((raw, "Is a directory"), (binary, "not a text (YAML) file")):
        assert main(["preprocess", str(raw), str(tmp_path / "out"), "--params", str(params)]) == 2
        line = one_line(capsys)
        assert line.startswith(f"sasan preprocess: error: {params}: ") and reason in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sets, key", [
    (["preprocess.bounds={mr: [1"], "preprocess.bounds"),
    (["preprocess.image_size=64", "preprocess.image_size.x=4"], "preprocess.image_size.x"),
    (["preprocess=4", "preprocess.axis=1"], "preprocess.axis"),
    (["preprocess.target_spacing=[0, 1, 1]"], "preprocess.target_spacing"),
    (["preprocess.clip_percentiles=[-1, 101]"], "preprocess.clip_percentiles"),
])
def test_overrides_that_do_not_fit_are_config_errors(sets, key, raw, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["preprocess", str(raw), str(tmp_path / "out")]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 2
    line = one_line(capsys)
    assert line.startswith("sasan preprocess: error: ") and key in line, line
    assert not (tmp_path / "out").exists()


class NoServer:
    """kfp.Client stand-in: a test that reaches it has contacted the server."""

    def __init__(self, *a, **k):
        raise AssertionError("the Kubeflow server was contacted")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    assert main(["pipeline", "compile", str(out), "--image", IMAGE]) == 0
    return out


def test_submit_with_a_binary_package_or_params_file_is_one_line(package, tmp_path, monkeypatch, capsys):
    import kfp

    monkeypatch.setattr(kfp, "Client", NoServer)
    binary = tmp_path / "image.nii.gz"
    binary.write_bytes(BINARY)
    submit = ["pipeline", "submit", "--host", "http://h"]
    for argv in ([*submit, "--package", str(binary)], [*submit, "--package", str(package), "--params-file", str(binary)]):
        capsys.readouterr()
        assert main(argv) == 2
        assert one_line(capsys).startswith(f"sasan pipeline: error: {binary}: ")


def test_submit_refuses_a_params_file_the_stages_would_refuse(package, tmp_path, monkeypatch, capsys):
    import kfp

    monkeypatch.setattr(kfp, "Client", NoServer)
    profile = tmp_path / "profile.yaml"
    submit = ["pipeline", "submit", "--host", "http://h", "--package", str(package), "--params-file", str(profile)]
    profile.write_text("model:\n  kk: 3\n")                       # unknown key
    capsys.readouterr()
    assert main(submit) == 2
    line = one_line(capsys)
    assert line == f"sasan pipeline: error: {profile}: model.kk: unknown setting; did you mean model.k?", line
    # the run's overrides and parameters are resolved with it, as the configure step does
    profile.write_text("model:\n  k: 3\n")
    assert main([*submit, "--param", "overrides={model.kk: 1}"]) == 2
    assert "model.kk" in one_line(capsys)
    assert main([*submit, "--param", "layout=bogus"]) == 2
    assert "ingest.layout" in one_line(capsys)
