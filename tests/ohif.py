"""OHIF Viewer 3.13.2 in headless Chromium, looking at a study in Orthanc through DICOMweb.

:func:`ohif_dist` fetches the pinned prebuilt viewer once (``npm pack @ohif/app@3.13.2``) into a
cache outside the repository. :func:`look` runs this module in a private network namespace (the
browser can reach nothing but that namespace's loopback): it serves the viewer with a
same-origin proxy to Orthanc's DICOMweb (through the Unix socket that ``tests.orthanc`` relays
Orthanc's HTTP port to), opens the study, double-clicks each series into the viewport, saves a
screenshot of each and reports what the page said. Playwright drives the system Chromium.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OHIF_VERSION = "3.13.2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cxr-triage-tests"
CHROMIUM = "/usr/bin/chromium"
#: What OHIF's error boundary says when a viewport or panel crashes.
ERROR_BOUNDARY = "Something went wrong"

APP_CONFIG = """
window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'dicomweb',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: 'Orthanc',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def ohif_dist(timeout: float = 300.0) -> Path:
    """The viewer's ``dist/`` folder, fetched from the npm registry the first time."""
    target = CACHE / f"ohif-app-{OHIF_VERSION}"
    dist = target / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not installed: cannot fetch the OHIF viewer")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "pack", f"@ohif/app@{OHIF_VERSION}", "--silent"],
        cwd=target,
        check=True,
        timeout=timeout,
        capture_output=True,
    )
    with tarfile.open(target / f"ohif-app-{OHIF_VERSION}.tgz") as tar:
        tar.extractall(target, filter="data")
    return dist


@dataclass
class Look:
    """What the viewer showed: per series, the text on the page and a screenshot."""

    series: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors and page exceptions


def look(orthanc_socket: Path, study_uid: str, shots: Path, timeout: float = 240.0) -> Look:
    """Open ``study_uid`` in OHIF in a private network namespace; see the module docstring."""
    dist = ohif_dist()
    shots.mkdir(parents=True, exist_ok=True)
    inside = (
        "ip link set lo up && exec "
        f"{sys.executable} -m tests.ohif --socket {orthanc_socket} --dist {dist} "
        f"--study {study_uid} --shots {shots}"
    )
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", inside],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the viewer check failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Look(**data)


# -- inside the namespace -----------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)


def _handler(dist: Path, orthanc_socket: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(dist), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/dicom-web"):
                self._proxy()
            elif path == "/app-config.js":
                body = APP_CONFIG.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/javascript")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                if not (dist / path.lstrip("/")).is_file():
                    self.path = "/index.html"  # the viewer's own routes
                super().do_GET()

        def _proxy(self) -> None:
            conn = _UnixHTTPConnection(orthanc_socket)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            conn.request("GET", self.path, headers=headers)
            rsp = conn.getresponse()
            body = rsp.read()
            self.send_response(rsp.status)
            for key, value in rsp.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            conn.close()

    return Handler


def _serve(dist: Path, orthanc_socket: str) -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(dist, orthanc_socket))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def _dismiss_overlays(page: Any) -> None:
    """OHIF's first-run tour swallows clicks."""
    for name in ("Skip", "Skip all", "Close", "Got it"):
        button = page.get_by_role("button", name=name, exact=True)
        if button.count():
            button.first.click(timeout=2000)
    page.keyboard.press("Escape")


def _open(page: Any, url: str) -> Any:
    """Load the viewer on ``url``; the study's series thumbnails once they are there."""
    page.goto(url)
    thumbs = page.locator('[data-cy^="study-browser-thumbnail"]')
    thumbs.first.wait_for(timeout=60_000)
    time.sleep(2)
    _dismiss_overlays(page)
    return thumbs


def _wait_for_annotations(page: Any) -> None:
    """The SR viewport adds its measurements once the SR is read, which may be after the image
    was rendered; they are drawn on the next render. Resizing the window renders again, as a
    user's first interaction would."""
    drawn = "() => [...document.querySelectorAll('svg text')].some(t => t.textContent)"
    for attempt in range(4):
        try:
            page.wait_for_function(drawn, timeout=5000)
            return
        except Exception:  # not drawn yet: render again
            page.set_viewport_size({"width": 1400 - 20 * (attempt % 2), "height": 900})
    page.set_viewport_size({"width": 1400, "height": 900})


def _capture(page: Any, shot: Path, label: str) -> dict[str, Any]:
    """A screenshot, the page's text, the text drawn on the images (SVG), any crash."""
    page.screenshot(path=str(shot))
    shot.with_suffix(".html").write_text(page.content())  # for reading what failed
    text = page.inner_text("body")
    drawn = page.eval_on_selector_all("svg text", "els => els.map(e => e.textContent)")
    entry = {
        "thumbnail": label,
        "text": text,
        "annotations": [t for t in drawn if t],
        "screenshot": str(shot),
        "crash": "",
    }
    if ERROR_BOUNDARY in text:
        entry["crash"] = _error_details(page)
    return entry


def _error_details(page: Any) -> str:
    """What OHIF's error toast says behind "Show Details" (the message and its stack)."""
    before = page.inner_text("body")
    try:
        page.get_by_text("Show Details").first.click(timeout=5000, force=True)
        time.sleep(1)
        dialog = page.get_by_role("dialog")
        return str(dialog.first.inner_text(timeout=5000) if dialog.count() else page.content())
    except Exception as exc:  # the toast may have gone: keep what the page said
        return f"{before}\n(details not shown: {type(exc).__name__})"


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--dist", type=Path, required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--shots", type=Path, required=True)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    port = _serve(args.dist, args.socket)
    result = Look()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("pageerror", lambda exc: result.errors.append(f"page: {exc}"))
        page.on(
            "console",
            lambda msg: (
                result.errors.append(f"console: {msg.text}") if msg.type == "error" else None
            ),
        )
        url = f"http://127.0.0.1:{port}/viewer?StudyInstanceUIDs={args.study}"
        thumbs = _open(page, url)
        for n in range(thumbs.count()):
            # Each series on a fresh page: what one series leaves behind cannot hide another's
            # failure, and the SR viewport draws its measurements more reliably first thing.
            thumbs = _open(page, url) if n else thumbs
            thumb = thumbs.nth(n)
            label = thumb.inner_text(timeout=5000).replace("\n", " ")
            thumb.dblclick(timeout=10_000)
            time.sleep(2)
            if label.startswith("SR"):
                _wait_for_annotations(page)
            _dismiss_overlays(page)
            result.series.append(_capture(page, args.shots / f"series-{n + 1}.png", label))
        browser.close()
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
