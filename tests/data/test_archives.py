"""Archives are read in place; hostile ones are refused before anything is read or written."""

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from foldwise.data.archives import UnsafeArchiveError, open_tree
from foldwise.data.download import copy_user_data
from tests.conftest import jpeg_bytes, write_zip

ROOT = Path(__file__).resolve().parents[2]


def zip_with_symlink(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cats/1.jpg", jpeg_bytes(50))
        link = zipfile.ZipInfo("cats/escape")
        link.external_attr = (0o120777 << 16)  # S_IFLNK: what `zip -y` stores for a symlink
        archive.writestr(link, "../../../../etc")
    return path


def tar_with(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        good = tarfile.TarInfo("cats/1.jpg")
        data = jpeg_bytes(50)
        good.size = len(data)
        archive.addfile(good, io.BytesIO(data))
        for member in members:
            archive.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def plain(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


MALICIOUS = {
    "zip-dotdot": lambda d: write_zip(d / "evil.zip", {"cats/1.jpg": b"x", "../../evil.txt": b"pwned"}),
    "zip-absolute": lambda d: write_zip(d / "evil.zip", {"/tmp/evil.txt": b"pwned"}),
    "zip-symlink": lambda d: zip_with_symlink(d / "evil.zip"),
    "tar-dotdot": lambda d: tar_with(d / "evil.tar.gz", plain("cats/../../evil.txt")),
    "tar-absolute": lambda d: tar_with(d / "evil.tar.gz", plain("/tmp/evil.txt")),
    "tar-symlink-escape": lambda d: tar_with(d / "evil.tar.gz", symlink("cats/escape", "/etc"),
                                             plain("cats/escape/passwd")),
    "tar-hardlink": lambda d: tar_with(d / "evil.tar.gz", hardlink()),
}


def hardlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("cats/hard")
    info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    return info


@pytest.mark.parametrize("kind", sorted(MALICIOUS))
def test_malicious_archive_is_refused_naming_the_member(kind, tmp_path):
    archive = MALICIOUS[kind](tmp_path)
    with pytest.raises(UnsafeArchiveError, match=r"refusing the archive: member .* Nothing was extracted"):
        open_tree(archive)
    with pytest.raises(UnsafeArchiveError):
        copy_user_data(archive, tmp_path / "raw")
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").rglob("*"))


def test_download_stage_refuses_a_malicious_archive_and_writes_nothing_outside_data(tmp_path):
    """The real stage in a scratch project: exit 1, a clear error, no file anywhere new."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    archive = MALICIOUS["tar-symlink-escape"](tmp_path)
    (project / "params.yaml").write_text(f"dataset: folder\ndata_path: {archive}\n")
    before = {p for p in tmp_path.rglob("*")}
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "download.py"), "--out", "data/raw"],
                          cwd=project, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 1
    assert "refusing the archive: member 'cats/escape' is a symbolic link" in done.stderr
    assert {p for p in tmp_path.rglob("*")} == before  # not even data/raw


def test_trees_list_the_same_files_from_a_folder_a_zip_and_a_tar(tmp_path):
    files = {"cats/1.jpg": b"a", "dogs/sub/2.jpg": b"bb", ".DS_Store": b"junk", "__MACOSX/cats/._1.jpg": b"junk"}
    folder = tmp_path / "folder"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    write_zip(tmp_path / "a.zip", files)
    with tarfile.open(tmp_path / "a.tar.bz2", "w:bz2") as archive:
        archive.add(folder, arcname="")
    for path in (folder, tmp_path / "a.zip", tmp_path / "a.tar.bz2"):
        with open_tree(path) as tree:
            assert tree.files == {"cats/1.jpg": 1, "dogs/sub/2.jpg": 2}, path
            assert {"cats", "dogs", "dogs/sub"} <= tree.dirs
            assert tree.read("dogs/sub/2.jpg") == b"bb"


def test_not_an_archive_is_named(tmp_path):
    (tmp_path / "photos.rar").write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(ValueError, match="photos.rar: not a folder, a zip or a tar archive"):
        open_tree(tmp_path / "photos.rar")
    with pytest.raises(ValueError, match="neither a folder, a .zip/.tar archive nor a .csv file. HINT"):
        copy_user_data(tmp_path / "photos.rar", tmp_path / "raw", "HINT")
    with pytest.raises(FileNotFoundError, match="data_path: .*nope.zip does not exist. HINT"):
        copy_user_data(tmp_path / "nope.zip", tmp_path / "raw", "HINT")


def photo_folder(root: Path) -> Path:
    for c in ("cat", "dog"):
        (root / "photos" / c).mkdir(parents=True)
        (root / "photos" / c / "1.jpg").write_bytes(jpeg_bytes(40 if c == "cat" else 200))
    return root / "photos"


FOLDER_LINKS = {  # link inside photos/ -> (its target, what the error says)
    "cat/escape.jpg": (lambda root: "/etc/hostname", "outside"),
    "cat/up.jpg": (lambda root: "../../secret.jpg", "outside"),
    "dog/all": (lambda root: str(root / "photos"), "a folder"),
    "dog/gone.jpg": (lambda root: "missing.jpg", "broken link"),
}


@pytest.mark.parametrize("link", sorted(FOLDER_LINKS))
def test_a_folder_with_a_link_that_leaves_it_is_refused_naming_link_and_target(link, tmp_path):
    """As strict as archives: nothing of the folder is copied (so nothing reaches DVC's cache or a
    `dvc push`), and the error names the link and where it points."""
    folder = photo_folder(tmp_path)
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(99))
    target, why = FOLDER_LINKS[link][0](tmp_path), FOLDER_LINKS[link][1]
    os.symlink(target, folder / link)
    message = rf"{folder}: refusing the folder: {link} is a symbolic link to {target}, .*{why}"
    with pytest.raises(UnsafeArchiveError, match=message):
        copy_user_data(folder, tmp_path / "raw")
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").rglob("*"))
    with pytest.raises(UnsafeArchiveError, match=message):
        open_tree(folder)


def test_a_link_to_a_file_inside_the_folder_is_that_file(tmp_path):
    folder = photo_folder(tmp_path)
    os.symlink("../cat/1.jpg", folder / "dog" / "copy.jpg")
    copy_user_data(folder, tmp_path / "raw")
    copied = tmp_path / "raw" / "images" / "dog" / "copy.jpg"
    assert not copied.is_symlink() and copied.read_bytes() == (folder / "cat" / "1.jpg").read_bytes()
    with open_tree(folder) as tree:
        assert sorted(tree.files) == ["cat/1.jpg", "dog/1.jpg", "dog/copy.jpg"]
