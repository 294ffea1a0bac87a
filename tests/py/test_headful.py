"""A headful session (`headless=False`: full Chromium on an Xvfb display of its own) through
Steel's Python SDK and Playwright for Python: the Session JSON says `headless: false`, a page
served on 127.0.0.1 renders, a screenshot has the session's size and shows the page, and
release leaves none of its processes behind.

Needs Debian's `chromium` and `xvfb` (deploy/install-deps.sh installs them): /healthz must say
`engines.headful: true`.
"""

from __future__ import annotations

import base64
import os
import time

from playwright.sync_api import sync_playwright
from steel.types import Session

from conftest import processes_mentioning
from test_steel_sdk import CONNECT_TIMEOUT_MS, assert_png, make_client, release_quietly

DIMENSIONS = {"width": 1000, "height": 700}
GONE_WITHIN_S = 15

# Samples the middle of the left and the right half of a PNG (base64), decoded by the page.
SAMPLE_PNG = """async (b64) => {
  const img = new Image();
  img.src = `data:image/png;base64,${b64}`;
  await img.decode();
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const at = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
  const y = Math.floor(canvas.height * 0.75);
  return {left: at(Math.floor(canvas.width / 4), y), right: at(Math.floor(canvas.width * 3 / 4), y)};
}"""

# Paints the page's left half red and its right half blue, so a screenshot that shows it is
# neither blank nor another page's.
PAINT = """() => {
  for (const [left, color] of [['0', '#d00'], ['50vw', '#00d']]) {
    const d = document.createElement('div');
    d.style.cssText = `position:fixed;top:0;left:${left};width:50vw;height:100vh;background:${color}`;
    document.body.append(d);
  }
}"""


def is_red(rgb) -> bool:
    r, g, b = rgb
    return r > 150 and g < 90 and b < 90


def is_blue(rgb) -> bool:
    r, g, b = rgb
    return b > 150 and r < 90 and g < 90


def session_processes(gw, session_id: str) -> list[str]:
    """The session's browser and helpers (and a display that names its directory)."""
    return processes_mentioning(os.path.join(str(gw.data_dir), "sessions", session_id))


def test_headful_session_with_playwright(gateway, page_server):
    assert gateway.engines.get("headful") is True, (
        f"headful sessions unavailable (/healthz engines: {gateway.engines}); "
        "deploy/install-deps.sh installs chromium and xvfb"
    )
    client = make_client(gateway)
    session = client.sessions.create(headless=False, dimensions=DIMENSIONS, api_timeout=120_000)
    try:
        assert isinstance(session, Session)
        assert session.status == "live"
        assert session.headless is False, "the Session JSON says headless: false"
        assert (session.dimensions.width, session.dimensions.height) == (DIMENSIONS["width"], DIMENSIONS["height"])
        assert client.sessions.retrieve(session.id).headless is False
        assert session_processes(gateway, session.id), "the session has a browser"

        with sync_playwright() as pw:
            browser = pw.chromium.connect_over_cdp(session.websocket_url, timeout=CONNECT_TIMEOUT_MS)
            try:
                page = browser.contexts[0].pages[0]
                response = page.goto(f"{page_server}/", wait_until="load")
                assert response is not None and response.status == 200
                assert page.title() == "ingot py e2e"
                assert page.evaluate("() => [screen.width, screen.height]") == [
                    DIMENSIONS["width"],
                    DIMENSIONS["height"],
                ], "the display has the session's dimensions"
                identity = page.evaluate("() => [navigator.userAgent, navigator.webdriver]")
                assert "HeadlessChrome" not in identity[0] and identity[1] is False, identity
                page.evaluate(PAINT)
                png = page.screenshot(type="png")
                assert_png(png)
                size = (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"))
                assert size == (DIMENSIONS["width"], DIMENSIONS["height"]), f"screenshot is {size}"
                sample = page.evaluate(SAMPLE_PNG, base64.b64encode(png).decode())
                assert is_red(sample["left"]) and is_blue(sample["right"]), f"screenshot does not show the page: {sample}"
            finally:
                browser.close()  # over CDP: disconnects, the session lives on

        assert client.sessions.release(session.id).success is True
        deadline = time.monotonic() + GONE_WITHIN_S
        while session_processes(gateway, session.id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session_processes(gateway, session.id) == [], "processes left after release"
        assert client.sessions.retrieve(session.id).status == "released"
    finally:
        release_quietly(client, session.id)
