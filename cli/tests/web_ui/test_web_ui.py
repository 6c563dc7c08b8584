"""The web page of `kvault serve` in headless Chromium (Debian's chromium + chromium-driver,
driven by selenium): the dashboard updates at least twice a second, a chat message streams a
reply into the page, the dashboard shows the running requests' blocks while they run and a free
pool after. Screenshots (idle, under load, after) go to the directory given.

Run by cli/tests/serve_web_ui.rs:  python test_web_ui.py BASE_URL SCREENSHOT_DIR
Prints "N passed, 0 failed" when everything held; exits non-zero otherwise.
"""

import json
import os
import shutil
import sys
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

BASE, SHOTS = sys.argv[1], sys.argv[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
for path, package in ((CHROMIUM, "chromium"), (DRIVER, "chromium-driver")):
    if not os.path.exists(path):
        sys.exit(f"missing {path}: apt-get install {package} (scripts/install-web-test-deps.sh does it)")

passed = 0


def check(cond, what):
    global passed
    if not cond:
        raise AssertionError(what)
    passed += 1


def wait_for(what, fn, timeout=60.0, every=0.05):
    end = time.time() + timeout
    while time.time() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")


# Long enough to fill whole KV blocks, so requests after the first can hit the prefix cache.
SHARED_PREFIX = ("You are a careful historian. Answer in plain prose, with dates where you know them, and keep "
                 "each paragraph short. Do not use lists or headings. ")


def background_completion(policy, budget, max_tokens):
    """A completion with its own KV policy, so the dashboard shows several requests at once."""
    body = {"prompt": SHARED_PREFIX + "The history of the printing press begins", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "kv_policy": policy}
    if budget:
        body["kv_budget"] = budget
    req = urllib.request.Request(BASE + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        json.load(r)


options = Options()
options.binary_location = CHROMIUM
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1360,900",
            "--hide-scrollbars"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service(DRIVER), options=options)
try:
    driver.get(BASE + "/")
    el = lambda css: driver.find_element(By.CSS_SELECTOR, css)
    els = lambda css: driver.find_elements(By.CSS_SELECTOR, css)
    updates = lambda: int(driver.execute_script("return Number(document.body.dataset.updates || 0)"))

    wait_for("the dashboard's first update", lambda: updates() >= 2, timeout=30)
    check(el("#status").text == "live", f"status pill: {el('#status').text!r}")
    # At least 2 updates per second from /v1/kv/state.
    before, t0 = updates(), time.time()
    time.sleep(2.0)
    rate = (updates() - before) / (time.time() - t0)
    check(rate >= 2.0, f"dashboard updates {rate:.1f}/s, want >= 2/s")
    total = int(el("#pool-total").text)
    check(total > 0 and el("#pool-used").text == "0", f"idle pool: {el('#pool-used').text} used of {total}")
    check("none configured" in el("#offload-tiers").text, "offload tiers shown")
    driver.save_screenshot(os.path.join(SHOTS, "idle.png"))

    # Sampling fields and a KV policy for this message.
    for field, value in (("max_tokens", "96"), ("temperature", "0")):
        box = el("#" + field)
        box.clear()
        box.send_keys(value)
    el("#ignore_eos").click()
    el("#kv_policy option[value='streaming']").click()
    el("#kv_budget").send_keys("64")

    load = [threading.Thread(target=background_completion, args=a, daemon=True)
            for a in (("h2o", 48, 110), ("snapkv", 64, 110), ("full", None, 110))]
    for t in load:
        t.start()
    el("#prompt").send_keys("Tell me a long story about a lighthouse keeper.", Keys.ENTER)

    reply = wait_for("the assistant reply element", lambda: (els(".msg.assistant") or [None])[-1])
    lengths, saw_blocks, saw_policy, shot = set(), False, False, False
    end = time.time() + 90
    while reply.get_attribute("data-state") not in ("done", "error") and time.time() < end:
        text = reply.find_element(By.CSS_SELECTOR, ".content").text
        if text:
            lengths.add(len(text))
        # Read the table in one script call: it is redrawn four times a second.
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#requests tbody tr[data-blocks]')]"
            ".map(r => ({phase: r.dataset.phase, blocks: Number(r.dataset.blocks), text: r.textContent}))")
        running = [r for r in rows if r["phase"] == "running" and r["blocks"] > 0]
        if running:
            saw_blocks = True
            saw_policy = saw_policy or any("streaming" in r["text"] for r in running)
            if not shot and len(running) >= 2 and len(lengths) >= 12:
                driver.save_screenshot(os.path.join(SHOTS, "under-load.png"))
                shot = True
        time.sleep(0.05)
    check(reply.get_attribute("data-state") == "done", f"reply state {reply.get_attribute('data-state')}: {reply.text}")
    final = reply.find_element(By.CSS_SELECTOR, ".content").text
    check(len(final) > 20, f"reply text: {final!r}")
    check(len(lengths) >= 3, f"the reply streamed in pieces (saw {len(lengths)} partial lengths)")
    check(saw_blocks, "the dashboard showed a running request holding blocks")
    check(saw_policy, "the dashboard showed the message's KV policy")
    check(shot, "an under-load screenshot was taken")
    stats = reply.find_element(By.CSS_SELECTOR, ".stats").text
    check("TTFT" in stats and "tok/s" in stats and "cached" in stats and "streaming" in stats, f"reply stats: {stats!r}")

    for t in load:
        t.join(timeout=120)
    wait_for("a free pool after the requests", lambda: driver.execute_script(
        "return document.getElementById('pool-used').textContent === '0'"
        " && document.querySelector('#requests tbody tr.empty') !== null"), timeout=30)
    driver.save_screenshot(os.path.join(SHOTS, "after.png"))
    check(True, "screenshots saved")
    print(f"{passed} passed, 0 failed")
except Exception as e:  # noqa: BLE001 - report any failure with a screenshot
    try:
        driver.save_screenshot(os.path.join(SHOTS, "failure.png"))
    except Exception:  # noqa: BLE001
        pass
    print(f"FAILED: {e}", file=sys.stderr)
    print(f"{passed} passed, 1 failed")
    sys.exit(1)
finally:
    driver.quit()
