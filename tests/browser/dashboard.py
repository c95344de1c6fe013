#!/usr/bin/python3
"""The dashboard in a real browser: Debian's chromium, headless, driven through the system
chromedriver by selenium (Debian's python3-selenium), against a running Lantern server.

Run by tests/it/dashboard.rs, which starts the server with an admin token and passes:
  --url URL --admin TOKEN --guests DIR (the built .wasm files) --screenshots DIR

What the page shows is checked against the API's own answers, read over HTTP by this script:
the page must show what the server says, and react to what happens on the server.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

parser = argparse.ArgumentParser()
parser.add_argument("--url", required=True)
parser.add_argument("--admin", required=True)
parser.add_argument("--guests", required=True)
parser.add_argument("--screenshots", required=True)
args = parser.parse_args()
URL = args.url.rstrip("/")
os.makedirs(args.screenshots, exist_ok=True)


# --- the API, for setting up and as the oracle --------------------------------------------------

def call(method, path, body=None, token=None, content_type="application/json"):
    token = token or args.admin
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, method=method)
    request.add_header("Authorization", "Bearer " + token)
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def ok(method, path, body=None, **kw):
    status, answer = call(method, path, body, **kw)
    assert 200 <= status < 300, f"{method} {path} -> {status} {answer}"
    return answer


def append(stream, events):
    return ok("POST", f"/streams/{stream}", {"events": events})


def deploy(name, guest):
    with open(os.path.join(args.guests, guest + ".wasm"), "rb") as f:
        return ok("PUT", f"/projections/{name}", f.read(), content_type="application/wasm")


def wait_until(what, predicate, timeout=120, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (StaleElementReferenceException, AssertionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def caught_up(name):
    p = ok("GET", f"/projections/{name}")
    if p["status"] == "faulted":
        raise RuntimeError(f"{name} faulted: {p['error']}")
    return p["status"] == "running" and p["lag"] == 0 and p["rebuild"] is None


STARTED = time.monotonic()


def step(message):
    print(f"[dashboard] {time.monotonic() - STARTED:6.1f} s  {message}", flush=True)


# --- data ------------------------------------------------------------------------------------------

step("seeding the store")
reader = ok("POST", "/tokens", {"name": "viewer", "role": "reader"})["token"]
for i in range(40):
    append(f"order-{i}", [
        {"type": "OrderPlaced", "data": {"customer": f"c-{i % 7}", "amount": 100 + i}},
        {"type": "OrderPaid", "data": {"amount": 100 + i}},
    ])
for i in range(5):
    append(f"cart-{i}", [{"type": "ItemAdded", "data": {"sku": f"sku-{i}", "quantity": 1, "price": 250}}])
# A projection slow enough to watch rebuild: each Slow event spins in the guest. Several
# batches' worth of events, so its progress has intermediate values: batches grow while one takes
# under half a second, so each event must take long enough (~15 us here) that 64k of them do not.
SLOW_EVENTS = 240_000
for chunk in range(SLOW_EVENTS // 10_000):
    append("hostile-1", [{"type": "Slow", "data": 50_000}] * 10_000)
for name, guest in [("order-totals", "order_totals"), ("orders-per-day", "orders_per_day"),
                    ("carts", "carts"), ("slow", "hostile")]:
    deploy(name, guest)
for name in ["order-totals", "orders-per-day", "carts", "slow"]:
    wait_until(f"{name} to catch up", lambda: caught_up(name), timeout=300, interval=0.5)


# --- the browser -----------------------------------------------------------------------------------

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--window-size=1400,1000"]:
    options.add_argument(flag)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(30)


def shot(name):
    path = os.path.join(args.screenshots, name + ".png")
    driver.save_screenshot(path)
    step(f"screenshot {path}")


def css(selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def text(selector):
    found = css(selector)
    return found[0].text if found else None


def displayed(selector):
    """Whether an element the selector finds is shown (in the page and not hidden by CSS)."""
    return any(e.is_displayed() for e in css(selector))


def type_and_submit(selector, value):
    field = css(selector)[0]
    field.send_keys(value)
    field.submit()


def go(hash_route):
    driver.get(f"{URL}/ui/#{hash_route}")


def browser_errors():
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
            # Refusals the page asks for on purpose: before the token is typed (401), the role
            # probe (GET /tokens answers 403 to a reader), and the list a limited token may not
            # read (GET /projections, 403).
            and "401 (Unauthorized)" not in e["message"]
            and not ("/tokens - " in e["message"] and "403 (Forbidden)" in e["message"])
            and not ("/projections - " in e["message"] and "403 (Forbidden)" in e["message"])]


try:
    # 1. Without a token the page says what it needs; with one it works, and keeps it for the tab.
    step("token")
    driver.get(f"{URL}/ui")  # the redirect to /ui/
    assert driver.current_url.endswith("/ui/"), driver.current_url
    wait_until("the token banner", lambda: "Type a token" in (text("#banner") or ""))
    shot("0-needs-token")
    css("#token")[0].send_keys(args.admin)
    css("#token-form button[type=submit]")[0].click()
    wait_until("the admin role", lambda: text("#who") == "admin")

    # 2. Overview: the head the server reports, the rate once appends happen, subscribers.
    step("overview")
    head = ok("GET", "/health")["head"]
    wait_until("the head", lambda: text("#overview-head") == f"{head:,}")
    for i in range(12):  # three seconds of appends: a rate, and a line on the sparkline
        append("rate-1", [{"type": "Tick", "data": i}] * 100)
        time.sleep(0.25)
    wait_until("an append rate", lambda: (text("#overview-rate") or "0") not in ("0", "…"))
    assert text("#overview-status") == "ok"
    shot("1-overview")
    # Its link to the projections outlives the summary's refreshes (every second).
    details = driver.find_element(By.LINK_TEXT, "Details")
    time.sleep(2.5)
    details.click()
    wait_until("the projections page", lambda: driver.current_url.endswith("#/projections"))

    # 3. Projections: each row shows the status and position the API gives.
    step("projections table")
    go("/projections")
    for p in ok("GET", "/projections")["projections"]:
        row = f'#projections tr[data-name="{p["name"]}"]'
        wait_until(f"{p['name']}'s row", lambda: text(f"{row} .status") == "running")
        wait_until(f"{p['name']}'s position",
                   lambda: text(f"{row} .position") == f'{ok("GET", "/projections/" + p["name"])["position"]:,}')
    # An admin may list them all: the form for a token that may not is not shown.
    assert displayed("#deploy") and not displayed("#open-projection"), "the wrong forms for an admin"
    names = [r.get_attribute("data-name") for r in css("#projections tbody tr")]
    assert names == sorted(p["name"] for p in ok("GET", "/projections")["projections"]), names
    shot("2-projections")

    # 4. A rebuild started from the page: its progress bar moves, then the rebuild is swapped in.
    step("rebuild progress")
    version_before = ok("GET", "/projections/slow")["version"]
    css('#projections tr[data-name="slow"] .rebuild-button')[0].click()
    seen = []
    reasons = []
    shot_taken = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            bars = css('#projections tr[data-name="slow"] progress')
            if bars:
                seen.append(float(bars[0].get_attribute("data-progress")))
                reasons += [r.text for r in css('#projections tr[data-name="slow"] .rebuild-reason')]
                if 0 < seen[-1] < 1 and not shot_taken:
                    shot("3-rebuild-progress")
                    shot_taken = True
            elif seen:
                break  # the bar is gone: the rebuild finished
        except StaleElementReferenceException:
            pass
        time.sleep(0.05)
    moving = sorted({v for v in seen if 0 < v < 1})
    step(f"progress values seen: {moving}")
    assert len(moving) >= 3, f"the progress bar did not move: {seen[:5]}...{seen[-5:]}"
    assert seen == sorted(seen), "progress went backwards"
    assert "why: a rebuild was asked for" in reasons, f"the rebuild's reason is shown: {reasons[:3]}"
    after = ok("GET", "/projections/slow")
    assert after["rebuild"] is None and after["status"] == "running", after
    assert after["version"] == version_before
    assert ok("GET", "/projections/slow/state/count") == SLOW_EVENTS

    # 5. Live tail: an event appended now appears; the category filter holds others back.
    step("live tail")
    go("/tail")
    wait_until("the tail to connect", lambda: text("#tail-state") == "live")
    markup = '<b id="injected">bold</b>'
    placed = append("order-live", [{"type": "OrderPlaced",
                                    "data": {"customer": "c-live", "amount": 7, "note": markup}}])
    position = placed["first_position"]
    wait_until("the appended event in the tail",
               lambda: "c-live" in (text(f'#tail-events li[data-position="{position}"]') or ""))
    # Data is shown as text: markup in an event is visible, and never becomes an element.
    assert markup.replace('"', '\\"') in text(f'#tail-events li[data-position="{position}"]')
    assert not css("#injected"), "markup in an event's data became part of the page"
    type_and_submit("#tail-category", "cart")
    wait_until("the filtered tail to connect", lambda: text("#tail-state") == "live" and not css("#tail-events li"))
    skipped = append("order-live", [{"type": "OrderPaid", "data": {"amount": 7}}])["first_position"]
    shown = append("cart-live", [{"type": "ItemAdded", "data": {"sku": "sku-live", "quantity": 2, "price": 99}}])["first_position"]
    wait_until("the cart event", lambda: css(f'#tail-events li[data-position="{shown}"]'))
    assert not css(f'#tail-events li[data-position="{skipped}"]'), "the filter let an order event through"
    # Changing the filter replaced the subscription; it did not add one. A second would show the
    # next event twice (its reconnect timer is a second).
    time.sleep(1.5)
    again = append("cart-live", [{"type": "ItemAdded", "data": {"sku": "sku-live", "quantity": 1, "price": 99}}])["first_position"]
    wait_until("the next cart event", lambda: css(f'#tail-events li[data-position="{again}"]'))
    time.sleep(0.5)
    shown_positions = [li.get_attribute("data-position") for li in css("#tail-events li")]
    assert shown_positions == [str(again), str(shown)], f"the tail shows {shown_positions}"
    shot("4-live-tail")

    # 6. Streams: names by prefix in the API's order, and a stream's events.
    step("streams")
    go("/streams")
    type_and_submit("#stream-prefix", "order-1")
    expected = [s["name"] for s in ok("GET", "/streams?prefix=order-1&limit=50")["streams"]]
    wait_until("the streams with the prefix",
               lambda: [r.get_attribute("data-stream") for r in css("#streams tbody tr")] == expected)
    shot("5-streams")
    # Two searches in a row: the list shows the second one's answer alone, whichever comes first.
    driver.execute_script("""
        const input = document.getElementById('stream-prefix');
        input.value = 'order-1'; input.form.requestSubmit();
        input.value = 'cart-'; input.form.requestSubmit();""")
    carts = [s["name"] for s in ok("GET", "/streams?prefix=cart-&limit=50")["streams"]]
    listed = lambda: [r.get_attribute("data-stream") for r in css("#streams tbody tr")]
    wait_until("the second search's streams", lambda: listed() == carts, timeout=30)
    time.sleep(0.5)
    assert listed() == carts, f"two searches mixed: {listed()}"
    css("#stream-prefix")[0].clear()
    type_and_submit("#stream-prefix", "order-1")
    wait_until("the first search again", lambda: listed() == expected)
    css('#streams tr[data-stream="order-12"] a')[0].click()
    events = ok("GET", "/streams/order-12?direction=backward")["events"]
    wait_until("the stream's events", lambda: [int(li.get_attribute("data-position")) for li in css("#stream-events li")]
               == [e["position"] for e in events])
    assert '"customer": "c-5"' in text("#stream-events"), text("#stream-events")
    shot("6-stream-events")
    # "Older" clicked twice before the page comes adds it once.
    go("/streams/hostile-1")
    listed_events = lambda: [int(li.get_attribute("data-position")) for li in css("#stream-events li")]
    wait_until("the newest 50 events", lambda: len(listed_events()) == 50)
    older = [b for b in css("button") if b.text == "Older"][0]
    driver.execute_script("arguments[0].click(); arguments[0].click();", older)
    newest_100 = [e["position"] for e in ok("GET", "/streams/hostile-1?direction=backward&limit=100")["events"]]
    wait_until("the next 50", lambda: len(listed_events()) >= 100)
    time.sleep(0.5)
    assert listed_events() == newest_100, f"{len(listed_events())} events shown, not the newest 100 once each"

    # 7. One projection: the state browser and the query console give the API's answers.
    step("state browser and query console")
    go("/projections/order-totals")
    type_and_submit("#state-prefix", "customer:")
    items = ok("GET", "/projections/order-totals/state?prefix=customer:&limit=50")["items"]
    assert items, "order-totals has customers"
    wait_until("the state items", lambda: [r.find_elements(By.CSS_SELECTOR, "td")[0].text
                                            for r in css("#state tbody tr")] == [i["key"] for i in items])
    css("#query-name")[0].send_keys("top")
    type_and_submit("#query-params", "n=3")
    top = ok("GET", "/projections/order-totals/query/top?n=3")
    wait_until("the query's answer", lambda: css("#query-answer")[0].get_attribute("data-position"))
    shown = text("#query-answer").split("\n", 1)[1]
    assert json.loads(shown) == top, (shown, top)
    shot("7-projection")

    # 8. Deploy and delete from the page.
    step("deploy and delete")
    go("/projections")
    wait_until("the deploy form", lambda: displayed("#deploy"))
    form = css("#deploy")[0]
    form.find_element(By.NAME, "name").send_keys("carts-copy")
    form.find_element(By.NAME, "module").send_keys(os.path.abspath(os.path.join(args.guests, "carts.wasm")))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until("the deployed projection", lambda: call("GET", "/projections/carts-copy")[0] == 200, timeout=120)
    wait_until("its row", lambda: css('#projections tr[data-name="carts-copy"]'), timeout=30)
    wait_until("it to catch up", lambda: caught_up("carts-copy"))
    assert ok("GET", "/projections/carts-copy")["module_sha256"] == ok("GET", "/projections/carts")["module_sha256"]
    # A button outlives the table's refreshes (every 500 ms): one found now still takes a click
    # after three of them (a button remade each time would be stale, and swallow a person's click).
    delete = css('#projections tr[data-name="carts-copy"] button.danger')[0]
    time.sleep(1.6)
    delete.click()
    driver.switch_to.alert.accept()
    wait_until("the deletion", lambda: call("GET", "/projections/carts-copy")[0] == 404)
    wait_until("its row to go", lambda: not css('#projections tr[data-name="carts-copy"]'))

    # 9. A reader token: the same pages, no admin controls; the token survives a reload.
    step("reader token")
    css("#token-forget")[0].click()
    css("#token")[0].send_keys(reader)
    css("#token-form button[type=submit]")[0].click()
    wait_until("the reader role", lambda: text("#who") == "read-only token")
    driver.refresh()
    wait_until("the reader role after a reload", lambda: text("#who") == "read-only token")
    wait_until("the table", lambda: css('#projections tr[data-name="order-totals"]'))
    assert not css(".rebuild-button") and not displayed("#deploy"), "admin controls for a reader"

    # 10. A token limited to one projection: the list is not its to see, the projection is.
    step("projection-limited token")
    limited = ok("POST", "/tokens", {"name": "totals-only", "role": "reader",
                                      "projections": ["order-totals"]})["token"]
    css("#token-forget")[0].click()
    css("#token")[0].send_keys(limited)
    css("#token-form button[type=submit]")[0].click()
    go("/projections")
    wait_until("the open-by-name form", lambda: displayed("#open-projection"))
    type_and_submit('#open-projection input[name="name"]', "order-totals")
    wait_until("the projection page", lambda: driver.current_url.endswith("#/projections/order-totals"))
    type_and_submit("#state-prefix", "customer:")
    wait_until("its state", lambda: [r.find_elements(By.CSS_SELECTOR, "td")[0].text
                                     for r in css("#state tbody tr")] == [i["key"] for i in items])
    shot("8-limited-token")

    errors = browser_errors()
    assert not errors, f"errors in the browser console: {errors}"
    step("all checks passed")
except Exception as failure:
    step(f"FAILED after {time.monotonic() - STARTED:.1f} s: {type(failure).__name__}: {failure}")
    shot("failure")
    print("the page's banner:", text("#banner"), file=sys.stderr)
    print("the page's view:", (text("#view") or "")[:3000], file=sys.stderr)
    for entry in driver.get_log("browser"):
        print("console:", entry, file=sys.stderr)
    raise
finally:
    driver.quit()
