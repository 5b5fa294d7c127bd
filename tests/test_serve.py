"""`stack serve`: the API through FastAPI's test client (the same scores as Scorer.score, every bad input a 4xx JSON
error while the server keeps serving, 20 concurrent requests answered correctly through one batching worker), and
the page driven in a real headless browser (Debian's chromium with selenium; skipped where none is installed)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import socket
import threading
import time

import numpy as np
import pandas as pd
import pytest

from conftest import TARGETS, edit_yaml, make_project, ok

ESSAYS = ["I like school. It is fun.\n\nMy teacher are nice.", "Dogs is good pet because they loyal.",
          "Technology helps students learn in many ways, but it can also distract them from their goals."]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory, tiny_bert_dir):
    from stack.scorer import Scorer

    root = make_project(tmp_path_factory.mktemp("serve"), tiny_bert_dir, members=("features", "tfidf"))
    edit_yaml(root / "configs" / "members" / "tfidf.yaml", max_features=2000, min_df=1)
    with contextlib.chdir(root):
        for args in (["folds"], ["fit", "features"], ["fit", "tfidf"], ["blend"]):
            ok(*args)
    return Scorer.from_project(root=root)


@pytest.fixture(scope="module")
def client(scorer):
    from fastapi.testclient import TestClient

    from stack.serve import create_app

    return TestClient(create_app(scorer, max_bytes=64 * 1024, max_essays=5))


def body(texts, interval=0.9):
    return {"essays": [{"id": f"e{i}", "text": t} for i, t in enumerate(texts)], "interval": interval}


def test_score_equals_the_scorer_and_keeps_the_order(client, scorer):
    r = client.post("/score", json=body(ESSAYS))
    assert r.status_code == 200
    got = r.json()
    want = scorer.score(ESSAYS, interval=0.9)
    assert [s["id"] for s in got["scores"]] == ["e0", "e1", "e2"] and got["task"]["metric"] == "mcrmse"
    for i, s in enumerate(got["scores"]):
        for t in TARGETS:
            assert s["scores"][t] == pytest.approx(want[t][i], abs=1e-6)
            assert s["intervals"][t] == pytest.approx([want[f"{t}_lo"][i], want[f"{t}_hi"][i]], abs=1e-6)
    plain = client.post("/score", json=body(ESSAYS[:1], None)).json()["scores"][0]
    assert "intervals" not in plain and plain["scores"]["cohesion"] == pytest.approx(want["cohesion"][0], abs=1e-6)


def test_csv_in_csv_out(client, scorer):
    df = pd.DataFrame({"text_id": ["x1", "x2"], "full_text": ESSAYS[:2], "teacher": ["a", "b"]})
    r = client.post("/score/csv?interval=0.9", files={"file": ("essays.csv", df.to_csv(index=False), "text/csv")})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    out = pd.read_csv(io.StringIO(r.text))
    assert out["text_id"].tolist() == ["x1", "x2"] and {"cohesion", "cohesion_lo", "conventions_hi"} <= set(out.columns)
    np.testing.assert_allclose(out[list(TARGETS)].to_numpy(), scorer.score(ESSAYS[:2])[list(TARGETS)].to_numpy(),
                               atol=1e-6)


def test_health_page_and_docs(client, scorer):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["members"] == list(scorer.members) and h["intervals"] is True
    page = client.get("/")
    assert page.status_code == 200 and "<textarea" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: it works offline
    assert client.get("/docs").status_code == 200 and "/score" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("request_kwargs, status, message", [
    ({"content": b'{"essays": [', "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"json": {"essays": "one essay"}}, 422, "essays: Input should be a valid list"),
    ({"json": {"essays": [{"id": "a", "text": 5}]}}, 422, "essays.0.text: Input should be a valid string"),
    ({"json": {"essays": [{"id": "a", "text": "x", "grade": 3}]}}, 422, "essays.0.grade: Extra inputs"),
    ({"json": {"essays": [{"id": "a", "text": "x"}], "interval": 1.5}}, 422, "interval: Input should be less than 1"),
    ({"json": {"essays": []}}, 422, "no essays"),
    ({"json": body(["fine", "  \n "])}, 422, "essay 2 (id 'e1') is empty or whitespace"),
    ({"json": {"essays": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}}, 422, "id 'a' is given twice"),
    ({"json": body(["x"] * 6)}, 413, "6 essays in one request, over the limit of 5"),
    ({"json": body(["word " * 20000])}, 413, "over the 0.0625 MiB limit"),
])
def test_bad_requests_are_one_clear_json_error_and_the_server_keeps_serving(client, request_kwargs, status, message):
    r = client.post("/score", **request_kwargs)
    assert r.status_code == status and message in r.json()["error"] and "\n" not in r.json()["error"]
    assert client.post("/score", json=body(ESSAYS[:1])).status_code == 200


def test_a_csv_without_the_text_column_is_refused(client):
    df = pd.DataFrame({"text_id": ["x1"], "essay": ["text"]})
    r = client.post("/score/csv", files={"file": ("mine.csv", df.to_csv(index=False), "text/csv")})
    assert r.status_code == 422 and "mine.csv: missing column 'full_text'" in r.json()["error"]


def test_twenty_concurrent_clients_are_answered_correctly_through_one_worker(scorer):
    import httpx

    from stack.serve import create_app

    app = create_app(scorer)
    texts = [f"{ESSAYS[i % 3]} Essay number {i}." for i in range(20)]
    want = scorer.score(texts)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*[c.post("/score", json=body([t], None)) for t in texts])

    answers = asyncio.run(run())
    assert all(a.status_code == 200 for a in answers)
    for i, a in enumerate(answers):
        assert a.json()["scores"][0]["scores"]["grammar"] == pytest.approx(want["grammar"][i], abs=1e-6)
    assert app.state.worker.batches < 20  # waiting requests were scored together


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(scorer):
    import uvicorn

    from stack.serve import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(scorer), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)


def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no headless browser here: install Debian's chromium and chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1000,1400"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_in_a_real_browser_shows_the_apis_scores(server, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    api = httpx.post(server + "score", json={"essays": [{"id": "1", "text": ESSAYS[2]}], "interval": 0.9}).json()
    driver = browser()
    try:
        driver.get(server)
        WebDriverWait(driver, 20).until(ec.text_to_be_present_in_element((By.ID, "task"), "Scores"))
        driver.find_element(By.ID, "essays").send_keys(ESSAYS[2])
        driver.find_element(By.ID, "score").click()
        WebDriverWait(driver, 30).until(ec.text_to_be_present_in_element((By.ID, "status"), "Scored 1 essay"))
        shown = {el.get_attribute("data-target"): el.text for el in driver.find_elements(By.CSS_SELECTOR, ".value")}
        assert set(shown) == set(TARGETS)
        for t in TARGETS:
            value, interval = shown[t].split(" [")
            assert float(value) == pytest.approx(api["scores"][0]["scores"][t], abs=0.005)
            lo, hi = interval.rstrip("]").split("–")
            assert [float(lo), float(hi)] == api["scores"][0]["intervals"][t]
        assert driver.find_element(By.ID, "download").is_enabled()
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        driver.quit()
