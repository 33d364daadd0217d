"""The chat page at / in a real browser: Debian's headless Chromium driven by Selenium
through chromium-driver, against a gateway whose tier is a FakeUpstream on loopback.

Sends a message, reads the streamed answer rendered as Markdown (a code block, bold),
the _routing line beside it, the model picker filled from /v1/models, the API key kept in
localStorage across a reload, and the stop button cutting a slow stream. A screenshot
goes to test-artifacts/ (gitignored; G4_TEST_ARTIFACTS overrides the directory).

Skipped when chromium, chromium-driver or selenium is missing - except in CI (CI=true),
where `make test-py` installs them (Makefile BROWSER_DEB_PKGS) and this test must run.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from gateway_fakes import GW, FakeUpstream

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("G4_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "test-artifacts"))


def _need_browser():
    missing = [n for n, ok in (("chromium", CHROMIUM), ("chromium-driver", DRIVER)) if not ok]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        msg = f"browser test needs {', '.join(missing)} (make browserdeps; pip install selenium)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " - required in CI")
        pytest.skip(msg)


@pytest.fixture
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1100,800", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    # under `make test-asan` the sanitizer runtime is LD_PRELOADed into pytest; keep it out
    # of the browser
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS",
                                                            "UBSAN_OPTIONS")}
    drv = webdriver.Chrome(service=Service(DRIVER, env=env), options=opts)
    drv.set_page_load_timeout(20)
    try:
        yield drv
    finally:
        drv.quit()


ANSWER = ["Here is ", "the code:\n\n", "```python\n", "print('hi')\n", "x = 1 < 2\n",
          "```\n\n", "**done** <b>not bold</b>"]


def test_chat_page_streams_markdown_routing_key_and_stop(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    with contextlib.ExitStack() as stack:
        up = stack.enter_context(FakeUpstream(name="P", delay_s=0.02))
        up.script = ANSWER
        gw = GW(stack, {"auth": {"api_keys": ["sk-test-page"]},
                        "tiers": {"primary": {"backend": "openai", "url": up.url,
                                              "model": "mid", "id": "gemma-mid"}}})
        wait = WebDriverWait(browser, 15)
        browser.get(gw.url + "/")
        assert browser.title == "gemma4stack chat"
        # without a key /v1/models is refused: the page says so
        wait.until(lambda d: "API key" in d.find_element(By.ID, "status").text)
        key = browser.find_element(By.ID, "key")
        key.send_keys("sk-test-page")
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
        wait.until(lambda d: "gemma-mid" in [o.get_attribute("value") for o in
                                             Select(d.find_element(By.ID, "model")).options])
        Select(browser.find_element(By.ID, "model")).select_by_value("gemma-mid")

        box = browser.find_element(By.ID, "input")
        box.send_keys("show me code")
        browser.find_element(By.ID, "send").click()
        done = wait.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, ".assistant[data-state='done']")))
        code = done.find_element(By.CSS_SELECTOR, "pre code.language-python")
        assert code.text == "print('hi')\nx = 1 < 2"
        assert done.find_element(By.TAG_NAME, "strong").text == "done"
        assert "<b>not bold</b>" in done.find_element(By.CSS_SELECTOR, ".content").text
        routing = done.find_element(By.CSS_SELECTOR, ".routing").text
        assert "tier primary" in routing and "gemma-mid" in routing
        assert "tokens/s" in routing and "latency" in routing
        assert up.requests[-1]["messages"] == [{"role": "user", "content": "show me code"}]
        assert up.headers[-1].get("authorization") is None        # the gateway's key stays
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "chat_page.png"))

        # stop: a slow answer, cut by the button; the conversation goes on
        up.script, up.delay_s = [f"word{i} " for i in range(200)], 0.05
        box.send_keys("a long one")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: "word3" in d.find_elements(By.CSS_SELECTOR, ".assistant")[-1].text)
        browser.find_element(By.ID, "stop").click()
        stopped = wait.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, ".assistant[data-state='stopped']")))
        assert "stopped" in stopped.text and "word199" not in stopped.text
        assert browser.find_element(By.ID, "send").is_enabled()
        # the second request carried the first exchange
        assert [m["role"] for m in up.requests[-1]["messages"]] == ["user", "assistant", "user"]

        # the key is kept in this browser's storage
        browser.refresh()
        wait.until(lambda d: d.find_element(By.ID, "key").get_attribute("value") == "sk-test-page")
        assert browser.execute_script("return localStorage.getItem('g4gw.apiKey')") == "sk-test-page"


def test_page_is_package_data_with_a_strict_csp():
    """Served from the installed package (pyproject package-data), locked to its origin."""
    import httpx

    from gemma4stack.gateway.app import _chat_html
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(FakeUpstream())
        gw = GW(stack, {"tiers": {"p": {"backend": "openai", "url": up.url, "model": "m"}}})
        r = httpx.get(gw.url + "/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.text == _chat_html() and "<script" in r.text and "src=" not in r.text
        csp = r.headers["content-security-policy"]
        assert "connect-src 'self'" in csp and "default-src 'none'" in csp
