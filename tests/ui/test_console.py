"""The console (``/ui``) in a real headless Chromium against a real ``argus serve``.

One server with two models: two versions of the trained MLP (the older one activated over
HTTP, so there is something to roll back) that get ``argus simulate --scenario drift``
traffic with late labels, and a scikit-learn classifier registered with
``argus models register-onnx`` from a reference CSV one of whose columns is named
``<img src=x onerror=alert(1)>``. The browser is Debian's ``chromium`` driven by its
``chromedriver`` through Selenium (nothing is downloaded). Every figure the pages mark
(``data-figure``) is compared with ``/monitoring``'s JSON read at the same moment: its
exact value, and its text within display rounding.

Without chromium, chromedriver or selenium the tests skip, unless
``ARGUS_REQUIRE_BROWSER=1`` makes that a failure.
"""

from __future__ import annotations

import csv
import html.parser
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from models.store import StoredVersion
from tests.harness import ARGUS, ArgusServer, seed_store

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REQUIRE_ENV = "ARGUS_REQUIRE_BROWSER"
TOKEN = "ui-it-admin"
XSS = "<img src=x onerror=alert(1)>"
XSS_INDEX = 5  # the column of the reference CSV that carries that name
FLAGS = (
    "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run "
    "--disable-background-networking --disable-component-update --disable-sync"
).split()
# Every page gets this first: an alert (or confirm, prompt) is recorded, not shown
RECORD_DIALOGS = (
    "window.__dialogs = [];"
    "for (const f of ['alert', 'confirm', 'prompt'])"
    "  window[f] = (m) => { window.__dialogs.push(f + ':' + m); };"
)


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    reason = f"no browser to test the console: {', '.join(missing)} missing"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (apt-get install chromium chromium-driver); {REQUIRE_ENV}=1 fails")


# -- the server ----------------------------------------------------------------------


def xss_onnx(folder: Path) -> tuple[Path, Path]:
    """scikit-learn's classifier through skl2onnx, with a reference CSV whose column
    ``XSS_INDEX`` is named like an HTML tag with a script."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    X, y = d.data.astype(np.float32), d.target
    clf = LogisticRegression(max_iter=2000).fit(X[:1200], y[:1200])
    onx = to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    path = folder / "xss.onnx"
    path.write_bytes(onx.SerializeToString())
    names = [f"p{i}" for i in range(X.shape[1])]
    names[XSS_INDEX] = XSS
    ref = folder / "ref.csv"
    with open(ref, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, "digit"])
        for row, target in zip(X[1200:].tolist(), y[1200:], strict=True):
            w.writerow([*row, int(target)])
    return path, ref


class Stack:
    def __init__(self, srv: ArgusServer, versions: list[StoredVersion], xss_model: str) -> None:
        self.srv = srv
        self.model = versions[0].name
        self.old, self.new = versions[0].version, versions[1].version
        self.xss_model = xss_model

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.srv.url}{path}", params=params, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def stack(outcome: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_browser()
    from training.publish import publish

    name = f"ui-{uuid.uuid4().hex[:8]}"
    versions = [publish(outcome, name), publish(outcome, name)]
    home = tmp_path_factory.mktemp("ui")
    seed_store(Path(os.environ["BENTOML_HOME"]), name, home)
    env = {"ARGUS_ADMIN_TOKEN": TOKEN, "ARGUS_HISTORY_SECONDS": "1"}
    srv = ArgusServer(home, name, env=env)
    xss_model = f"ui-xss-{uuid.uuid4().hex[:6]}"
    onnx, ref = xss_onnx(tmp_path_factory.mktemp("xss"))
    cmd = [ARGUS, "models", "register-onnx", str(onnx), "--reference", str(ref)]
    cmd += ["--label-column", "digit", "--name", xss_model]
    done = subprocess.run(cmd, env=srv.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with srv:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with srv.client() as c:
            r = c.post("/models/activate", json={"version": versions[0].version}, headers=auth)
            assert r.status_code == 200, r.text
            rows = load_digits().data[:300].tolist()
            r = c.post("/predict", json={"instances": rows, "model": xss_model})
            assert r.status_code == 200, r.text
        sim = subprocess.run(
            [ARGUS, "simulate", "--url", srv.url, "--scenario", "drift", "--duration", "8",
             "--rate", "15", "--batch", "16", "--label-delay", "1", "--label-fraction", "0.5",
             "--seed", "3"],
            env=srv.env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert sim.returncode == 0, sim.stderr
        yield Stack(srv, versions, xss_model)


# -- the browser ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="argus-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}", "--window-size=1280,900"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch anything
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_DIALOGS})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(check: Callable[[], Any], seconds: float = 20.0, what: str = "") -> Any:
    """Poll ``check`` until it is truthy. The page redraws itself every few seconds, so an
    element found a moment ago may be gone: that counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + seconds
    while True:
        try:
            value = check()
        except StaleElementReferenceException:
            value = None
        if value or time.monotonic() > deadline:
            assert value, f"timed out after {seconds} s waiting for {what}"
            return value
        time.sleep(0.1)


def severe(driver: Any, allow: Callable[[str], bool] = lambda m: False) -> list[str]:
    """The browser's SEVERE console entries since the last call (minus allowed ones)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not allow(e["message"])
    ]


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    status = "return document.getElementById('status').textContent"
    until(lambda: "updated" in driver.execute_script(status), what=f"{url} to refresh")


def screenshot(driver: Any, path: Path) -> Path:
    """The whole page, at the window's width."""
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(height + 100, 8000))
    time.sleep(0.5)  # the charts redraw for the new size
    driver.save_screenshot(str(path))
    driver.set_window_size(width, 900)
    assert path.stat().st_size > 10_000
    return path


def figures(driver: Any, attr: str = "data-figure") -> list[list[str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(n => [n.getAttribute("
        "arguments[1]), n.getAttribute('data-value'), n.textContent, n.dataset.fmt,"
        " n.closest('[data-model]') ? n.closest('[data-model]').dataset.model : ''])",
        f"[{attr}]",
        attr,
    )


def resolve(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if doc is None:
            return None
        doc = doc[int(key)] if isinstance(doc, list) else doc.get(key)
    return doc


def shown_number(text: str) -> tuple[float, float]:
    """The number a figure's text shows and half its last digit (the display rounding)."""
    t = text.strip()
    scale = 0.01 if t.endswith("%") else 1.0
    t = t.rstrip("%")
    mantissa, _, exponent = t.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    half = 0.5 * 10.0 ** (-decimals) * 10.0 ** int(exponent or 0)
    return float(t) * scale, half * scale


def check_figure(path: str, value: str, text: str, expected: Any) -> None:
    where = f"{path}: shown {text!r} (data-value {value!r}), JSON {expected!r}"
    if expected is None:
        assert (value, text) == ("", "—"), where
    elif isinstance(expected, bool):
        assert value == str(expected).lower(), where
        assert text == ("yes" if expected else "no"), where
    else:
        assert float(value) == expected, where  # the exact number
        number, half = shown_number(text)
        assert abs(number - expected) <= half * (1 + 1e-9) + 1e-12, where


def stable_monitoring(stack: Stack, model: str) -> dict[str, Any]:
    """``/monitoring`` once two reads a second apart agree (no traffic is in flight)."""

    def settled() -> dict[str, Any] | None:
        a = stack.get("/monitoring", model=model)
        time.sleep(1.0)
        b = stack.get("/monitoring", model=model)
        a.pop("generated_at"), b.pop("generated_at")
        return b if a == b else None

    return until(settled, 30, "stable window figures")


def page_refreshed_after(driver: Any, t: float) -> None:
    """Wait until the page shows figures generated after server time ``t``."""
    until(
        lambda: float(driver.execute_script("return document.body.dataset.generated || 0")) > t,
        15,
        "the page's next refresh",
    )


# -- the tests -------------------------------------------------------------------------


class FigureSpans(html.parser.HTMLParser):
    """The figures the server rendered: (model, path, data-value, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[list[str]] = []
        self._model = ""
        self._open: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-model"):
            self._model = a["data-model"] or ""
        if a.get("data-figure"):
            self._open = [self._model, a["data-figure"] or "", a.get("data-value") or "", ""]

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[3] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._open is not None:
            self.found.append(self._open)
            self._open = None


def test_overview_shows_every_model_with_its_figures_with_and_without_javascript(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    stable = {m: stable_monitoring(stack, m) for m in (stack.model, stack.xss_model)}
    # JavaScript off: the server's HTML already holds the numbers
    page = httpx.get(f"{stack.srv.url}/ui", timeout=30)
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    spans = FigureSpans()
    spans.feed(page.text)
    assert {model for model, *_ in spans.found} == {stack.model, stack.xss_model}
    assert len(spans.found) == 2 * 6
    for model, path, value, text in spans.found:
        check_figure(path, value, text, resolve(stable[model], path))
    assert resolve(stable[stack.model], "performance.accuracy") is not None

    t = time.time()
    open_page(browser, f"{stack.srv.url}/ui")
    page_is_overview = browser.execute_script("return document.body.dataset.page")
    assert page_is_overview == "overview"
    time.sleep(3.5)  # one more refresh by the page's own polling
    shown = figures(browser)
    assert len(shown) == 2 * 6
    for path, value, text, _, model in shown:
        check_figure(path, value, text, resolve(stable[model], path))
    history = stack.get("/monitoring/history", model=stack.model, version=stack.old, since=t - 60)
    rates = {p["predictions_per_s"] for p in history["points"]}
    [value] = [f[1] for f in figures(browser, "data-history") if f[4] == stack.model]
    assert value != "" and float(value) in rates, (value, rates)
    row = f'tr[data-model="{stack.model}"]'
    assert browser.find_element("css selector", f"{row} [data-live-version]").text == stack.old
    assert severe(browser) == []
    screenshot(browser, tmp_path / "overview.png")


def test_every_figure_of_the_model_page_equals_monitoring(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    open_page(browser, f"{stack.srv.url}/ui/model/{stack.model}")
    stable = stable_monitoring(stack, stack.model)
    page_refreshed_after(browser, stable_at := time.time())
    shown = figures(browser)
    after = stack.get("/monitoring", model=stack.model)
    assert after["generated_at"] > stable_at
    assert {**after, "generated_at": None} == {**stable, "generated_at": None}
    n_features = len(after["drift"]["features"])
    n_classes = len(after["performance"]["labels"])
    # KPIs, the drift table's four figures per feature, the confusion matrix, F1 per class
    assert len(shown) > 4 * n_features + n_classes * n_classes + n_classes
    paths = {path for path, *_ in shown}
    for wanted in ("performance.accuracy", "estimated_accuracy", "drift.drift_share",
                   "anomaly.ratio", "label_delay_seconds.p99", "performance.confusion.9.9",
                   "performance.f1.0", f"drift.features.{n_features - 1}.ks_pvalue"):  # fmt: skip
        assert wanted in paths
    for path, value, text, *_ in shown:
        check_figure(path, value, text, resolve(after, path))
    # the charts: accuracy and estimate over time, with the activation marked
    for drawn in ("#chart-accuracy path.line.acc", "#chart-accuracy path.line.est",
                  '#chart-accuracy line.event[data-event="activate"]',
                  "#chart-drift path.line.drift", "#chart-drift path.line.anom",
                  "#scores line.threshold", "#confusion rect.cm", "#delay rect.bar"):  # fmt: skip
        assert browser.find_elements("css selector", drawn), drawn
    assert severe(browser) == []
    screenshot(browser, tmp_path / "model.png")


def drift_rows(driver: Any) -> list[dict[str, Any]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#drift-table tbody tr')].map(tr => ({"
        " index: Number(tr.dataset.feature), drifted: tr.dataset.drifted === 'true',"
        " psi: Number(tr.children[1].firstChild.dataset.value),"
        " ks: Number(tr.children[3].firstChild.dataset.value),"
        " p: Number(tr.children[4].firstChild.dataset.value)}))"
    )


def test_drift_table_puts_drifted_features_first_and_sorts_by_column(
    stack: Stack, browser: Any
) -> None:
    open_page(browser, f"{stack.srv.url}/ui/model/{stack.model}")
    until(lambda: drift_rows(browser), what="the drift table")
    rows = drift_rows(browser)
    drift = stack.get("/monitoring", model=stack.model)["drift"]
    assert len(rows) == len(drift["features"])
    flags = [r["drifted"] for r in rows]
    assert any(flags) and not all(flags), "the drift scenario drifts some features"
    assert flags == sorted(flags, reverse=True), "drifted features come first"
    assert {r["index"] for r in rows if r["drifted"]} == {
        f["index"] for f in drift["features"] if f["drifted"]
    }
    first = [r["psi"] for r in rows if r["drifted"]]
    assert first == sorted(first, reverse=True)

    for key, column, descending in (("ks_statistic", "ks", True), ("ks_pvalue", "p", False),
                                    ("psi", "psi", True)):  # fmt: skip
        browser.find_element("css selector", f'button[data-sort="{key}"]').click()
        values = [r[column] for r in drift_rows(browser)]
        assert values == sorted(values, reverse=descending), key
        browser.find_element("css selector", f'button[data-sort="{key}"]').click()  # flips
        values = [r[column] for r in drift_rows(browser)]
        assert values == sorted(values, reverse=not descending), key
    assert severe(browser) == []


def test_a_click_on_a_feature_draws_its_histogram(stack: Stack, browser: Any) -> None:
    open_page(browser, f"{stack.srv.url}/ui/model/{stack.model}")
    until(lambda: browser.find_elements("css selector", "#feature-hist svg"), what="a histogram")
    rows = drift_rows(browser)
    shown = int(browser.find_element("id", "feature-hist").get_attribute("data-feature"))
    target = next(r["index"] for r in reversed(rows) if r["index"] != shown)
    browser.find_element("css selector", f'button.feature[data-feature="{target}"]').click()
    until(
        lambda: (
            browser.find_element("id", "feature-hist").get_attribute("data-feature") == str(target)
        ),
        10,
        "the clicked feature's histogram",
    )
    doc = stack.get("/monitoring/feature", model=stack.model, feature=target)
    assert doc["current_counts"] is not None
    bars = browser.find_elements("css selector", "#feature-hist svg rect.bar.cur")
    assert len(bars) == len(doc["current_counts"]) == len(doc["edges"]) + 1
    assert len(browser.find_elements("css selector", "#feature-hist svg rect.bar.ref")) == len(bars)
    assert browser.find_element("id", "feature-title").text == f"Feature: {doc['name']}"
    assert "selected" in browser.find_element(
        "css selector", f'#drift-table tr[data-feature="{target}"]'
    ).get_attribute("class")
    assert severe(browser) == []


def no_script_ran(driver: Any) -> None:
    assert driver.execute_script("return window.__dialogs") == []
    assert driver.execute_script("return document.querySelectorAll('img').length") == 0


def test_a_feature_named_like_markup_is_shown_as_text(stack: Stack, browser: Any) -> None:
    open_page(browser, f"{stack.srv.url}/ui/model/{stack.xss_model}")
    until(lambda: drift_rows(browser), what="the drift table")
    button = browser.find_element("css selector", f'button.feature[data-feature="{XSS_INDEX}"]')
    assert button.text == XSS
    button.click()
    until(
        lambda: browser.find_element("id", "feature-title").text == f"Feature: {XSS}",
        10,
        "the histogram of the feature",
    )
    assert XSS in browser.find_element("tag name", "body").text
    no_script_ran(browser)
    for url in ("/ui", f"/ui/model/{stack.xss_model}/versions"):
        open_page(browser, f"{stack.srv.url}{url}")
        no_script_ran(browser)
    assert severe(browser) == []


def test_versions_page_shows_cards_a_diff_and_the_history(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    open_page(browser, f"{stack.srv.url}/ui/model/{stack.model}/versions")
    models = stack.get("/models", model=stack.model)
    listed = [
        d.get_attribute("data-version")
        for d in browser.find_elements("css selector", "#versions details")
    ]
    assert listed == [v["version"] for v in models["versions"]] == [stack.old, stack.new]
    live = browser.find_element("css selector", f'details[data-version="{stack.old}"]')
    assert live.get_attribute("open") is not None
    until(lambda: live.find_elements("css selector", "figure.loss svg path.line.val"), 10, "card")
    card = stack.get("/models/card", model=stack.model, version=stack.old)["card"]
    assert card["training"]["verdict"]["reason"] in live.text
    assert f"{card['metrics']['accuracy']:.4f}" in live.text
    until(lambda: browser.find_elements("css selector", "#diff table.diff tr"), 10, "the diff")
    diff = browser.execute_script(
        "return [...document.querySelectorAll('#diff tbody tr')].map(tr => [tr.dataset.changed,"
        " tr.children[0].textContent, tr.children[1].textContent, tr.children[2].textContent])"
    )
    assert len(diff) > 30  # config, data, metrics, calibration, training
    for changed, field, a, b in diff:  # a difference is marked, and only a difference
        assert (changed == "true") == (a != b) == field.startswith("≠"), (field, a, b)
    history = browser.find_elements("css selector", "#history tbody tr")
    assert [r.find_elements("css selector", "td")[1].text for r in history] == [
        s["reason"] for s in reversed(models["history"])
    ]
    assert severe(browser) == []
    screenshot(browser, tmp_path / "versions.png")


def test_rollback_from_the_page_needs_the_right_token(stack: Stack, browser: Any) -> None:
    url = stack.srv.url
    open_page(browser, f"{url}/ui/model/{stack.model}")
    wrong = httpx.post(
        f"{url}/models/rollback",
        json={"model": stack.model},
        headers={"Authorization": "Bearer nope"},
        timeout=30,
    )
    assert wrong.status_code == 403
    token = browser.find_element("id", "token")
    token.send_keys("nope")
    browser.find_element("id", "rollback").click()

    def message() -> str:
        return str(browser.find_element("id", "admin-message").text)

    until(lambda: message().startswith("403"), 5, "the refusal")
    assert wrong.json()["error"] in message()
    assert stack.get("/models", model=stack.model)["live"] == stack.old
    # the refused POST itself is the one console error allowed
    assert severe(browser, lambda m: "/models/rollback" in m and "403" in m) == []
    assert "nope" not in browser.current_url

    token = browser.find_element("id", "token")
    token.clear()
    token.send_keys(TOKEN)
    browser.find_element("id", "rollback").click()
    clicked = time.monotonic()
    until(
        lambda: browser.find_element("css selector", "#head [data-live-version]").text == stack.new,
        3,
        "the new live version on the page",
    )
    assert time.monotonic() - clicked < 3
    assert stack.get("/models", model=stack.model)["live"] == stack.new
    text = until(message, 3, "the switch message")
    assert stack.new in text and "rollback" in text
    assert browser.find_element("id", "token").get_attribute("value") == ""  # not kept
    assert TOKEN not in browser.current_url
    assert browser.execute_script("return localStorage.length + sessionStorage.length") == 0
    assert severe(browser) == []


def test_unknown_pages_and_assets_are_refused_with_names_as_text(stack: Stack) -> None:
    url = stack.srv.url
    page = httpx.get(f"{url}/ui/model/{XSS}", timeout=30)
    assert page.status_code == 404 and page.headers["x-argus-reason"] == "unknown_model"
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text and XSS not in page.text
    for path in ("/ui/assets/nope.js", "/ui/assets/.hidden.js", "/ui/assets/ui.py"):
        r = httpx.get(f"{url}{path}", timeout=30)
        assert r.status_code == 404 and r.json()["reason"] == "http_404", path
    outside = httpx.get(f"{url}/ui/assets/..%2Fui.py", timeout=30)  # no route matches
    assert outside.status_code == 404 and "import" not in outside.text
    js = httpx.get(f"{url}/ui/assets/console.js", timeout=30)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    again = httpx.get(f"{url}/ui/assets/console.js", headers={"if-none-match": js.headers["etag"]})
    assert again.status_code == 304
