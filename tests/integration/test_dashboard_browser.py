"""``fedmq dashboard`` in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright) loads
the page while a real federation runs, and the tree, the round and the accuracy curve update live."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from fedhelp import fedmq, stop, wait_for, write_federation

GROUPS = {"home1": ["a1", "a2"], "home2": ["b1", "b2"]}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (./install.sh installs it)")
def test_the_dashboard_follows_a_running_federation_in_chromium(broker, tmp_path):
    from playwright.sync_api import sync_playwright

    paths = write_federation(str(tmp_path), broker.port, GROUPS, rounds=6, deadline_s=20,
                             node_extra={"simulate_delay_s": 0.6})  # about a second per round: seen live
    board = subprocess.Popen([sys.executable, "-m", "fedmq.shared.cli", "dashboard", paths["topic_map"], "--listen",
                              "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=open(tmp_path / "board.log", "wb"),
                             text=True)
    nodes = [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in GROUPS.values() for n in ns]
    coord = None
    try:
        line = board.stdout.readline()
        assert line.startswith("fedmq dashboard: http://"), line
        url = line.split(": ", 1)[1].strip()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url)
            page.wait_for_selector('#tree [data-node="b2"]', timeout=20_000)  # the tree, from the topic map
            assert page.inner_text("#federation") == "testfed"
            coord = fedmq(["coordinator", "run", paths["topic_map"], "--fresh"], str(tmp_path / "coord.log"))
            page.wait_for_function("() => +document.getElementById('accuracy-chart').dataset.points >= 2",
                                   timeout=60_000)
            early = page.inner_text("#round")
            points = int(page.get_attribute("#accuracy-chart", "data-points"))
            page.wait_for_function(f"() => +document.getElementById('accuracy-chart').dataset.points > {points}",
                                   timeout=60_000)  # the curve grew while we watched: live updates
            wait_for(lambda: "online" in (page.get_attribute('#tree [data-node="a1"]', "class") or ""), 20,
                     "a1 shown online")
            page.click('#tree [data-node="a2"]')
            details = page.inner_text("#node-details")
            assert "a2" in details and "last seen" in details and "numpy" in details
            page.wait_for_function("() => document.getElementById('round').textContent.startsWith('done: 6 of 6')",
                                   timeout=60_000)
            assert early != page.inner_text("#round")
            assert int(page.get_attribute("#accuracy-chart", "data-points")) == 6
            assert "held-out" in page.inner_text("#acc-source")
            assert page.query_selector("#loss-axis") is not None  # loss on an axis of its own
            assert "round 1" in page.inner_html("#bytes-chart") and "up (updates)" in page.inner_text("body")
            # the first paint needs no event stream: a page whose stream never connects shows the state
            still = browser.new_page()
            still.route("**/events", lambda route: route.abort())
            still.goto(url)
            assert still.inner_text("#round").startswith("done: 6 of 6"), still.inner_text("#round")
            assert still.query_selector('#tree [data-node="b2"]') is not None
            shot = os.environ.get("FEDMQ_DASHBOARD_SCREENSHOT", str(tmp_path / "dashboard.png"))
            page.screenshot(path=shot)
            browser.close()
        assert coord.wait(30) == 0
    finally:
        stop(nodes + ([coord] if coord else []))
        board.terminate()
        assert board.wait(15) == 0
