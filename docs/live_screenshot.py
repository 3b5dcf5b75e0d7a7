"""Make docs/live-view.png: headless Chromium's picture of one live-view environment, cropped to the windows.

    .venv/bin/python docs/live_screenshot.py http://127.0.0.1:8097/env/<env> [--out docs/live-view.png]

How README's screenshot was made, from `FOLDWISE_VISDOM=on dvc repro` of the
default params with `make visdom` running. 1480 px wide: wider pages catch
visdom's grid layout mid-reflow, with windows overlapping.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--window-size=1480,3800", "--virtual-time-budget=30000"]
BACKGROUND = np.array([59, 89, 152])  # visdom's page colour around the windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "live-view.png")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp}/profile", f"--screenshot={shot}", args.url],
                       check=True, capture_output=True)
        if not shot.is_file():
            raise SystemExit(f"no screenshot of {args.url}: is the server (make visdom) running?")
        image = Image.open(shot).convert("RGB")
    pixels = np.asarray(image).astype(int)
    drawn = np.abs(pixels - BACKGROUND).max(axis=2) > 10
    drawn[:60] = False  # the toolbar spans the page
    rows, cols = np.where(drawn.any(axis=1))[0], np.where(drawn.any(axis=0))[0]
    image = image.crop((0, 0, cols.max() + 8, rows.max() + 8))
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS).quantize(colors=128)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {image.width} x {image.height}")


if __name__ == "__main__":
    main()
