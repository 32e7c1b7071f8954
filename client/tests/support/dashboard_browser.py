#!/usr/bin/env python3
"""Drives a real headless Chromium through chromedriver (W3C WebDriver,
plain HTTP, no libraries) against a running farm's dashboard:

  dashboard_browser.py URL NODES SCREENSHOT -- JOB...

Opens URL, waits until the nodes table shows NODES rows, marks the page
(so a reload would be seen), runs JOB (a mexec command whose arguments
include a unique word, the last argument), waits until that job shows as
running and then as finished, checks that the page was never reloaded,
and saves a screenshot. Prints one line per step; exits non-zero on
failure."""

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"{}").get("value")


def wait_for(what, condition, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    sys.exit(f"FAILED: {what} within {timeout} s")


def main():
    url, nodes, screenshot = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    job = sys.argv[sys.argv.index("--") + 1:]
    word = job[-1]
    port = free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("chromedriver to answer", lambda: ready(base))
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1600,1100"]}}}}
        session = call(base, "POST", "/session", caps)["sessionId"]
        s = f"/session/{session}"
        run = lambda script: call(base, "POST", s + "/execute/sync",
                                  {"script": script, "args": []})
        try:
            call(base, "POST", s + "/url", {"url": url})
            wait_for(f"{nodes} nodes on the dashboard", lambda: run(
                "return document.querySelectorAll('#nodes tbody tr').length") == nodes)
            print(f"dashboard shows {nodes} nodes", flush=True)
            run("window.__notReloaded = true; return true")
            started = subprocess.Popen(job)
            contains = lambda table: run(
                f"return document.querySelector('#{table} tbody').textContent"
                f".includes({json.dumps(word)})")
            wait_for("the job shown as running", lambda: contains("running"))
            print("job shown as running", flush=True)
            if started.wait(timeout=60) != 0:
                sys.exit(f"FAILED: the job exited {started.returncode}")
            wait_for("the job shown as finished", lambda: contains("finished")
                     and not contains("running"))
            print("job shown as finished", flush=True)
            if not run("return window.__notReloaded === true"):
                sys.exit("FAILED: the page was reloaded")
            print("page never reloaded", flush=True)
            png = call(base, "GET", s + "/screenshot")
            with open(screenshot, "wb") as out:
                out.write(base64.b64decode(png))
            print(f"screenshot saved to {screenshot}", flush=True)
        finally:
            call(base, "DELETE", s)
    finally:
        driver.kill()
        driver.wait()


def ready(base):
    try:
        return call(base, "GET", "/status").get("ready")
    except OSError:
        return False


if __name__ == "__main__":
    main()
