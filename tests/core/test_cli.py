import pytest

from foldwise.core.cli import run_stage
from foldwise.core.errors import UnknownName
from foldwise.core.params import ParamsError


def test_user_errors_become_one_line(capsys, monkeypatch):
    monkeypatch.delenv("FOLDWISE_DEBUG", raising=False)

    def bad():
        raise ParamsError("params.yaml: lr: expected a number, got 'fast'")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(bad)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: params.yaml: lr: expected a number, got 'fast'\n"

    def unknown():  # a registry's unknown name: a KeyError too, printed without KeyError's quotes
        raise UnknownName("unknown model 'x'; valid: softmax")

    with pytest.raises(SystemExit):
        run_stage(unknown)
    assert capsys.readouterr().err == "error: unknown model 'x'; valid: softmax\n"


def test_a_missing_dict_key_is_a_bug_and_keeps_its_traceback(monkeypatch):
    """A KeyError from code (not a registry's message) is not the user's fault: it must not be hidden."""
    monkeypatch.delenv("FOLDWISE_DEBUG", raising=False)
    with pytest.raises(KeyError, match="valid_loss"):
        run_stage(lambda: {}["valid_loss"])


def test_bugs_and_debug_mode_keep_the_traceback(monkeypatch):
    def bug():
        raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError):
        run_stage(bug)
    monkeypatch.setenv("FOLDWISE_DEBUG", "1")
    with pytest.raises(ValueError):
        run_stage(lambda: (_ for _ in ()).throw(ValueError("bad")))


def test_locked_md5_names_dvcs_copy_of_an_output(tmp_path, monkeypatch):
    from foldwise.core.cli import locked_md5

    monkeypatch.chdir(tmp_path)
    assert locked_md5("models/model.pt") == ""  # no dvc.lock
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    cmd: x\n    outs:\n"
                                       "    - path: models/model.pt\n      md5: 0123abcd\n      size: 3\n")
    assert locked_md5("models/model.pt") == "0123abcd" and locked_md5("models/other.pt") == ""
    (tmp_path / "dvc.lock").write_text(": not yaml [")
    assert locked_md5("models/model.pt") == ""
