#!/usr/bin/env python3
"""The browser test: serve the repository on 127.0.0.1, open the playground in headless
Chromium on WebGPU (SwiftShader), screenshot it once its paths are drawn, let it replay every
golden case and run the benchmark, then check the results.

    python3 scripts/browser_test.py [--out DIR] [--timeout SECONDS] [--chromium PATH]

Run by scripts/browser_test.sh after it has built web/www/pkg. Talks to Chromium over the
DevTools protocol on a pipe (--remote-debugging-pipe: no port, no extra packages). Prints
one PASS/FAIL line per check and per golden case, then `N passed, M failed` as its last
line; exits 0 only when nothing failed. SKIP lines (golden cases of algorithms the library
does not have, as the native `golden` example reports them) are not counted.
"""

import argparse
import base64
import fcntl
import functools
import glob
import http.server
import json
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import web_server  # noqa: E402  (the same server scripts/serve_web.sh runs)

WIDTH, HEIGHT = 1440, 900  # a laptop screen


class Cdp:
    """A minimal DevTools-protocol client over Chromium's --remote-debugging-pipe."""

    def __init__(self, proc, write_fd, read_fd):
        self.proc = proc
        self.w = os.fdopen(write_fd, "wb", buffering=0)
        self.r = os.fdopen(read_fd, "rb", buffering=0)
        self.next_id = 0
        self.replies = {}
        self.cond = threading.Condition()
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = self.r.read(1 << 16)
            if not chunk:
                with self.cond:
                    self.replies[None] = "closed"
                    self.cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                m = json.loads(msg)
                if "id" in m:
                    with self.cond:
                        self.replies[m["id"]] = m
                        self.cond.notify_all()
                else:
                    self.events.put(m)

    def call(self, method, params=None, session=None, timeout=60):
        self.next_id += 1
        i = self.next_id
        m = {"id": i, "method": method, "params": params or {}}
        if session:
            m["sessionId"] = session
        self.w.write(json.dumps(m).encode() + b"\0")
        deadline = time.time() + timeout
        with self.cond:
            while i not in self.replies:
                if None in self.replies:
                    raise RuntimeError(f"Chromium closed the DevTools pipe during {method}")
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"no answer to {method} within {timeout} s")
                self.cond.wait(left)
            reply = self.replies.pop(i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})


def decode_png(data):
    """(width, height, rows) of an 8-bit RGB/RGBA non-interlaced PNG, rows as bytes of RGBA."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
    w, h = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, ctype, interlace = ihdr[8], ihdr[9], ihdr[12]
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {ctype}, interlace {interlace})")
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = line
        if bpp == 3:
            rgba = bytearray(w * 4)
            rgba[0::4], rgba[1::4], rgba[2::4] = line[0::3], line[1::3], line[2::3]
            rgba[3::4] = b"\xff" * w
            line = rgba
        rows.append(bytes(line))
    return w, h, rows


def hex_rgb(c):
    return tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))


def analyse_screenshot(png, rect, colors):
    """Distinct colours and spread of the contour region, and per path colour the pixels
    within a small distance of it (inside the region)."""
    w, h, rows = decode_png(png)
    x0, y0 = max(0, int(rect["x"])), max(0, int(rect["y"]))
    x1, y1 = min(w, int(rect["x"] + rect["width"])), min(h, int(rect["y"] + rect["height"]))
    targets = [hex_rgb(c) for c in colors]
    counts = [0] * len(targets)
    distinct, lum = set(), []
    for y in range(y0, y1):
        row = rows[y]
        for x in range(x0, x1):
            r, g, b = row[4 * x], row[4 * x + 1], row[4 * x + 2]
            distinct.add((r, g, b))
            lum.append(0.3 * r + 0.59 * g + 0.11 * b)
            for k, (tr, tg, tb) in enumerate(targets):
                if abs(r - tr) + abs(g - tg) + abs(b - tb) <= 40:
                    counts[k] += 1
    mean = sum(lum) / max(1, len(lum))
    sd = math.sqrt(sum((v - mean) ** 2 for v in lum) / max(1, len(lum)))
    return {"size": [w, h], "region": [x0, y0, x1, y1], "distinct_colours": len(distinct),
            "luminance_sd": sd, "pixels_per_colour": counts}


def no_webgpu_page(chromium, out):
    """Open the page in headless Chromium without WebGPU flags; whether the no-WebGPU banner
    is shown, and its text (from the DOM after the page's start-up)."""
    handler = functools.partial(web_server.Handler, directory=ROOT, out=None)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="fused-optim-chromium-nogpu-")
    url = f"http://127.0.0.1:{server.server_address[1]}/web/www/index.html"
    try:
        dom = subprocess.run([chromium, "--headless=new", "--no-sandbox", f"--user-data-dir={profile}",
                              "--virtual-time-budget=15000", "--dump-dom", url],
                             capture_output=True, timeout=120).stdout.decode(errors="replace")
        with open(os.path.join(out, "nogpu_dom.html"), "w") as f:
            f.write(dom)
        shown = '<div id="nogpu" class="banner">' in dom
        m = re.search(r'<p id="nogpu-reason">([^<]*)', dom)
        return {"banner": shown, "reason": m.group(1) if (shown and m) else "", "error": "" if shown else "banner not shown"}
    except Exception as e:
        return {"banner": False, "reason": "", "error": str(e)}
    finally:
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "target-browser-test"))
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("BROWSER_TEST_TIMEOUT", 1200)),
                    help="seconds for the whole run (default 1200, env BROWSER_TEST_TIMEOUT)")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", shutil.which("chromium") or "chromium"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not os.path.exists(os.path.join(ROOT, "web", "www", "pkg", "fused_optim_web.js")):
        print("web/www/pkg is missing: run scripts/browser_test.sh (it builds the wasm first)")
        print("0 passed, 1 failed")
        return 1

    handler = functools.partial(web_server.Handler, directory=ROOT, out=None)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/web/www/index.html?test"

    profile = tempfile.mkdtemp(prefix="fused-optim-chromium-")
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    # Chromium's ends well above 4, so that placing them on fds 3 and 4 overwrites neither.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 20) for fd in (to_chrome_r, from_chrome_w)]
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    to_chrome_r, from_chrome_w = high
    flags = ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu",
             "--use-webgpu-adapter=swiftshader", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
             "--no-first-run", "--no-default-browser-check", "--disable-gpu-sandbox",
             "about:blank"]
    # Chromium reads DevTools commands on fd 3 and writes replies on fd 4.
    shell = f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
    log = open(os.path.join(args.out, "chromium.log"), "wb")
    proc = subprocess.Popen(["bash", "-c", shell, "_", args.chromium, *flags],
                            pass_fds=(to_chrome_r, from_chrome_w), stdout=log, stderr=log,
                            start_new_session=True)
    for fd in (to_chrome_r, from_chrome_w):
        os.close(fd)
    cdp = Cdp(proc, to_chrome_w, from_chrome_r)
    lines, passed, failed = [], 0, 0

    def check(ok, text):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {text}", flush=True)

    t_start = time.time()
    deadline = t_start + args.timeout
    try:
        targets = cdp.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = cdp.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, session)
        cdp.call("Runtime.enable", {}, session)
        cdp.call("Page.enable", {}, session)
        cdp.call("Page.navigate", {"url": url}, session)

        def evaluate(expr):
            r = cdp.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session)
            if "exceptionDetails" in r:
                raise RuntimeError(f"evaluate {expr}: {r['exceptionDetails']}")
            return r["result"].get("value")

        def drain_console():
            while not cdp.events.empty():
                e = cdp.events.get()
                if e.get("method") == "Runtime.consoleAPICalled":
                    text = " ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"])
                    print(f"  [console.{e['params']['type']}] {text}", file=sys.stderr, flush=True)
                elif e.get("method") == "Runtime.exceptionThrown":
                    print(f"  [exception] {e['params']['exceptionDetails']}", file=sys.stderr, flush=True)

        shot_taken, state, last_state = False, None, None
        while True:
            drain_console()
            if time.time() > deadline:
                raise TimeoutError(f"the page did not finish within {args.timeout:.0f} s (last state: {state})")
            if proc.poll() is not None:
                raise RuntimeError(f"Chromium exited with {proc.returncode} (see {args.out}/chromium.log)")
            state = evaluate("window.fusedOptimTest ? window.fusedOptimTest.state : 'no page yet'")
            if state != last_state:
                print(f"  page: {state} after {time.time() - t_start:.1f} s", file=sys.stderr, flush=True)
                last_state = state
            if state in ("no-webgpu", "error"):
                reason = evaluate("JSON.stringify([fusedOptimTest.reason, fusedOptimTest.errors])")
                raise RuntimeError(f"page state {state}: {reason}")
            if state == "paths-drawn" and not shot_taken:
                shot = base64.b64decode(cdp.call("Page.captureScreenshot", {"format": "png"}, session)["data"])
                with open(os.path.join(args.out, "playground.png"), "wb") as f:
                    f.write(shot)
                rect = json.loads(evaluate("JSON.stringify(document.getElementById('contour').getBoundingClientRect())"))
                play = json.loads(evaluate("JSON.stringify(fusedOptimTest.playground)"))
                shot_taken = True
                evaluate("fusedOptimTest.proceed = true")
            if state == "done":
                break
            time.sleep(0.25)
        results = json.loads(evaluate(
            "JSON.stringify({golden: fusedOptimTest.golden, bench: fusedOptimTest.bench,"
            " firstPathsMs: fusedOptimTest.firstPathsMs, describe: fusedOptimTest.describe,"
            " selfCheck: fusedOptimTest.selfCheck, f16: fusedOptimTest.f16, errors: fusedOptimTest.errors})"))
        # The whole page with the golden table, for a picture of the finished run.
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": WIDTH, "height": 1240, "deviceScaleFactor": 1, "mobile": False}, session)
        time.sleep(0.5)
        done_shot = base64.b64decode(cdp.call("Page.captureScreenshot", {"format": "png"}, session)["data"])
        with open(os.path.join(args.out, "page_done.png"), "wb") as f:
            f.write(done_shot)
    except Exception as e:  # every failure of the run itself is one FAIL line
        check(False, f"browser run: {e}")
        print(f"{passed} passed, {failed} failed")
        return 1
    finally:
        try:
            cdp.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)

    results["playground"] = play
    results["screenshot"] = analyse_screenshot(shot, rect, play["colors"])
    results["seconds"] = time.time() - t_start
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)

    d = results["describe"]
    print(f"adapter: WebGPU {d.get('browser_adapter', '')} ({d['adapter']}); lanes {d['lanes']}; native f16 {d['native_f16']}; "
          f"{d['max_storage_buffers_per_stage']} storage buffers per stage")

    # The playground: every optimizer moved, and the paths differ from one another.
    names, pts = play["names"], play["points"]
    check(len(names) >= 2 and all(len(p) >= 2 for p in pts),
          f"playground: {len(names)} optimizers stepped ({', '.join(f'{n} {len(p) - 1}' for n, p in zip(names, pts))} steps)")

    def differ(a, b):
        n = min(len(a), len(b))
        return max(max(abs(a[i][0] - b[i][0]), abs(a[i][1] - b[i][1])) for i in range(n)) > 1e-3

    same = [(names[i], names[j]) for i in range(len(pts)) for j in range(i + 1, len(pts)) if not differ(pts[i], pts[j])]
    check(not same, "playground: every pair of paths differs" + (f" (identical: {same})" if same else ""))
    s = results["screenshot"]
    check(s["distinct_colours"] > 200 and s["luminance_sd"] > 5,
          f"screenshot {args.out}/playground.png not blank: {s['distinct_colours']} colours, luminance sd {s['luminance_sd']:.1f} in the contour")
    counts = s["pixels_per_colour"]
    # At least a third of a path's end marker (a disc of radius 4.5, ~60 px; markers of paths
    # that end close together cover each other in part).
    check(all(c >= 20 for c in counts),
          "screenshot shows every path in its colour: " + ", ".join(f"{n} {c} px" for n, c in zip(names, counts)))
    fp = results["firstPathsMs"]
    print(f"first paths drawn {fp / 1000:.2f} s after page load (target 2 s: {'met' if fp <= 2000 else 'MISSED'})")

    # The web's rules: blocking calls are typed errors, bad input too.
    sc = results["selfCheck"]
    check("would block" in sc["blocking_read"] and "would block" in sc["blocking_new"],
          f"a blocking read-back and the blocking constructor are WouldBlock errors on the web: "
          f"{sc['blocking_read']!r}; {sc['blocking_new']!r}")
    check("lr" in sc["bad_lr"] and "NoSuchOptimizer" in sc["bad_class"] and "momentun" in sc["bad_key"],
          f"bad playground input is a typed error naming it: {sc['bad_lr']!r}; {sc['bad_class']!r}; {sc['bad_key']!r}")

    f16 = results["f16"]
    check(f16.get("passed") is True and f16.get("uses_shader_f16") == f16.get("shader_f16"),
          "f16 params on this device (" + ("native f16" if f16.get("uses_shader_f16") else "packed f16: no shader-f16")
          + f"): Adam against the f64 reference: {f16}")

    # Golden cases: every file in golden/v1 and golden/v2, each PASS (or SKIP: not in the library).
    golden = results["golden"]
    on_disk = sorted(os.path.relpath(p, os.path.join(ROOT, "golden"))
                     for p in glob.glob(os.path.join(ROOT, "golden", "v*", "*.json.gz")))
    replayed = sorted(r["file"] for r in golden["results"])
    check(replayed == on_disk, f"golden: the page replayed all {len(on_disk)} case files of golden/v1 and golden/v2"
          + ("" if replayed == on_disk else f" (page: {len(replayed)}; missing {sorted(set(on_disk) - set(replayed))})"))
    skipped = 0
    for r in golden["results"]:
        if r["status"] == "SKIP":
            skipped += 1
            print(f"SKIP {r['case']} ({r['detail']})")
            continue
        text = f"golden {r['case']:<32} {r['detail']}"
        for p in r["parts"]:
            for f in p["failures"]:
                text += f"\n    [{p['impl']}] {f}"
        check(r["status"] == "PASS", text)
    print(f"golden: {golden['counts']['PASS']} passed, {golden['counts']['FAIL']} failed, {skipped} skipped "
          f"in {golden['ms'] / 1000:.1f} s")

    b = results["bench"]
    ok = "error" not in b
    check(ok, "benchmark: " + (
        f"Adam 2^20 {b['adam']['seconds_per_step'] * 1e3:.3f} ms/step {b['adam']['gbps']:.3f} GB/s, "
        f"roof {b['adam_roof']['gbps']:.3f} GB/s ({b['adam_fraction_of_roof']:.2f} of it), copy kernel "
        f"{b['copy_kernel']['gbps']:.3f} GB/s (Adam/copy {b['adam_gbps_over_copy_gbps']:.2f})" if ok else b["error"]))
    check(not results["errors"], "no errors on the page" + (f": {results['errors']}" if results["errors"] else ""))

    # Without WebGPU (no --enable-unsafe-webgpu: headless Chromium on Linux then has no
    # adapter) the page must say so instead of failing silently.
    nogpu = no_webgpu_page(args.chromium, args.out)
    check(nogpu["banner"], "without WebGPU the page shows its message: " + (nogpu["reason"] or nogpu["error"]))
    print(f"browser run {results['seconds']:.1f} s; results in {args.out}/results.json")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
