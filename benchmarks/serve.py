"""`stack serve` under load on loopback: requests/s and p50/p95 latency for 1 and 20 concurrent clients (each
request one essay), beside the stack's own scoring rate in one call (the ceiling), in one run. Bounded: at most
``--requests`` per scenario and ``--seconds`` of wall time. ``--screenshot`` also saves the page, an essay scored
in headless chromium (README's picture).

    .venv/bin/python benchmarks/serve.py                          # the project's saved stack (after make run)
    .venv/bin/python benchmarks/serve.py --bundle bundle/ --requests 40 --screenshot docs/serve.png
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd


def start(scorer, port: int):
    import uvicorn

    from stack.serve import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(scorer), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def load(url: str, texts: list[str], clients: int, requests: int, seconds: float) -> dict:
    import httpx

    latencies, deadline, lock = [], time.monotonic() + seconds, threading.Lock()
    todo = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=600) as c:
            while time.monotonic() < deadline:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = c.post(url, json={"essays": [{"id": str(i), "text": texts[i % len(texts)]}], "interval": 0.9})
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return {"clients": clients, "requests": len(latencies), "rps": len(latencies) / wall,
            "p50": statistics.median(latencies), "p95": q[18]}


def screenshot(url: str, text: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,1250",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)  # no Selenium Manager: offline
    try:
        driver.get(url)
        WebDriverWait(driver, 30).until(ec.text_to_be_present_in_element((By.ID, "task"), "Scores"))
        driver.find_element(By.ID, "essays").send_keys(text)
        driver.find_element(By.ID, "score").click()
        WebDriverWait(driver, 120).until(ec.text_to_be_present_in_element((By.ID, "status"), "Scored"))
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--essays", default="data/fb3/train.csv", help="CSV with full_text: the essays sent")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--screenshot", type=Path, default=None)
    args = ap.parse_args()
    from stack.scorer import Scorer

    t0 = time.perf_counter()
    scorer = Scorer.load(args.bundle) if args.bundle else Scorer.from_project()
    texts = pd.read_csv(args.essays)["full_text"].iloc[:args.requests].tolist()
    scorer.score(texts[:2], 0.9)  # warm-up: the backbones load on first use
    print(f"stack loaded and warmed up in {time.perf_counter() - t0:.1f} s; {len(os.sched_getaffinity(0))} cores")
    t0 = time.perf_counter()
    scorer.score(texts, 0.9)
    ceiling = len(texts) / (time.perf_counter() - t0)
    print(f"ceiling: Scorer.score on {len(texts)} essays in one call: {ceiling:.2f} essays/s")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start(scorer, port)
    try:
        for clients in (1, 20):
            r = load(f"http://127.0.0.1:{port}/score", texts, clients, args.requests, args.seconds)
            print(f"{clients:>2} client(s): {r['requests']} requests, {r['rps']:.2f} requests/s "
                  f"({r['rps'] / ceiling:.2f}x the ceiling), p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s", flush=True)
        if args.screenshot:
            screenshot(f"http://127.0.0.1:{port}/", texts[0], args.screenshot)
            print(f"wrote {args.screenshot}")
    finally:
        server.should_exit = True


if __name__ == "__main__":
    main()
