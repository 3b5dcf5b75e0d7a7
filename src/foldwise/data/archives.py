"""Read the files of a folder, a zip or a tar archive, without extracting anything.

Every member of an archive is checked before any is read. A name that is
absolute or climbs out with ``..``, a symbolic or hard link, or a device
makes the whole archive refused (``UnsafeArchiveError``): nothing derived
from a hostile archive is written anywhere, and since archives are read in
place, no member name ever becomes a path on disk.

A folder is held to the same rule where it matters: a symbolic link that
resolves outside it (``cat/escape.jpg -> /etc/hostname``), a link to a
folder (a loop, or every image in it twice) or a broken link makes the whole
folder refused, before anything is read or copied. A link to a file inside
the folder is read as that file.

Hidden files (``.DS_Store``, ``._x.jpg``) and ``__MACOSX/`` folders, which
archivers add on their own, are checked but not listed.
"""

from __future__ import annotations

import lzma
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the folder it is extracted to, or is a link."""


class DamagedMember(ValueError):
    """A member's bytes cannot be read back (bad CRC, broken compression, encrypted, cut short)."""


# What zipfile, tarfile and their decompressors raise on damaged bytes.
READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, tarfile.TarError,
               RuntimeError, NotImplementedError, ValueError, struct.error)


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` has the name of an archive we can read (zip or tar, any compression)."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)


def safe_name(archive: str | Path, name: str) -> str:
    """``name`` as a clean relative POSIX path, or ``UnsafeArchiveError`` naming the member."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or ".." in path.parts:
        raise UnsafeArchiveError(
            f"{archive}: refusing the archive: member {name!r} would land outside the folder it is "
            f"extracted to (absolute path or '..'). Nothing was extracted; use an archive whose "
            f"members are relative paths inside it."
        )
    return str(PurePosixPath(*[p for p in path.parts if p not in ("", ".")]))


def _refuse_link(archive: str | Path, name: str, what: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{archive}: refusing the archive: member {name!r} is a {what}, which could point outside "
        f"the folder it is extracted to. Nothing was extracted; re-create the archive with plain "
        f"files only (e.g. `zip -r` without -y, or `tar --dereference`)."
    )


class FileTree:
    """Regular files under a root, by relative POSIX name, in a stable order."""

    def __init__(self, where: str | Path) -> None:
        self.where = Path(where)
        self.files: dict[str, int] = {}  # name -> size in bytes
        self.dirs: set[str] = set()  # every folder, explicit or implied by a file

    def _add(self, name: str, size: int) -> None:
        if _hidden(name):
            return
        self.files[name] = size
        parent = PurePosixPath(name).parent
        while str(parent) != ".":
            self.dirs.add(str(parent))
            parent = parent.parent

    def read(self, name: str, limit: int = -1) -> bytes:
        """The bytes of member ``name``; with ``limit`` >= 0, at most ``limit`` + 1 of them (enough
        to tell it is too large without holding more in memory). ``DamagedMember`` when the bytes
        cannot be read back."""
        try:
            return self._read(name, limit)
        except READ_ERRORS as exc:
            raise DamagedMember(f"{self.where}: {name}: {exc}") from None

    def _read(self, name: str, limit: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Release the archive's file handle (folders hold none)."""

    def __enter__(self) -> FileTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refuse_folder_link(root: Path, link: Path, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{root}: refusing the folder: {link.relative_to(root).as_posix()} is a symbolic link to "
        f"{os.readlink(link)}, {why}. Nothing was read or copied; replace the link with the file it "
        f"points at (`cp -L`), or remove it."
    )


def _check_link(root: Path, inside: Path, path: Path) -> None:
    """Refuse ``root`` if ``path`` is a link out of ``inside`` (root resolved), to a folder, or nowhere."""
    if not path.is_symlink():
        return
    target = path.resolve()
    if not target.is_relative_to(inside):
        raise _refuse_folder_link(root, path, f"outside {root}")
    if not target.exists():
        raise _refuse_folder_link(root, path, "which does not exist (a broken link)")
    if target.is_dir():
        raise _refuse_folder_link(root, path, "a folder (its images would be read twice, or for ever)")


def check_links(root: str | Path) -> None:
    """Refuse ``root`` (``UnsafeArchiveError`` naming the link and its target) if a symbolic link
    in it leads outside it, to a folder, or nowhere; links are inspected, never followed."""
    root = Path(root)
    inside = root.resolve()
    for folder, dirnames, filenames in os.walk(root):  # does not follow links to folders
        for name in sorted(dirnames + filenames):
            _check_link(root, inside, Path(folder) / name)


class DirTree(FileTree):
    """A folder on disk, its links checked as ``check_links`` does."""

    def __init__(self, where: str | Path) -> None:
        super().__init__(where)
        inside = self.where.resolve()
        for folder, dirnames, filenames in os.walk(self.where):  # links checked as met, in one walk
            dirnames.sort()
            for name in dirnames:
                _check_link(self.where, inside, Path(folder) / name)
            rel = Path(folder).relative_to(self.where).as_posix()
            if rel != "." and not _hidden(rel):
                self.dirs.add(rel)
            for file in sorted(filenames):
                path = Path(folder) / file
                _check_link(self.where, inside, path)
                if path.is_file():  # a link to a file inside the folder counts as that file
                    self._add(path.relative_to(self.where).as_posix(), path.stat().st_size)

    def _read(self, name: str, limit: int) -> bytes:
        with open(self.where / name, "rb") as f:
            if limit < 0:
                return f.read()
            # read(n) allocates n bytes up front: ask for no more than the file holds (+1 to see growth)
            return f.read(min(limit, os.fstat(f.fileno()).st_size) + 1)


class ZipTree(FileTree):
    """A zip archive read in place."""

    def __init__(self, where: str | Path) -> None:
        super().__init__(where)
        try:
            self._zip = zipfile.ZipFile(self.where)
        except READ_ERRORS as exc:
            raise ValueError(f"{self.where}: not a readable zip archive ({exc})") from None
        for info in self._zip.infolist():
            name = safe_name(self.where, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise _refuse_link(self.where, info.filename, "symbolic link")
            if info.is_dir():
                if not _hidden(name) and name != ".":
                    self.dirs.add(name)
            else:
                self._add(name, info.file_size)
        self._names = {safe_name(self.where, i.filename): i for i in self._zip.infolist()}

    def _read(self, name: str, limit: int) -> bytes:
        with self._zip.open(self._names[name]) as f:
            return f.read(limit + 1 if limit >= 0 else -1)

    def close(self) -> None:
        self._zip.close()


class TarTree(FileTree):
    """A tar archive (any compression) read in place, members in storage order."""

    def __init__(self, where: str | Path) -> None:
        super().__init__(where)
        try:
            self._tar = tarfile.open(self.where, "r:*")
            members = self._tar.getmembers()
        except READ_ERRORS as exc:
            raise ValueError(f"{self.where}: not a readable tar archive ({exc})") from None
        self._members: dict[str, tarfile.TarInfo] = {}
        for member in members:
            name = safe_name(self.where, member.name)
            if member.issym() or member.islnk():
                raise _refuse_link(self.where, member.name, "symbolic link" if member.issym() else "hard link")
            if member.isdir():
                if not _hidden(name) and name != ".":
                    self.dirs.add(name)
            elif member.isfile():
                self._add(name, member.size)
                self._members[name] = member
            else:
                raise _refuse_link(self.where, member.name, "device or pipe")

    def _read(self, name: str, limit: int) -> bytes:
        handle = self._tar.extractfile(self._members[name])
        return handle.read(limit + 1 if limit >= 0 else -1) if handle else b""

    def close(self) -> None:
        self._tar.close()


def open_tree(path: str | Path) -> FileTree:
    """A folder, zip or tar as a ``FileTree``; archives are fully checked first."""
    path = Path(path)
    if path.is_dir():
        return DirTree(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if zipfile.is_zipfile(path):
        return ZipTree(path)
    if is_archive(path) or tarfile.is_tarfile(path):
        return TarTree(path)
    raise ValueError(f"{path}: not a folder, a zip or a tar archive")
