"""Share outputs through a DVC remote: ``foldwise pull`` restores what a teammate computed,
``foldwise push`` shares what this machine computed (docs/sharing.md).

Both are DVC's own ``pull`` / ``push`` with the run-cache, plus what DVC 3 leaves out:

- DVC's ``push --run-cache`` sends the run records but not the objects they name (DVC 2 sent both:
  ``Repo.used_objs(used_run_cache=...)`` still exists, but ``push`` no longer passes it). Without
  them a teammate's ``dvc exp run -S lr=...`` of a run this machine made finds the record and still
  trains, since the record's metrics (``cache: false``, committed to git) are nowhere to restore
  from. ``push`` sends the objects of every run record; ``pull`` fetches them.
- DVC trusts what it downloads: a damaged object in the remote is checked out as if it were good and
  ``dvc status`` calls it up to date. ``pull`` re-hashes every object it brought (md5, as DVC names
  them); a damaged one is deleted here with the output made from it, so ``dvc repro`` recomputes it.
- An upload over SSH writes the object in place, so a push killed mid-file leaves a truncated object
  that a re-run skips (it exists). ``push`` first deletes remote objects whose size differs from
  the local copy, so a re-run completes.

Every failure is one line naming the remote and the fix; the workspace is never left worse off.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foldwise.core.errors import UserError

DOCS = "docs/sharing.md"


class RemoteError(UserError):
    """A remote that cannot be used as asked: the message names it and says what to do."""


@dataclass
class PullReport:
    """What ``pull`` did: the stages it restored and those ``dvc repro`` must still run."""

    remote: str
    restored: list[str] = field(default_factory=list)
    to_run: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # outputs removed because their object was damaged
    missing: list[str] = field(default_factory=list)  # outputs with no usable copy, here or there
    problem: str = ""  # why part of the pull failed ('' when it all came)

    def lines(self) -> list[str]:
        out = [f"restored from remote '{self.remote}': {', '.join(self.restored) or 'nothing'}",
               f"to run here: {', '.join(self.to_run) or 'nothing'}"]
        if self.missing:
            out.append(f"remote '{self.remote}' has no usable copy of {', '.join(self.missing)}: made here instead "
                       f"(share it from the machine that has it: make push)")
        for path in self.damaged:
            out.append(f"remote '{self.remote}' holds a damaged copy of {path}: removed here, its stage runs again "
                       f"(on the remote, delete that object and push a good copy: {DOCS})")
        if self.problem:
            out.append(self.problem)
        return out


def _repo(root: str | Path = "."):
    from dvc.repo import Repo

    return Repo(str(root))


def remote_name(repo, name: str | None = None) -> str | None:
    """``name`` if that remote exists, else the default remote's name, None when there is none.

    An unknown ``name`` is an error listing the configured ones."""
    remotes = dict(repo.config.get("remote", {}))
    if name:
        if name not in remotes:
            known = f"configured: {', '.join(sorted(remotes))}" if remotes else "none is configured"
            raise RemoteError(f"no DVC remote named '{name}' ({known}); add one: "
                              f"dvc remote add {name} URL ({DOCS})")
        return name
    return repo.config.get("core", {}).get("remote") or None


def describe(repo, name: str) -> str:
    """``'team' (ssh://host/path)``: how a message names a remote."""
    url = repo.config.get("remote", {}).get(name, {}).get("url", "")
    return f"'{name}' ({url})" if url else f"'{name}'"


def explain(repo, name: str, exc: BaseException) -> str:
    """One line for a remote that failed: what went wrong and the fix, naming the remote."""
    text = f"{type(exc).__name__}: {exc}"
    causes = [exc]
    while causes[-1].__cause__ is not None or causes[-1].__context__ is not None:
        nxt = causes[-1].__cause__ or causes[-1].__context__
        if nxt in causes:
            break
        causes.append(nxt)
    kinds = {type(c).__name__ for c in causes}
    words = " ".join(str(c) for c in causes).lower()
    where = describe(repo, name)
    if "PermissionDenied" in kinds or "permission denied" in words or "authentication" in words:
        return (f"remote {where} refused the login: set your key or user with "
                f"`dvc remote modify --local {name} keyfile PATH` / `user NAME` (kept out of git; {DOCS})")
    if kinds & {"ConnectionRefusedError", "TimeoutError", "gaierror", "ConnectionResetError",
                "ConnectionLost", "DisconnectError"} or "connect call failed" in words \
            or "name or service not known" in words or "timed out" in words:
        return (f"cannot reach remote {where}: is the server up and the address right? "
                f"(`dvc remote modify {name} url URL`; {DOCS})")
    if "FileNotFoundError" in kinds or "no such file" in words:
        return (f"remote {where} has no such folder: create it or fix its url "
                f"(`dvc remote modify {name} url URL`; {DOCS})")
    return f"remote {where} failed: {text.splitlines()[0] if text else type(exc).__name__} ({DOCS})"


def _changed_stages(repo) -> list[str]:
    """The pipeline's stages that ``dvc repro`` would run, in pipeline order."""
    changed = set(repo.status())
    return [s.addressing for s in repo.index.stages if s.addressing in changed]


def _local_objects(repo) -> set[str]:
    """Paths of the objects in the local cache (``.dvc/cache/files/md5/ab/cdef...``)."""
    root = Path(repo.cache.local.path)
    if not root.is_dir():
        return set()
    return {str(p) for p in root.glob("*/*") if p.is_file() and not p.name.endswith(".tmp")}


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes, the name DVC 3 gives its object."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damaged_objects(paths: Iterable[str]) -> dict[str, str]:
    """The objects among ``paths`` whose bytes do not hash to their name: {md5: path}."""
    bad = {}
    for path in paths:
        p = Path(path)
        name = p.parent.name + p.name.removesuffix(".dir")
        if file_md5(p) != name:
            bad[name] = path
    return bad


def _outputs_made_from(repo, md5s: set[str]) -> list[Any]:
    """The workspace outputs whose content includes one of the objects ``md5s`` (a file output
    that is one, or a folder output with one among its files or as its listing)."""
    hit = []
    for out in repo.index.outs:
        if not out.use_cache or not out.hash_info or not out.hash_info.value:
            continue
        value = out.hash_info.value.removesuffix(".dir")
        if value in md5s:
            hit.append(out)
            continue
        if out.hash_info.isdir:
            try:
                tree = out.get_obj()
            except Exception:  # the listing itself is gone: the folder cannot be trusted either
                hit.append(out)
                continue
            if tree is not None and any(h.value in md5s for _, _, h in tree):
                hit.append(out)
    return hit


def _remove(path: str | Path) -> None:
    """Delete a file, link or folder if it is there (DVC's read-only cache files included)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


@contextmanager
def _quiet_dvc():
    """asyncssh's deprecation warnings about DSA keys, printed on every SSH connection, muted for the
    duration (DVC's own warnings still print: they come through its CLI-style logging)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DSA.*")
        warnings.filterwarnings("ignore", module="asyncssh")
        yield


def pull(root: str | Path = ".", name: str | None = None) -> PullReport | None:
    """Restore from the remote what it holds: the outputs dvc.lock names, the run-cache and the
    objects of its runs; verify each object fetched; None when no remote is configured."""
    from dvc.exceptions import CheckoutError, DownloadError

    repo = _repo(root)
    with repo:
        name = remote_name(repo, name)
        if name is None:
            return None
        report = PullReport(name)
        before = _changed_stages(repo)
        had = _local_objects(repo)
        with _quiet_dvc():
            try:
                repo.pull(remote=name, run_cache=True, allow_missing=True)
            except (CheckoutError, DownloadError):  # some objects missing or damaged: listed below
                pass
            except Exception as exc:  # a transport's own error (asyncssh, OSError): same one line
                report.problem = explain(repo, name, exc) + "; the stages run here instead"
            if not report.problem:
                try:  # the objects of every run the remote records: a plain `dvc exp run` restores them
                    entries = _run_entries(repo)
                    used = repo.stage_cache.get_used_objs(entries, remote=name)
                    for objs in used.values():
                        repo.cloud.pull(objs, remote=name)
                except Exception as exc:  # noqa: BLE001 - optional extras: they only save time
                    report.problem = explain(repo, name, exc)
        new = _local_objects(repo) - had
        bad = damaged_objects(new)
        if bad:
            for out in _outputs_made_from(repo, set(bad)):
                report.damaged.append(str(out))
                _remove(out.fs_path)
            for path in bad.values():
                _remove(path)
        report.missing = [str(out) for out in repo.index.outs
                          if out.use_cache and out.hash_info and str(out) not in report.damaged
                          and not repo.cache.local.exists(out.hash_info.value)]
        after = _changed_stages(repo)
        report.to_run = after
        report.restored = [s for s in before if s not in after]
        return report


def _run_entries(repo) -> list[tuple[str, str]]:
    """(key, value) of every run record in the local run-cache."""
    runs = Path(repo.cache.legacy.path) / "runs"
    if not runs.is_dir():
        return []
    return [(f.parent.name, f.name) for f in runs.glob("*/*/*") if f.is_file()]


def _drop_truncated(repo, name: str) -> int:
    """Delete the remote's objects whose size differs from the local copy (an upload killed
    mid-file leaves one in place, which a re-run would skip); the number deleted."""
    odb = repo.cloud.get_remote_odb(name, "push")
    local = Path(repo.cache.local.path)
    dropped = 0
    try:
        paths = list(odb.fs.find(odb.path))
    except FileNotFoundError:
        return 0
    for path, size in zip(paths, odb.fs.sizes(paths)):
        parts = path.replace("\\", "/").rsplit("/", 2)
        if len(parts) < 3:
            continue
        mine = local / parts[-2] / parts[-1]
        if mine.is_file() and size is not None and mine.stat().st_size != size:
            odb.fs.rm(path)
            dropped += 1
    return dropped


@dataclass
class PushReport:
    remote: str
    pushed: int = 0
    repaired: int = 0
    experiments: str = ""

    def lines(self) -> list[str]:
        out = [f"pushed to remote '{self.remote}': {self.pushed} object(s) and run record(s)"]
        if self.repaired:
            out.append(f"re-sent {self.repaired} object(s) an interrupted push had left incomplete")
        if self.experiments:
            out.append(self.experiments)
        return out


def push(root: str | Path = ".", name: str | None = None, git_remote: str | None = None) -> PushReport:
    """Send the workspace's outputs, the run-cache and the objects of its runs to the remote (and
    the experiments to ``git_remote`` when given, with ``dvc exp push``)."""
    repo = _repo(root)
    with repo:
        name = remote_name(repo, name)
        if name is None:
            raise RemoteError(f"no DVC remote is configured: add one with `dvc remote add -d team URL` ({DOCS})")
        report = PushReport(name)
        with _quiet_dvc():
            try:
                report.repaired = _drop_truncated(repo, name)
                report.pushed += repo.push(remote=name, run_cache=True)
                entries = _run_entries(repo)
                for objs in repo.stage_cache.get_used_objs(entries, remote=name).values():
                    report.pushed += len(repo.cloud.push(objs, remote=name).transferred)
            except Exception as exc:
                raise RemoteError(explain(repo, name, exc) + "; nothing was lost: run it again") from exc
            if git_remote:
                try:
                    pushed = repo.experiments.push(git_remote, all_commits=True, push_cache=True,
                                                   dvc_remote=name, run_cache=True)
                    names = sorted(pushed.get("up_to_date", []) + pushed.get("success", [])) \
                        if isinstance(pushed, dict) else []
                    report.experiments = f"experiments on git remote '{git_remote}': {len(names)}"
                except Exception as exc:  # noqa: BLE001 - the data is pushed; say what is missing
                    report.experiments = f"experiments not pushed to git remote '{git_remote}': {exc}"
        return report


def main(command: str, remote: str | None, git_remote: str | None = None) -> int:
    """``foldwise pull`` / ``foldwise push``: the report's lines on stdout, exit 1 on a failure."""
    import sys

    if command == "pull":
        report = pull(name=remote)
        if report is None:
            print(f"no DVC remote configured: every stage runs here ({DOCS} sets one up)")
            return 0
        for line in report.lines():
            print(line)
        return 1 if report.problem else 0
    report = push(name=remote, git_remote=git_remote)
    for line in report.lines():
        print(line)
    sys.stdout.flush()
    return 0

