#!/usr/bin/env python3
"""operator-ui.py --ui URL --password-file F --shot PNG --show N,N.. [--start-end N]

The operator's side of scripts/demo.sh in a real headless Chromium on the
host, through chromedriver (WebDriver over HTTP on 127.0.0.1): log in to
the operator UI, wait until the request list shows every acceptance number
of --show (each row naming its router), save a PNG screenshot of the page,
then with --start-end press "start" on that request (state "in progress")
and "end" (state "ended") and save a second screenshot next to the first
(NAME-ended.png). One "ok   - ..." / "FAIL - ..." line per check; exit 0
when all passed. Only the standard library (urllib, json, base64).

Environment: CHROMEDRIVER [/usr/bin/chromedriver], CHROMIUM
[/usr/lib/chromium/chromium], UI_TIMEOUT (s per wait) [60].
"""
import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
TIMEOUT = float(os.environ.get("UI_TIMEOUT", "60"))
FAILED = 0


def check(name, ok, detail=""):
    global FAILED
    if ok:
        print("ok   - " + name, flush=True)
    else:
        FAILED += 1
        print("FAIL - " + name, flush=True)
        if detail:
            print("       | " + str(detail)[:400], flush=True)
    return ok


class WebDriverError(Exception):
    pass


class Browser:
    def __init__(self, port, profile):
        self.base = "http://127.0.0.1:%d" % port
        self.session = None
        self.profile = profile

    def wd(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT + 30) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            try:
                v = json.load(e)
            except ValueError:
                v = {}
            raise WebDriverError("%s %s: %s" % (method, path, v.get("value", {}).get("message", e)))

    def start(self, chromium):
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                "--user-data-dir=" + self.profile]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": chromium, "args": args}}}}
        self.session = self.wd("POST", "/session", caps)["value"]["sessionId"]

    def cmd(self, method, path, body=None):
        return self.wd(method, "/session/%s%s" % (self.session, path), body)["value"]

    def find(self, css):
        try:
            v = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        except WebDriverError as e:
            if "no such element" in str(e):
                return None
            raise
        return v[ELEMENT]

    def wait_for(self, css, text=None):
        """The element (and, with text, once its text is exactly that)."""
        end = time.monotonic() + TIMEOUT
        last = None
        while time.monotonic() < end:
            el = self.find(css)
            if el is not None:
                if text is None:
                    return el
                try:
                    last = self.cmd("GET", "/element/%s/text" % el)
                except WebDriverError:
                    last = None  # replaced by a refresh of the list
                if last == text:
                    return el
            time.sleep(0.3)
        raise WebDriverError("%s not found%s" % (css, "" if text is None else " with text %r (last %r)" % (text, last)))

    def text(self, css):
        return self.cmd("GET", "/element/%s/text" % self.wait_for(css))

    def click(self, css):
        self.cmd("POST", "/element/%s/click" % self.wait_for(css), {})

    def type_into(self, css, s):
        el = self.wait_for(css)
        self.cmd("POST", "/element/%s/clear" % el, {})
        self.cmd("POST", "/element/%s/value" % el, {"text": s})

    def screenshot(self, path):
        png = base64.b64decode(self.cmd("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return png

    def close(self):
        if self.session:
            try:
                self.wd("DELETE", "/session/" + self.session)
            except (WebDriverError, OSError):
                pass


def png_ok(png):
    """A PNG whose header says at least 200 x 200 pixels."""
    if len(png) < 1000 or png[:8] != b"\x89PNG\r\n\x1a\n":
        return False, "not a PNG (%d bytes)" % len(png)
    w = int.from_bytes(png[16:20], "big")
    h = int.from_bytes(png[20:24], "big")
    return w >= 200 and h >= 200, "%d x %d, %d bytes" % (w, h, len(png))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ui", required=True)
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--shot", required=True)
    ap.add_argument("--show", required=True, help="acceptance numbers, comma-separated")
    ap.add_argument("--start-end", type=int)
    a = ap.parse_args()
    with open(a.password_file) as f:
        password = f.readline().rstrip("\n")
    show = [int(n) for n in a.show.split(",") if n]
    chromedriver = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
    chromium = os.environ.get("CHROMIUM", "/usr/lib/chromium/chromium")
    for p in (chromedriver, chromium):
        if not os.access(p, os.X_OK):
            check("browser present (%s)" % p, False, "not installed")
            return 1
    tmp = tempfile.mkdtemp(prefix="vpnnat-ui-")
    port = free_port()
    log = open(os.path.join(tmp, "chromedriver.log"), "w")
    env = dict(os.environ, HOME=tmp)
    drv = subprocess.Popen([chromedriver, "--port=%d" % port], stdout=log, stderr=log, env=env)
    b = Browser(port, os.path.join(tmp, "profile"))
    t0 = time.monotonic()
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() - t0 > TIMEOUT or drv.poll() is not None:
                    raise WebDriverError("chromedriver does not listen")
                time.sleep(0.1)
        b.start(chromium)
        print("# browser: Chromium session up in %.1f s" % (time.monotonic() - t0), flush=True)
        ui = a.ui.rstrip("/")
        b.cmd("POST", "/url", {"url": ui + "/"})
        b.type_into("#password", password)
        b.click("#login")
        try:
            b.wait_for("#requests")
            check("operator logs in at %s" % ui, True)
        except WebDriverError as e:
            check("operator logs in at %s" % ui, False, e)
            return 1
        for n in show:
            try:
                row = b.text("#request-%d" % n)
                check("the request list shows request %d (%s)" % (n, " ".join(row.split())[:80]), True)
            except WebDriverError as e:
                check("the request list shows request %d" % n, False, e)
        png = b.screenshot(a.shot)
        ok, detail = png_ok(png)
        check("screenshot of the request list: %s (%s)" % (a.shot, detail), ok, detail)
        n = a.start_end
        if n is not None:
            try:
                b.click("#start-%d" % n)
                b.wait_for("#request-%d .state" % n, "in progress")
                check("start button puts request %d in progress" % n, True)
            except WebDriverError as e:
                check("start button puts request %d in progress" % n, False, e)
            try:
                # the end button opens the request's end form: a reason
                # is required (issue 20, item 6), then end
                b.click("#end-%d" % n)
                b.type_into("#reason", "demo: maintenance done")
                b.click("#end-confirm")
                b.wait_for("#request-%d .state" % n, "ended")
                check("end button ends request %d" % n, True)
            except WebDriverError as e:
                check("end button ends request %d" % n, False, e)
            root, ext = os.path.splitext(a.shot)
            b.screenshot(root + "-ended" + (ext or ".png"))
    except (WebDriverError, OSError) as e:
        check("browser session", False, e)
    finally:
        b.close()
        drv.terminate()
        try:
            drv.wait(10)
        except subprocess.TimeoutExpired:
            drv.kill()
        log.close()
        if FAILED:
            with open(os.path.join(tmp, "chromedriver.log")) as f:
                lines = f.read().splitlines()[-15:]
            for line in lines:
                print("       | chromedriver: " + line)
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
