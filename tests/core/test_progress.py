"""Progress bars show on a terminal and leave logs, files and CI output untouched."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import sys
import termios

from foldwise.core.progress import progress


def test_a_bar_on_a_terminal_nothing_in_a_log(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert list(progress(range(5), desc="prepare train", unit="img")) == list(range(5))
    assert log.getvalue() == ""
    leader, follower = os.openpty()  # a real terminal device, 80 columns, as `dvc repro` in a shell has
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        with progress(total=3, desc="predict", unit="img") as bar:
            bar.update(3)
        terminal.flush()
        ready, _, _ = select.select([leader], [], [], 5)
        shown = os.read(leader, 4096).decode() if ready else ""
    os.close(leader)
    assert "predict:" in shown and "0/3" in shown and "img/s" in shown  # drawn, then cleared (leave=False)
