"""Look at ``report.html`` in a real browser: headless Chromium renders it at a desktop
width, measures the layout (images loaded, horizontal overflow, tables that do not fit)
and saves a full-page screenshot.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
NUL-terminated JSON messages on file descriptors 3 and 4), so nothing listens on a port
and no websocket library is needed. It is optional: without a Chromium binary,
:func:`find_chromium` returns None and the report is still written.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from headsurgeon.core.atomic import atomic_write_bytes

WIDTH = 1280
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
              "chrome", "headless_shell")

# Runs in the page once it has loaded: waits for every image to decode, then reports
# what a reader would see go wrong.
MEASURE = """(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const de = document.documentElement;
  return {
    scrollWidth: de.scrollWidth, clientWidth: de.clientWidth, height: de.scrollHeight,
    images: imgs.map(i => ({alt: i.alt, naturalWidth: i.naturalWidth,
                            width: i.getBoundingClientRect().width, complete: i.complete})),
    tables: [...document.querySelectorAll('table')].map(t => {
      const p = t.parentElement, cs = getComputedStyle(p), box = p.getBoundingClientRect();
      const padR = parseFloat(cs.paddingRight), padL = parseFloat(cs.paddingLeft);
      return {first: (t.rows[0] && t.rows[0].cells[0]) ? t.rows[0].cells[0].textContent : '',
              width: t.getBoundingClientRect().width, right: t.getBoundingClientRect().right,
              container: p.clientWidth - padL - padR,
              containerRight: box.left + p.clientLeft + p.clientWidth - padR};
    }),
    overflowing: [...document.body.querySelectorAll('*')]
      .filter(e => e.getBoundingClientRect().right > de.clientWidth + 0.5)
      .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')),
  };
})()"""


class BrowserError(RuntimeError):
    """Chromium could not be started or stopped answering."""


def find_chromium() -> Optional[str]:
    """A Chromium (or Chrome) binary: ``$HEADSURGEON_CHROMIUM`` if set, else the first of
    the usual names on PATH."""
    env = os.environ.get("HEADSURGEON_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _Browser:
    """One headless Chromium process and its DevTools pipe."""

    def __init__(self, binary: str, profile: str, timeout: float):
        self.timeout, self._next_id, self._buf = timeout, 0, b""
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [binary, "--headless", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                "--disable-gpu", "--hide-scrollbars", "--mute-audio", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-dev-shm-usage"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run its sandbox as root

        def as_fd3_fd4():  # in the child: the pipe ends become its fds 3 and 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)
        try:
            self.proc = subprocess.Popen(args + ["about:blank"], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         preexec_fn=as_fd3_fd4, close_fds=False)
        except OSError as exc:
            raise BrowserError(f"cannot start {binary}: {exc.strerror or exc}") from exc
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)

    def call(self, method: str, session: Optional[str] = None, **params) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self._next_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait(self, match) -> dict:
        """The next message for which ``match`` is true (events before it are dropped)."""
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if match(msg):
                    return msg
            left = deadline - time.monotonic()
            ready = select.select([self._from_browser], [], [], max(0.0, left))[0]
            chunk = os.read(self._from_browser, 1 << 20) if ready else b""
            if not chunk:
                raise BrowserError("Chromium stopped answering" if ready else
                                   f"Chromium did not answer within {self.timeout:.0f}s")
            self._buf += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (BrowserError, OSError):
            pass
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        try:
            self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def render(html_path: Path, png_path: Optional[Path] = None, *, width: int = WIDTH,
           binary: Optional[str] = None, timeout: float = 120.0) -> dict:
    """Load ``html_path`` at ``width`` CSS pixels, return the layout measurements (see
    MEASURE) and, when ``png_path`` is given, write a full-page PNG screenshot there."""
    binary = binary or find_chromium()
    if binary is None:
        raise BrowserError("no Chromium found (install the chromium package)")
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="headsurgeon-chromium-") as profile:
        b = _Browser(binary, profile, timeout)
        try:
            target = b.call("Target.createTarget", url="about:blank")["targetId"]
            s = b.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            b.call("Emulation.setDeviceMetricsOverride", s, width=width, height=800,
                   deviceScaleFactor=1, mobile=False)
            b.call("Page.enable", s)
            b.call("Page.navigate", s, url=url)
            b.wait(lambda m: m.get("method") == "Page.loadEventFired"
                   and m.get("sessionId") == s)
            res = b.call("Runtime.evaluate", s, expression=MEASURE, awaitPromise=True,
                         returnByValue=True)
            if "exceptionDetails" in res:
                raise BrowserError(f"measuring the page failed: {res['exceptionDetails']}")
            layout = res["result"]["value"]
            if png_path is not None:
                b.call("Emulation.setDeviceMetricsOverride", s, width=width,
                       height=max(1, int(layout["height"])), deviceScaleFactor=1, mobile=False)
                shot = b.call("Page.captureScreenshot", s, format="png", fromSurface=True)
                atomic_write_bytes(png_path, base64.b64decode(shot["data"]))
        finally:
            b.close()
    return layout


def layout_problems(layout: dict, width: int = WIDTH) -> list[str]:
    """What a reader would notice: images that did not load, a page wider than the
    window (horizontal scroll), tables wider than the column they sit in."""
    problems = [f"image {i['alt']!r} did not load" for i in layout["images"]
                if not i["complete"] or i["naturalWidth"] <= 0]
    if layout["scrollWidth"] > width:
        problems.append(f"page is {layout['scrollWidth']}px wide at {width}px "
                        f"(overflowing: {', '.join(layout['overflowing'][:5])})")
    problems += [f"table starting {t['first']!r} is {t['width']:.0f}px wide in a "
                 f"{t['container']}px column" for t in layout["tables"]
                 if t["right"] > t["containerRight"] + 0.5]
    return problems


def save_screenshot(run_dir: Path, log=print) -> Optional[Path]:
    """``report.png`` beside ``report.html`` when a Chromium is available; otherwise (or
    if the browser fails) say so and go on: the report itself is already written."""
    run_dir = Path(run_dir)
    if find_chromium() is None:
        log("[report] report.png skipped: no Chromium found "
            "(install the chromium package for a screenshot of the report)")
        return None
    out = run_dir / "report.png"
    try:
        layout = render(run_dir / "report.html", out)
    except (BrowserError, OSError) as exc:
        log(f"[report] report.png skipped: {exc}")
        return None
    problems = layout_problems(layout)
    log(f"[report] screenshot: {out}" + (f" (layout: {'; '.join(problems)})" if problems else ""))
    return out
