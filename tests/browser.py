"""Render a self-contained HTML report in headless Chromium (CI must have it; locally the test skips)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)


def chromium_or_skip() -> str:
    """The browser's path; a failure under CI (it must render), a skip elsewhere."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not on PATH (CI must render the report)")
    pytest.skip("chromium is not on PATH")


def screenshot(page: Path, work: Path, size: tuple[int, int] = (1200, 2000)) -> np.ndarray:
    """Grey pixels of a headless screenshot of `page` (offline: every resource must be inline)."""
    browser = chromium_or_skip()
    shot = work / f"{page.stem}.png"
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={work / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={size[0]},{size[1]}",
        page.as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=180, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    return np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
