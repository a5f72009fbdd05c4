"""End to end in a real browser: JupyterLab on localhost, headless Chromium, the explorer and quickstart notebooks.

Needs Debian's Chromium and Playwright (no browser download):

    apt-get update && apt-get install -y chromium
    .venv/bin/pip install playwright

`make test` installs both and sets SDKIT_REQUIRE_BROWSER=1, under which a missing browser
fails this test instead of skipping it.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = Path(__file__).parent / "browser" / "explorer_e2e.ipynb"
QUICKSTART = ROOT / "notebooks" / "00_quickstart.ipynb"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# From NOTES.md: what headless Chromium needs in a container with no network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
INSTALL = "apt-get update && apt-get install -y chromium; .venv/bin/pip install playwright"
N = 8  # candidates the notebook asks for
CAPTION = re.compile(r"^#(\d+) · (\d+\.\d\d)\s+seed (\d+)$")  # two lines on the button


def _require_browser():
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright")
    if missing:
        msg = f"{' and '.join(missing)} not installed; install with: {INSTALL}"
        if os.environ.get("SDKIT_REQUIRE_BROWSER"):
            pytest.fail(msg + " (SDKIT_REQUIRE_BROWSER is set: `make test` must run the browser test)")
        pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with no token, serving a copy of the notebook; yields (url, outputs dir)."""
    _require_browser()
    root, settings = tmp_path / "root", tmp_path / "settings"
    out = root / "outputs"  # relative to the kernel's working directory, as a user's would be
    root.mkdir()
    shutil.copy(NOTEBOOK, root)
    (root / "notebooks").mkdir()  # the quickstart writes to ../outputs, as in the repository
    shutil.copy(QUICKSTART, root / "notebooks")
    # Do not ask "get notified about Jupyter news?" (a toast over the page; and there is no network).
    notif = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notif.parent.mkdir(parents=True)
    notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # Start the notebook's kernel without the "Select Kernel" dialog.
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "SDKIT_E2E_OUT": "outputs", "SDKIT_MODELS": "toy", "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_PLATFORM_DIRS": "1"}
    log = open(tmp_path / "jupyterlab.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--allow-root",
         f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={settings}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, out
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "jupyterlab.log", ARTIFACTS / "jupyterlab.log")


def _in_browser(name, run, *args):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1700})
        try:
            run(page, *args, expect)
        except BaseException:
            page.screenshot(path=ARTIFACTS / f"{name}-failure.png", full_page=True)
            raise
        finally:
            browser.close()


def _open_and_run_all(page, url, path, expect):
    """Open a notebook in JupyterLab, wait for its kernel, and Run All Cells from the menu, as a user would."""
    page.goto(f"{url}/lab/tree/{path}")
    expect(page.locator(".jp-NotebookPanel .jp-Notebook")).to_be_visible(timeout=60_000)
    select = page.get_by_role("button", name="Select", exact=True)  # in case the kernel dialog still shows
    if select.is_visible():
        select.click()
    # The kernel is up when the status bar says so.
    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=120_000)
    # Opening a notebook must not modify it (a stored kernelspec unlike the kernel's own made JupyterLab
    # rewrite it and mark the tab dirty, so every look asked "save changes?").
    page.wait_for_timeout(1000)
    expect(page.locator(".lm-TabBar-tab.jp-mod-dirty")).to_have_count(0)
    page.get_by_role("tab", name=re.compile("File Browser")).click()  # fold the sidebar: more room for the notebook
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def test_quickstart_in_jupyterlab(jupyterlab):
    """The first notebook a newcomer opens runs in JupyterLab and shows the ranked grid of real pictures."""
    url, _ = jupyterlab
    _in_browser("quickstart", _run_quickstart, url)


def _run_quickstart(page, url, expect):
    _open_and_run_all(page, url, f"notebooks/{QUICKSTART.name}", expect)
    # The last cell makes the winner again from its PNG and says whether it is the same image.
    expect(page.get_by_text(re.compile(r"seed \d+ same image: True"))).to_be_visible(timeout=300_000)
    assert not page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .jp-RenderedText",
                            has_text="Traceback").count()
    # The ranked grid: a matplotlib figure of 2 prompts x 8 candidates, rendered as an image in the page.
    grid = page.locator(".jp-OutputArea-output img").last
    expect(grid).to_be_visible()
    width, height = grid.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    assert width > 1000 and height > 200, (width, height)
    ranking = page.locator(".jp-OutputArea-output", has_text="CLIP score").first.inner_text()
    assert "'a red circle'" in ranking and "'a blue triangle'" in ranking, ranking
    grid.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.screenshot(path=ARTIFACTS / "quickstart.png", full_page=True)


def test_explorer_in_jupyterlab(jupyterlab):
    url, out = jupyterlab
    _in_browser("explorer", _run, url, out)


def _run(page, url, out, expect):
    _open_and_run_all(page, url, NOTEBOOK.name, expect)
    panel = page.locator(".sdkit-explorer")
    expect(panel).to_be_visible(timeout=180_000)  # first import of torch, diffusers, JAX

    panel.get_by_role("button", name="Generate").click()
    status = panel.locator(".widget-html").filter(has_text=re.compile("Click a caption for details|Error"))
    expect(status.first).to_be_visible(timeout=240_000)
    assert "Error" not in status.first.inner_text(), status.first.inner_text()

    # The ranked gallery: N rendered images, captions with rank, score and seed, best first.
    cards = panel.locator(".sdkit-gallery .sdkit-card")
    expect(cards).to_have_count(N)
    images = panel.locator(".sdkit-gallery img")
    expect(images).to_have_count(N)
    sizes = images.evaluate_all("els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
    assert sizes == [[True, 32, 32]] * N, sizes  # decoded in the browser, at the toy world's size
    captions = [c.strip() for c in panel.locator(".sdkit-gallery .sdkit-card button").all_inner_texts()]
    parsed = [CAPTION.match(c) for c in captions]
    assert all(parsed), captions
    assert [int(m[1]) for m in parsed] == list(range(1, N + 1))
    assert sorted(int(m[3]) for m in parsed) == list(range(N))  # seed=0 in the notebook: seeds 0..N-1
    scores = [float(m[2]) for m in parsed]
    assert scores == sorted(scores, reverse=True)

    # Clicking the best caption enlarges it and shows its parameters.
    panel.locator(".sdkit-gallery .sdkit-card button").first.click()
    expect(panel.locator(".sdkit-enlarged img")).to_be_visible()
    expect(panel.get_by_role("button", name="more like this")).to_be_visible()
    expect(panel.get_by_text("sdkit:toy").first).to_be_visible()
    page.wait_for_timeout(300)  # let the enlarged image paint before the screenshot
    panel.screenshot(path=ARTIFACTS / "explorer.png")
    page.screenshot(path=ARTIFACTS / "explorer-page.png", full_page=True)

    # Files: the run's N images and its ranked grid, written by the kernel.
    runs = [d for d in out.iterdir() if d.is_dir()]
    assert len(runs) == 1
    pngs = sorted(f.name for f in runs[0].glob("*.png"))
    assert len(pngs) == N + 1 and pngs[-1].endswith("-grid.png"), pngs

    # Stop works from the browser while the kernel generates: ask for many, stop once some are done.
    n_box = panel.locator(".widget-text", has_text=re.compile(r"^N$")).locator("input")
    n_box.fill("256")
    n_box.press("Enter")
    panel.get_by_role("button", name="Generate").click()
    done = panel.locator(".sdkit-progress", has_text=re.compile(r"· [1-9]\d*/256 candidates"))
    expect(done).to_be_visible(timeout=120_000)
    panel.get_by_role("button", name="Stop").click()
    stopped = panel.locator(".widget-html", has_text=re.compile(r"stopped: \d+ of 256 candidates kept"))
    expect(stopped).to_be_visible(timeout=60_000)
    kept = int(re.search(r"stopped: (\d+) of 256", stopped.inner_text())[1])
    assert 1 <= kept < 256
    expect(cards).to_have_count(kept)  # everything finished is kept, and shown
    second = next(d for d in out.iterdir() if d.is_dir() and d != runs[0])
    assert len([f for f in second.glob("*.png") if not f.name.endswith("-grid.png")]) == kept  # and on disk
    expect(panel.get_by_role("button", name="Generate")).to_be_enabled()


SEARCH_N = 32  # default_schedule(32, 20) keeps 8, then 2: two survivors, so their order is a real check
# A search's live view: every candidate's x0 preview ranked by its preview score, the pruned saying where they stopped.
PREVIEW = re.compile(r"^#(\d+) · (-?\d+\.\d\d)\s+seed (\d+)(?: · pruned @(\d+))?$")
# Every state the gallery and the status line go through, recorded in the page: the live view lasts well under
# a second on the toy world, too short to poll for, but each state the browser renders is seen here.
RECORD = """panel => {
  const snaps = window.sdkitSnaps = [];
  let last = "";
  const take = () => {
    const cards = [...panel.querySelectorAll(".sdkit-gallery .sdkit-card")].map(c => ({
      pruned: c.classList.contains("sdkit-pruned"), caption: (c.querySelector("button")?.innerText || "").trim(),
      opacity: Number(getComputedStyle(c.querySelector("img")).opacity)}));
    const status = panel.querySelector(":scope > .widget-html")?.innerText.trim() || "";
    const now = JSON.stringify({cards, status});
    if (now !== last) { last = now; snaps.push({cards, status}); }
  };
  new MutationObserver(take).observe(panel, {subtree: true, childList: true, attributes: true, characterData: true});
  take();
}"""


def test_explorer_search_in_jupyterlab(jupyterlab):
    """The search control: 'prune on previews' shows every candidate's preview ranked while it denoises, the pruned
    dimmed after the live ones, then only the survivors, ranked; the run folder holds them and lists the pruned."""
    url, out = jupyterlab
    _in_browser("explorer-search", _run_search, url, out)


def _live_problems(cards, stops, keep, n) -> list[str]:
    """What is wrong with `cards` as the live view after pruning at `stops` (keeping keep[j] after stops[j])."""
    parsed = [PREVIEW.match(c["caption"]) for c in cards]
    if len(cards) != n or not all(parsed):
        return [f"{len(cards)} cards, captions {[c['caption'] for c in cards if not PREVIEW.match(c['caption'])]}"]
    stopped = [int(m[4]) if m[4] else None for m in parsed]
    problems = []
    if [c["pruned"] for c in cards] != [s is not None for s in stopped]:
        problems.append("class sdkit-pruned is not on exactly the cards captioned 'pruned @'")
    if [int(m[1]) for m in parsed] != list(range(1, n + 1)):
        problems.append(f"ranks {[int(m[1]) for m in parsed]}")
    if sorted(int(m[3]) for m in parsed) != list(range(n)):
        problems.append(f"seeds {sorted(int(m[3]) for m in parsed)}")
    # Live first, then the pruned, latest-stopped first.
    groups = [None] + sorted(stops, reverse=True)
    if not set(stopped) <= set(groups) or stopped != sorted(stopped, key=groups.index):
        problems.append(f"order of stops {stopped}")
    want = {None: keep[-1], **{s: before - after for s, before, after in zip(stops, (n, *keep), keep)}}
    if {g: stopped.count(g) for g in groups} != want:
        problems.append(f"stopped per step {({g: stopped.count(g) for g in groups})}, want {want}")
    for g in groups:  # within a group, by preview score
        scores = [float(m[2]) for m, s in zip(parsed, stopped) if s == g]
        if scores != sorted(scores, reverse=True):
            problems.append(f"scores of group {g}: {scores}")
    if not all((c["opacity"] < 1) == c["pruned"] for c in cards):
        problems.append(f"image opacity {[c['opacity'] for c in cards]}: the pruned should be dimmed, the live not")
    return problems


def _run_search(page, url, out, expect):
    from sdkit.save import read_manifest, read_metadata, read_pruned
    from sdkit.search import default_schedule

    _open_and_run_all(page, url, NOTEBOOK.name, expect)
    panel = page.locator(".sdkit-explorer")
    expect(panel).to_be_visible(timeout=180_000)

    search = panel.locator(".widget-dropdown").filter(has=page.locator("label", has_text=re.compile(r"^search$")))
    search.locator("select").select_option(label="prune on previews")
    n_box = panel.locator(".widget-text", has_text=re.compile(r"^N$")).locator("input")
    n_box.fill(str(SEARCH_N))
    n_box.press("Enter")
    steps = int(panel.locator(".widget-slider", has_text=re.compile(r"^steps")).locator(".widget-readout").inner_text())
    prune_at, keep = default_schedule(SEARCH_N, steps)
    survivors = keep[-1]
    assert len(prune_at) > 1 and survivors > 1, (prune_at, keep)  # a schedule that tests ordering at every stage

    panel.evaluate(RECORD)
    panel.get_by_role("button", name="Generate").click()
    status = panel.locator(".widget-html").filter(has_text=re.compile("Click a caption for details|Error"))
    expect(status.first).to_be_visible(timeout=240_000)
    final = status.first.inner_text()
    assert "Error" not in final, final
    # Only the survivors are reported as finished.
    assert final.startswith(f"{survivors} of {SEARCH_N} candidates kept, {SEARCH_N - survivors} pruned on previews "
                            "(listed in the manifest) in outputs/") and "ranked grid" in final, final
    snaps = page.evaluate("window.sdkitSnaps")
    (ARTIFACTS / "explorer-search-states.json").write_text(json.dumps(snaps, indent=1, ensure_ascii=False))

    # While denoising: after each pruning step, the status says so and the gallery shows all N previews ranked.
    said = [s["status"] for s in snaps]
    lines = [f"after step {s}: previews ranked, {k} go on, {SEARCH_N - k} pruned…" for s, k in zip(prune_at, keep)]
    assert [x for x in dict.fromkeys(said) if x.startswith("after step")] == lines, said
    for j in range(len(prune_at)):
        problems = [_live_problems(s["cards"], prune_at[:j + 1], keep[:j + 1], SEARCH_N) for s in snaps]
        assert any(not p for p in problems), (
            f"no state of the gallery was the live view after step {prune_at[j]}; closest: "
            f"{min((p for p in problems if p), key=len)} (all states: {ARTIFACTS / 'explorer-search-states.json'})")
    last_live = next(s["cards"] for s in reversed(snaps)
                     if not _live_problems(s["cards"], prune_at, keep, SEARCH_N))
    live = [PREVIEW.match(c["caption"]) for c in last_live]
    pruned_at = {int(m[3]): int(m[4]) for m in live if m[4]}
    going_on = {int(m[3]) for m in live if not m[4]}

    # At the end: only the survivors, finished and ranked by their final score; nothing dimmed.
    cards = panel.locator(".sdkit-gallery .sdkit-card")
    expect(cards).to_have_count(survivors)
    expect(panel.locator(".sdkit-gallery .sdkit-card.sdkit-pruned")).to_have_count(0)
    captions = [c.strip() for c in panel.locator(".sdkit-gallery .sdkit-card button").all_inner_texts()]
    parsed = [CAPTION.match(c) for c in captions]
    assert all(parsed), captions
    assert [int(m[1]) for m in parsed] == list(range(1, survivors + 1))
    scores = [float(m[2]) for m in parsed]
    assert scores == sorted(scores, reverse=True)
    seeds = [int(m[3]) for m in parsed]
    assert set(seeds) == going_on, (seeds, going_on)  # the ones the live view said go on
    sizes = panel.locator(".sdkit-gallery img").evaluate_all("els => els.map(e => [e.complete, e.naturalWidth])")
    assert sizes == [[True, 32]] * survivors, sizes
    page.wait_for_timeout(300)
    panel.screenshot(path=ARTIFACTS / "explorer-search.png")

    # Files: the survivors' PNGs (their seeds and scores as shown) and the ranked grid; the pruned only as lines.
    runs = [d for d in out.iterdir() if d.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    pngs = sorted(f.name for f in run.glob("*.png"))
    assert len(pngs) == survivors + 1 and pngs[-1] == f"{run.name}-grid.png", pngs
    meta = {m["seed"]: m for m in (read_metadata(run / name) for name in pngs[:-1])}
    assert {s: f"{meta[s]['score']:.2f}" for s in seeds} == dict(zip(seeds, (m[2] for m in parsed)))
    assert {m["num_inference_steps"] for m in meta.values()} == {steps}
    assert sorted(c["seed"] for c in read_manifest(run)) == sorted(seeds)
    pruned = read_pruned(run)
    assert {r.seed: r.step for r in pruned} == pruned_at and len(pruned) == SEARCH_N - survivors
    assert sorted(pruned_at) == sorted(set(range(SEARCH_N)) - set(seeds))
    expect(panel.get_by_role("button", name="Generate")).to_be_enabled()
