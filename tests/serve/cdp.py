"""A small Chrome DevTools Protocol client for the planner page's browser test: headless Chromium with a debugging
port, one page target, commands over its websocket (websocket-client). Headless `--dump-dom` cannot type into a
page; the protocol can (Input.insertText fires the same `input` event a keystroke does)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
import urllib.request

import websocket

from tests.report.test_browser import CHROMIUM_ARGS


class Browser:
    def __init__(self, chromium: str, profile: str) -> None:
        self.proc = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_ARGS,
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",  # any free port; Chromium prints the one it took on stderr
                f"--user-data-dir={profile}",
                "--window-size=1280,1600",
                "about:blank",
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        port = None
        deadline = time.monotonic() + 300  # a cold start on a loaded machine
        while port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"Chromium exited with {self.proc.returncode} before listening")
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = m and int(m.group(1))
        if port is None:
            raise RuntimeError("Chromium did not open its debugging port within 300 s")
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=60))
        page = next(t for t in targets if t["type"] == "page")
        # no Origin header: Chromium refuses websocket clients from other origins unless --remote-allow-origins
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self._ids = itertools.count(1)

    def send(self, method: str, **params) -> dict:
        n = next(self._ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:  # events arrive in between; only our answer ends the wait
            msg = json.loads(self.ws.recv())
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 300.0):
        """Poll until the expression is truthy; returns its value. The bound only ends a broken page: a plan the
        page waits for takes seconds on a quiet machine and several times that on a loaded one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for: {expression}")

    def type_into(self, element_id: str, text: str) -> None:
        """Focus the input, select its text and type over it, as a user would."""
        self.js(f"document.getElementById({json.dumps(element_id)}).focus()")
        self.js(f"document.getElementById({json.dumps(element_id)}).select()")
        self.send("Input.insertText", text=text)

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            self.proc.wait(10)
