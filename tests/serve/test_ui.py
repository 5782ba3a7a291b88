"""``GET /ui``: the report page from the served store, behind the same tokens, rendered by a real Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import requests
from PIL import Image

from hepstream.models.store import ModelStore
from hepstream.report.figures import TITLES
from hepstream.serve.app import create_app
from hepstream.serve.ui import CachedPage

CHROMIUM = shutil.which("chromium")


def test_the_page_shows_the_served_store(serve_standin, store, standins):
    served = serve_standin()
    standins.serve_version(served, store, 1)
    standins.serve_version(served, store, 2)
    answer = requests.get(f"{served.url}/ui", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert re.findall(r'<img id="(\w+)"', page) == list(TITLES)
    assert "<th>newest version</th><td>v2</td>" in page and "<th>events seen</th><td>2,000</td>" in page
    assert '<meta http-equiv="refresh" content="10">' in page
    assert "/ui" not in requests.get(f"{served.url}/openapi.json", timeout=10).json()["paths"]


def test_the_page_needs_a_token_like_the_api(serve_standin, store, standins, monkeypatch):
    monkeypatch.setenv("UI_TOKENS", "secret")
    served = serve_standin(auth={"tokens_env": "UI_TOKENS"})
    store.publish(1)
    assert requests.get(f"{served.url}/ui", timeout=30).status_code == 401
    answer = requests.get(f"{served.url}/ui", headers={"Authorization": "Bearer secret"}, timeout=30)
    assert answer.status_code == 200 and "<h1>hepstream: demo</h1>" in answer.text


def test_the_page_is_rebuilt_once_its_cache_is_stale():
    now, builds = [100.0], []
    page = CachedPage(lambda: builds.append(now[0]) or f"page {len(builds)}", cache_s=5, clock=lambda: now[0])
    assert [page.get(), page.get()] == ["page 1", "page 1"]
    now[0] = 104.9
    assert page.get() == "page 1"
    now[0] = 105.0
    assert page.get() == "page 2" and builds == [100.0, 105.0]


def chromium(url: str, *options: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url``, its console messages logged to stderr."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--window-size=1400,2400", *options, url],
                          capture_output=True, text=True, timeout=120, check=True)


def console_messages(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (./dev.sh setup installs it)")
def test_chromium_renders_the_plots_without_console_errors(tmp_path, standins):
    # The console check can fail: a page that logs an error is caught.
    assert console_messages(chromium('data:text/html,<script>console.error("seen")</script>', "--dump-dom"))
    for seed in (1, 2, 3):
        standins.publish_real_version(tmp_path / "store", "demo", seed)
    app = create_app(ModelStore(tmp_path / "store", "demo"), model_name="demo")
    with standins.ServedApp(app) as served:
        dom = chromium(f"{served.url}/ui", "--dump-dom")
        shot = chromium(f"{served.url}/ui", f"--screenshot={tmp_path / 'ui.png'}")
    assert console_messages(dom) == [] and console_messages(shot) == []
    assert re.findall(r'<img id="(\w+)"', dom.stdout) == list(TITLES)
    assert "<th>versions</th><td>3</td>" in dom.stdout
    # The curves are drawn in colour; the same page with its images broken (alt texts, grey on white) is the
    # baseline, screenshotted alike: rendering the plots must add far more colour than it has.
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src="data:,"', dom.stdout))
    chromium(broken.as_uri(), f"--screenshot={tmp_path / 'broken.png'}")
    drawn, baseline = coloured_pixels(tmp_path / "ui.png"), coloured_pixels(tmp_path / "broken.png")
    assert drawn > 5 * baseline + 500, f"{drawn} coloured pixels in the screenshot, {baseline} with broken images"


def coloured_pixels(png) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > 80).sum())
