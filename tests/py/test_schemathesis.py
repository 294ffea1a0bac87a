"""Schemathesis (pinned in requirements.txt) against a live ingot, from the OpenAPI document
ingot serves about itself (GET /v1/openapi.json).

Every documented operation is fuzzed in the coverage and fuzzing phases with every check:
no 5xx, statuses, content types and bodies as documented, invalid input refused, valid input
accepted (schemathesis.toml lists the answers that depend on what exists), missing or wrong
keys refused. POST /v1/sessions gets invalid bodies only (schemathesis.toml, fuzz_hooks.py).
Afterwards the gateway must still run and answer /healthz, no session may exist (none was
ever created) and no browser may be left. The run is bounded: a number of examples per
operation, and a wall-clock limit on the schemathesis process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import KEYED_API_KEY, processes_mentioning

HERE = Path(__file__).resolve().parent
ST = Path(sys.executable).with_name("st")
MAX_EXAMPLES = 150
RUN_TIMEOUT_S = 150
# A fixed seed keeps the suite reproducible; set INGOT_FUZZ_SEED to explore others.
SEED = os.environ.get("INGOT_FUZZ_SEED", "20261130")
OUTPUT_TAIL_CHARS = 12_000


def get_json(gw, path: str) -> tuple[int, object]:
    request = urllib.request.Request(gw.base_url + path, headers={"steel-api-key": KEYED_API_KEY})
    with urllib.request.urlopen(request, timeout=10) as res:
        return res.status, json.loads(res.read())


def browsers(gw) -> list[str]:
    """Processes other than ingot that name its data directory: its browsers."""
    return [p for p in processes_mentioning(str(gw.data_dir)) if not p.startswith(f"{gw.proc.pid}:")]


def descendants(pid: int) -> set[str]:
    """The live processes below `pid` (Linux), as `pid: command line`; zombies left out."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name may hold spaces and parentheses: the state follows the last ')'.
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry.name))
    found, stack = set(), list(children.get(pid, []))
    while stack:
        child = stack.pop()
        stack.extend(children.get(child, []))
        try:
            cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        found.add(f"{child}: {cmdline.decode(errors='replace')[:200]}")
    return found


@pytest.mark.timeout(RUN_TIMEOUT_S + 90)
def test_schemathesis_finds_nothing_and_creates_nothing(keyed_gateway, tmp_path):
    gw = keyed_gateway
    before = descendants(gw.proc.pid)
    assert not browsers(gw), "a browser runs before the fuzzing"
    argv = [
        str(ST), "--config-file", str(HERE / "schemathesis.toml"), "--no-color",
        "run", f"{gw.base_url}/v1/openapi.json",
        "--checks", "all",
        "--header", f"steel-api-key: {KEYED_API_KEY}",
        "--phases", "coverage,fuzzing",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", SEED,
        "--workers", "2",
        "--generation-database", "none",
        "--request-timeout", "20",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "fuzz_hooks.py")}
    started = time.monotonic()
    try:
        run = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"")
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        pytest.fail(f"schemathesis ran over {RUN_TIMEOUT_S} s:\n{output[-OUTPUT_TAIL_CHARS:]}")
    took = time.monotonic() - started
    output = run.stdout + run.stderr
    print(f"schemathesis: exit {run.returncode} in {took:.1f} s\n{output[-OUTPUT_TAIL_CHARS:]}")
    assert run.returncode == 0, f"schemathesis found problems:\n{output[-OUTPUT_TAIL_CHARS:]}"
    assert "Specification:    Open API 3.1" in output, output[-OUTPUT_TAIL_CHARS:]

    assert gw.proc.poll() is None, f"ingot exited with {gw.proc.returncode}"
    with urllib.request.urlopen(f"{gw.base_url}/healthz", timeout=10) as res:
        assert res.status == 200
    for query in ("?status=live", ""):
        status, listed = get_json(gw, f"/v1/sessions{query}")
        assert status == 200 and listed["sessions"] == [], f"sessions{query}: {listed}"
    status, usage = get_json(gw, "/v1/usage")
    assert status == 200 and usage["total"]["sessions"] == 0, usage
    new = descendants(gw.proc.pid) - before
    assert not new, "processes started under ingot remain:\n" + "\n".join(sorted(new))
    assert not browsers(gw), "a browser was left running"
