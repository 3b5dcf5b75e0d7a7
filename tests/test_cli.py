import pytest

from foldwise.cli import run_stage
from foldwise.params import ParamsError


def test_user_errors_become_one_line(capsys, monkeypatch):
    monkeypatch.delenv("FOLDWISE_DEBUG", raising=False)

    def bad():
        raise ParamsError("params.yaml: lr: expected a number, got 'fast'")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(bad)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: params.yaml: lr: expected a number, got 'fast'\n"

    def unknown():
        raise KeyError("unknown model 'x'; valid: softmax")

    with pytest.raises(SystemExit):
        run_stage(unknown)
    assert capsys.readouterr().err == "error: unknown model 'x'; valid: softmax\n"


def test_bugs_and_debug_mode_keep_the_traceback(monkeypatch):
    def bug():
        raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError):
        run_stage(bug)
    monkeypatch.setenv("FOLDWISE_DEBUG", "1")
    with pytest.raises(ValueError):
        run_stage(lambda: (_ for _ in ()).throw(ValueError("bad")))
