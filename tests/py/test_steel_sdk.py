"""Steel's official Python SDK (steel-sdk) and Playwright for Python against ingot.

Every client validates responses strictly (`_strict_response_validation=True`), so a
Session field of the wrong type or an enum value Steel does not know (a `releaseReason`,
a `status`) fails the call with APIResponseValidationError. Raw CDP messages go over
`websockets`; Playwright only connects over CDP (no browser of its own).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from playwright.sync_api import sync_playwright
from steel import APIResponseValidationError, BadRequestError, Steel
from steel.types import Session
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONNECT_TIMEOUT_MS = 60_000
MAX_LISTED = 500  # a listing that yields more than this is not terminating


def make_client(gw, **kwargs) -> Steel:
    return Steel(
        base_url=gw.base_url,
        steel_api_key="unused",
        max_retries=0,
        timeout=60,
        _strict_response_validation=True,
        **kwargs,
    )


def release_quietly(client: Steel, session_id: str) -> None:
    try:
        client.sessions.release(session_id)
    except Exception:  # noqa: BLE001 (cleanup only)
        pass


def wait_for(client: Steel, session_id: str, predicate, timeout_s: float) -> Session:
    """Polls retrieve until predicate(session) holds or timeout_s passes; returns the last."""
    deadline = time.monotonic() + timeout_s
    session = client.sessions.retrieve(session_id)
    while not predicate(session) and time.monotonic() < deadline:
        time.sleep(0.1)
        session = client.sessions.retrieve(session_id)
    return session


def ended(session: Session) -> bool:
    return session.status != "live"


def list_all(client: Steel, **params) -> list:
    """Every listed session, across pages (bounded)."""
    items = []
    for item in client.sessions.list(limit=5, **params):
        items.append(item)
        assert len(items) <= MAX_LISTED, "list() does not terminate"
    return items


def cdp_exchange(ws, message: dict, timeout_s: float = 10) -> dict:
    """Sends one CDP command and returns the message that answers its id (events skipped)."""
    ws.send(json.dumps(message))
    deadline = time.monotonic() + timeout_s
    while True:
        reply = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
        if reply.get("id") == message["id"]:
            return reply


def browser_close_raw(websocket_url: str) -> dict:
    """Sends Browser.close over a raw CDP WebSocket; returns the reply, checks the close."""
    with ws_connect(websocket_url, open_timeout=10, close_timeout=5, max_size=None) as ws:
        reply = cdp_exchange(ws, {"id": 1, "method": "Browser.close"})
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1000, f"close {ws.close_code} {ws.close_reason}"
    return reply


def assert_png(data: bytes) -> tuple[int, int]:
    assert isinstance(data, bytes)
    assert data[:8] == PNG_SIGNATURE, "screenshot is not a PNG"
    assert len(data) > 1_000, f"screenshot is only {len(data)} bytes"
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100, f"screenshot is {width}x{height}"
    return width, height


def test_create_drive_with_playwright_release(gateway, page_server):
    client = make_client(gateway)
    session = client.sessions.create(api_timeout=60_000)
    try:
        assert isinstance(session, Session)
        assert session.status == "live"
        assert session.release_reason is None
        assert session.timeout == 60_000
        assert session.websocket_url == f"ws://127.0.0.1:{gateway.port}/?sessionId={session.id}"

        with sync_playwright() as pw:
            browser = pw.chromium.connect_over_cdp(session.websocket_url, timeout=CONNECT_TIMEOUT_MS)
            try:
                assert browser.is_connected()
                contexts = browser.contexts
                assert contexts and contexts[0].pages, "the session has no open page"
                page = contexts[0].pages[0]
                response = page.goto(f"{page_server}/", wait_until="load")
                assert response is not None and response.status == 200
                assert page.title() == "ingot py e2e"
                assert page.locator("#greeting").text_content() == "hello from 127.0.0.1"
                assert page.evaluate("() => { window.__marker = 6 * 7; return window.__marker; }") == 42
                assert page.evaluate("() => location.host") == page_server.removeprefix("http://")
                assert_png(page.screenshot(type="png"))
            finally:
                browser.close()  # over CDP: disconnects, the session lives on

        assert client.sessions.retrieve(session.id).status == "live"
        result = client.sessions.release(session.id)
        assert result.success is True
        assert isinstance(result.message, str)

        released = client.sessions.retrieve(session.id)
        assert released.status == "released"
        assert released.release_reason == "user_requested"
        # Release is idempotent.
        assert client.sessions.release(session.id).success is True
    finally:
        release_quietly(client, session.id)


def test_inactivity_timeout_releases_an_idle_session(gateway):
    client = make_client(gateway)
    started = time.monotonic()
    session = client.sessions.create(inactivity_timeout=1000, api_timeout=60_000)
    try:
        assert session.inactivity_timeout == 1000
        assert session.timeout == 60_000
        assert session.status == "live"
        assert client.sessions.retrieve(session.id).inactivity_timeout == 1000

        time.sleep(3)  # no CDP client at all: idle from the start
        after = wait_for(client, session.id, ended, timeout_s=5)
        assert after.status == "released", f"still {after.status} after {time.monotonic() - started:.1f} s"
        assert after.release_reason == "inactivity_timeout"
        assert after.inactivity_timeout == 1000
        # Ended by inactivity, long before its 60 s timeout.
        assert after.duration < 30_000, f"duration {after.duration} ms"
    finally:
        release_quietly(client, session.id)


def test_strict_validation_refuses_unknown_release_reason():
    """Control: the strict client really does refuse a releaseReason Steel does not know."""
    body = {
        "id": "00000000-0000-4000-8000-000000000000",
        "createdAt": "2025-01-01T00:00:00Z",
        "creditsUsed": 1,
        "debugUrl": "http://127.0.0.1:1/debug",
        "dimensions": {"width": 1920, "height": 1080},
        "duration": 1,
        "eventCount": 0,
        "optimizeBandwidth": {},
        "proxyBytesUsed": 0,
        "proxySource": None,
        "sessionViewerUrl": "http://127.0.0.1:1/view",
        "status": "released",
        "timeout": 300000,
        "websocketUrl": "ws://127.0.0.1:1/",
    }
    reasons = iter(["gateway_shutdown", "user_requested"])
    transport = httpx.MockTransport(lambda req: httpx.Response(200, json={**body, "releaseReason": next(reasons)}))
    with httpx.Client(transport=transport) as http_client:
        client = Steel(
            base_url="http://127.0.0.1:1",
            steel_api_key="unused",
            max_retries=0,
            http_client=http_client,
            _strict_response_validation=True,
        )
        with pytest.raises(APIResponseValidationError):
            client.sessions.retrieve(body["id"])
        assert client.sessions.retrieve(body["id"]).release_reason == "user_requested"


def test_strict_client_parses_sessions_in_every_state(own_gateway):
    gw = own_gateway
    client = make_client(gw)
    ids: list[str] = []

    def create(**params) -> Session:
        s = client.sessions.create(**params)
        ids.append(s.id)
        assert s.status == "live" and s.release_reason is None
        return s

    try:
        # Live: create, retrieve, list (all and status=live).
        user = create(api_timeout=60_000)
        assert client.sessions.retrieve(user.id).status == "live"
        live_ids = {s.id for s in list_all(client, status="live")}
        assert user.id in live_ids
        assert user.id in {s.id for s in list_all(client)}

        # Released by the user.
        assert client.sessions.release(user.id).success is True
        got = client.sessions.retrieve(user.id)
        assert (got.status, got.release_reason) == ("released", "user_requested")

        # Released by its timeout, and ended by inactivity (both waited on below). Three
        # seconds, not the minimum of one: on a loaded machine a create alone may take one.
        timed = create(api_timeout=3000)
        idle = create(inactivity_timeout=3000, api_timeout=60_000)

        # A browser closed by a CDP client: {"id":1,"method":"Browser.close"} on the root session.
        closed = create(api_timeout=60_000)
        assert browser_close_raw(closed.websocket_url) == {"id": 1, "result": {}}
        got = wait_for(client, closed.id, ended, timeout_s=10)
        assert (got.status, got.release_reason) == ("released", "browser_closed")

        got = wait_for(client, timed.id, ended, timeout_s=10)
        assert (got.status, got.release_reason) == ("released", "timeout")
        assert got.timeout == 3000
        got = wait_for(client, idle.id, ended, timeout_s=10)
        assert (got.status, got.release_reason) == ("released", "inactivity_timeout")

        # Released by release_all.
        all_a = create(api_timeout=60_000)
        all_b = create(api_timeout=60_000)
        result = client.sessions.release_all()
        assert result.success is True
        assert isinstance(result.message, str)
        for sid in (all_a.id, all_b.id):
            got = client.sessions.retrieve(sid)
            assert (got.status, got.release_reason) == ("released", "user_requested")

        # Every state once more through retrieve and list, each parsed strictly.
        expected = {
            user.id: "user_requested",
            timed.id: "timeout",
            idle.id: "inactivity_timeout",
            closed.id: "browser_closed",
            all_a.id: "user_requested",
            all_b.id: "user_requested",
        }
        for sid, reason in expected.items():
            got = client.sessions.retrieve(sid)
            assert (got.status, got.release_reason) == ("released", reason), sid
        listed = {s.id: s for s in list_all(client)}
        released = {s.id: s for s in list_all(client, status="released")}
        for sid, reason in expected.items():
            assert listed[sid].release_reason == reason, sid
            assert released[sid].status == "released", sid
            assert released[sid].release_reason == reason, sid
        assert all(s.status == "released" for s in released.values())
        assert [s for s in list_all(client, status="live") if s.id in expected] == []
        assert list_all(client, status="failed") == []
    finally:
        for sid in ids:
            release_quietly(client, sid)


def test_browser_close_on_a_flattened_session_answers_on_that_session(gateway):
    """Playwright's driver matches replies by session: Browser.close sent on a flattened
    session is answered on that session, as Chromium would."""
    client = make_client(gateway)
    session = client.sessions.create(api_timeout=60_000)
    try:
        with ws_connect(session.websocket_url, open_timeout=10, close_timeout=5, max_size=None) as ws:
            attached = cdp_exchange(ws, {"id": 1, "method": "Target.attachToBrowserTarget"})
            cdp_session = attached["result"]["sessionId"]
            version = cdp_exchange(ws, {"id": 2, "sessionId": cdp_session, "method": "Browser.getVersion"})
            assert version.get("sessionId") == cdp_session  # Chromium's own answer, passed through
            reply = cdp_exchange(ws, {"id": 3, "sessionId": cdp_session, "method": "Browser.close"})
            assert reply.get("sessionId") == cdp_session, f"reply {reply}"
    finally:
        got = wait_for(client, session.id, ended, timeout_s=10)
        release_quietly(client, session.id)
    assert (got.status, got.release_reason) == ("released", "browser_closed")


def test_bad_inactivity_timeout_is_a_400_naming_the_field(gateway):
    client = make_client(gateway)
    with pytest.raises(BadRequestError) as info:
        client.sessions.create(inactivity_timeout=10)
    err = info.value
    assert err.status_code == 400
    assert "inactivityTimeout" in err.message, err.message
    assert isinstance(err.body, dict) and "inactivityTimeout" in str(err.body)


def test_timeout_endpoint_through_raw_post(gateway):
    client = make_client(gateway)
    session = client.sessions.create(api_timeout=60_000)
    try:
        updated = client.post(
            f"/v1/sessions/{session.id}/timeout",
            cast_to=Session,
            body={"timeout": 120_000},
        )
        assert isinstance(updated, Session)
        assert updated.id == session.id
        assert updated.status == "live"
        assert updated.timeout == 120_000
        assert client.sessions.retrieve(session.id).timeout == 120_000
    finally:
        release_quietly(client, session.id)


def first_load_title(client: Steel, page_server: str, **create) -> str:
    """The title of /whoami on the first load in a new session created with `create`."""
    session = client.sessions.create(api_timeout=60_000, **create)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.connect_over_cdp(session.websocket_url, timeout=CONNECT_TIMEOUT_MS)
            try:
                page = browser.contexts[0].pages[0]
                page.goto(f"{page_server}/whoami", wait_until="load")
                return page.title()
            finally:
                browser.close()
    finally:
        release_quietly(client, session.id)


def test_context_reuse_logs_the_next_session_in(gateway, page_server):
    """Log in on a page, read the session's context with the SDK (strictly validated),
    create a new session with it, and its first load shows the logged-in state."""
    client = make_client(gateway)
    session = client.sessions.create(api_timeout=60_000)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.connect_over_cdp(session.websocket_url, timeout=CONNECT_TIMEOUT_MS)
            try:
                browser.contexts[0].pages[0].goto(f"{page_server}/login", wait_until="load")
                context = client.sessions.context(session.id)
            finally:
                browser.close()
    finally:
        release_quietly(client, session.id)
    assert any(c.name == "auth" and c.value == "yes" for c in context.cookies or [])
    assert (context.local_storage or {}).get(page_server, {}).get("token") == "t123", context
    assert first_load_title(client, page_server) == "anonymous"
    saved = context.model_dump(by_alias=True, exclude_none=True)
    assert first_load_title(client, page_server, session_context=saved) == "logged in"


def test_session_files_round_trip_and_refuse_a_url(gateway):
    client = make_client(gateway)
    session = client.sessions.create(timeout=60_000)
    files = client.sessions.files
    try:
        stored = files.upload(session.id, file=("in.txt", b"hello from python"), path="py/in.txt")
        assert stored.path.endswith(f"/{session.id}/py/in.txt"), stored.path
        assert stored.size == len(b"hello from python")
        listed = files.list(session.id)
        assert [f.path for f in listed.data] == [stored.path]
        assert files.download("py/in.txt", session_id=session.id).read() == b"hello from python"
        archive = files.download_archive(session.id).read()
        assert archive[:2] == b"PK" and b"py/in.txt" in archive
        # A URL in place of a file (the SDK itself only sends bytes): never fetched.
        refused = httpx.post(
            f"{gateway.base_url}/v1/sessions/{session.id}/files",
            headers={"content-type": "multipart/form-data; boundary=B"},
            content=(
                b'--B\r\ncontent-disposition: form-data; name="file"\r\n\r\n'
                b"http://127.0.0.1:9/secret\r\n--B--\r\n"
            ),
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "url_upload_refused"
        files.delete("py/in.txt", session_id=session.id)
        assert files.list(session.id).data == []
        files.upload(session.id, file=("a.txt", b"a"))
        files.delete_all(session.id)
        assert files.list(session.id).data == []
    finally:
        release_quietly(client, session.id)
