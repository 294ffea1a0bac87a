"""Fixtures for ingot's Python end-to-end tests.

`gateway` runs the real `ingot` binary (INGOT_BIN, default target/debug/ingot) on a free
loopback port with a fresh data dir and no warm pool, like tests/e2e/harness.mjs does;
`page_server` serves two static pages on 127.0.0.1 so that no test navigates off the
machine. Every wait here is bounded.

The gateway inherits this process's environment, so `INGOT_ENGINE=chromium pytest …` runs the
tests on full Chromium (tests/run.sh does); the engine a gateway reports in /healthz is then
checked against it, so such a run cannot pass on the default engine by mistake.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INGOT_BIN = os.environ.get("INGOT_BIN") or str(REPO_ROOT / "target" / "debug" / "ingot")

HEALTH_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
LOG_TAIL_LINES = 80

# The SDK reads these when arguments are left out; keep the tests independent of the caller.
for _name in ("STEEL_API_KEY", "STEEL_BASE_URL", "STEEL_CUSTOM_HEADERS"):
    os.environ.pop(_name, None)


def free_port() -> int:
    """A free TCP port on 127.0.0.1, as the kernel hands it out."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(needle: str) -> list[str]:
    """Processes (other than this one) whose command line contains `needle` (Linux only)."""
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # exited meanwhile
        if needle in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


class Gateway:
    """One ingot process on 127.0.0.1:<port> with its own temporary directory."""

    def __init__(self, extra_args: list[str] | None = None):
        if not os.access(INGOT_BIN, os.X_OK):
            raise RuntimeError(f"ingot binary not found at {INGOT_BIN}; run `cargo build` or set INGOT_BIN")
        self.root = Path(tempfile.mkdtemp(prefix="ingot-py-"))
        self.data_dir = self.root / "data"
        self.data_dir.mkdir()
        self.log_path = self.root / "ingot.log"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args or [])
        self.health: dict | None = None  # the first 200 answer of /healthz
        argv = [
            INGOT_BIN,
            "--listen", f"127.0.0.1:{self.port}",
            "--data-dir", str(self.data_dir),
            "--pool-size", "0",
            *(extra_args or []),
        ]
        env = {"RUST_LOG": "info", **os.environ, "NO_COLOR": "1"}
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, env=env
        )

    def log(self, n: int = LOG_TAIL_LINES) -> str:
        """The last `n` lines ingot printed, for failure messages."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        last = "no attempt"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"ingot exited with {code} before becoming healthy\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2) as res:
                    if res.status == 200:
                        self.health = json.loads(res.read())
                        self._check_engine()
                        return
                    last = f"status {res.status}"
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            time.sleep(0.1)
        raise RuntimeError(f"ingot not healthy after {HEALTH_TIMEOUT_S} s (last: {last})\n{self.log()}")

    def requested_engine(self) -> str | None:
        """The engine this gateway was asked for: its `--engine` argument, else INGOT_ENGINE."""
        args = self.extra_args
        if "--engine" in args:
            return args[args.index("--engine") + 1]
        return os.environ.get("INGOT_ENGINE") or None

    @property
    def engines(self) -> dict:
        """/healthz's `engines` ({} before the gateway reported them)."""
        return (self.health or {}).get("engines") or {}

    def _check_engine(self) -> None:
        want = self.requested_engine()
        if want and self.engines.get("default") != want:
            raise RuntimeError(f"asked for engine {want}, /healthz reports engines {self.engines}\n{self.log()}")

    def stop(self) -> list[str]:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; removes the temp dir. Returns problems."""
        problems = []
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                    problems.append(f"ingot did not exit within {STOP_TIMEOUT_S} s of SIGTERM; killed")
            if self.proc.returncode != 0:
                problems.append(f"ingot exited with {self.proc.returncode}")
            leftovers = processes_mentioning(str(self.data_dir))
            if leftovers:
                problems.append("processes still running after ingot exited:\n" + "\n".join(leftovers))
            if problems:
                problems.append(f"--- last ingot log lines ---\n{self.log()}")
        finally:
            self._log_file.close()
            shutil.rmtree(self.root, ignore_errors=True)
        return problems


_started: list[Gateway] = []


def _start_gateway(extra_args: list[str] | None = None) -> Gateway:
    gw = Gateway(extra_args)
    _started.append(gw)
    try:
        gw.wait_healthy()
    except BaseException:
        gw.stop()
        _started.remove(gw)
        raise
    return gw


def _stop_gateway(gw: Gateway) -> None:
    _started.remove(gw)
    problems = gw.stop()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def gateway():
    """One ingot shared by the tests that do not end every session."""
    gw = _start_gateway()
    yield gw
    _stop_gateway(gw)


@pytest.fixture
def own_gateway():
    """An ingot for one test alone (e.g. one that calls release_all)."""
    gw = _start_gateway()
    yield gw
    _stop_gateway(gw)


# The API key of `keyed_gateway` (its tenant is `keyed`).
KEYED_API_KEY = "keyed-key-0123456789abcdef"


@pytest.fixture
def keyed_gateway():
    """An ingot for one test alone that requires an API key: KEYED_API_KEY."""
    gw = _start_gateway(["--api-keys", f"keyed:{KEYED_API_KEY}"])
    yield gw
    _stop_gateway(gw)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Appends the running gateways' last log lines to a failed test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        for gw in _started:
            report.sections.append((f"ingot log (port {gw.port})", gw.log()))


PAGES = {
    "/": b"""<!doctype html>
<html>
<head><meta charset="utf-8"><title>ingot py e2e</title>
<style>body{font-family:sans-serif;background:#f4efe6;margin:40px}h1{color:#7a3e12}</style></head>
<body>
<h1 id="greeting">hello from 127.0.0.1</h1>
<p>Static page served by the ingot Python end-to-end tests.</p>
</body>
</html>
""",
    # Context reuse: /login sets a cookie and a localStorage token; /whoami says, from its
    # first script, whether both are there.
    "/login": b"""<!doctype html><title>login</title><script>
document.cookie = "auth=yes; max-age=3600; path=/";
localStorage.setItem("token", "t123");
</script>""",
    "/whoami": b"""<!doctype html><script>
document.title = document.cookie.includes("auth=yes") && localStorage.getItem("token") === "t123"
  ? "logged in" : "anonymous";
</script>""",
}


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = PAGES.get(self.path.split("?", 1)[0])
        if body is None:
            self.send_response(404)
            body = b"not found\n"
            self.send_header("content-type", "text/plain")
        else:
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("cache-control", "no-store")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002
        pass  # keep test output quiet


@pytest.fixture
def page_server():
    """Serves PAGES on 127.0.0.1 (a free port); yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
