"""``stack serve``: the saved stack (or a bundle) behind an HTTP API and a one-page scorer, on FastAPI.

    stack serve                                  # inside a project: its saved blend and members (models/)
    stack serve --bundle bundle/ --port 8000     # a bundle, anywhere; http://127.0.0.1:8000/ (API docs: /docs)

    POST /score       {"essays": [{"id": "a1", "text": "..."}], "interval": 0.9}  -> scores (+ intervals), in order
    POST /score/csv   a CSV upload (the task's id and text columns; ?interval=0.9) -> a CSV
    GET  /health      the task, the members, where the stack was loaded from
    GET  /            the page: paste essays or drop a CSV, see bars with intervals, download the CSV

The stack is loaded once, at start-up, with every hash checked (stack.scorer). Requests are scored by one worker
thread in batches: concurrent clients share the CPU instead of fighting over it, and a burst of small requests
costs one pass through the members. Bad input is a 4xx JSON error with one message, and the server keeps serving.
Essay text is never logged (uvicorn logs the method, path and status only).
"""


import asyncio
import io
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from stack.errors import StackError

PAGE = Path(__file__).with_name("page.html")
MAX_BYTES, MAX_ESSAYS, MAX_BATCH = 5 * 2**20, 200, 256


@dataclass
class Job:
    texts: list[str]
    interval: float | None
    done: Future = field(default_factory=Future)


class Essay(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, max_length=200)
    text: str


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    essays: list[Essay]
    interval: float | None = Field(None, gt=0, lt=1, description="coverage of per-essay intervals, e.g. 0.9")


class Worker:
    """One thread that scores queued jobs, several at a time: the jobs waiting when it is free, up to ``max_batch``
    essays, grouped by interval level, go through the members together."""

    def __init__(self, scorer, max_batch: int = MAX_BATCH):
        self.scorer, self.max_batch = scorer, max_batch
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.batches = 0  # how many passes were made (tests: 20 concurrent requests share passes)
        threading.Thread(target=self._run, daemon=True, name="stack-scorer").start()

    def submit(self, texts: list[str], interval: float | None) -> Future:
        job = Job(texts, interval)
        self.jobs.put(job)
        return job.done

    def _take(self) -> list[Job]:
        jobs, n = [self.jobs.get()], 0
        n = len(jobs[0].texts)
        while n < self.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            n += len(job.texts)
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            for level in dict.fromkeys(j.interval for j in jobs):
                group = [j for j in jobs if j.interval == level]
                texts = [t for j in group for t in j.texts]
                try:
                    scores = self.scorer.score(texts, level)
                    self.batches += 1
                except Exception as e:  # every waiting client hears of it; the worker goes on
                    for j in group:
                        j.done.set_exception(e)
                    continue
                start = 0
                for j in group:
                    j.done.set_result(scores.iloc[start:start + len(j.texts)].reset_index(drop=True))
                    start += len(j.texts)


def _records(scores: pd.DataFrame, ids: list[str], task) -> list[dict]:
    out = []
    for i, row in enumerate(scores.itertuples(index=False)):
        values = row._asdict()
        rec = {"id": ids[i], "scores": {t: float(values[t]) for t in task.targets}}
        if f"{task.targets[0]}_lo" in values:
            rec["intervals"] = {t: [float(values[f"{t}_lo"]), float(values[f"{t}_hi"])] for t in task.targets}
        out.append(rec)
    return out


def error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def check(ids: list[str], texts: list[str], max_essays: int):
    """The 4xx error for a request's essays, or None: none at all, too many, an empty one, duplicate ids."""
    if not texts:
        return error(422, "no essays: send at least one")
    if len(texts) > max_essays:
        return error(413, f"{len(texts)} essays in one request, over the limit of {max_essays}; split them")
    blank = next((i for i, t in enumerate(texts) if not str(t).strip()), None)
    if blank is not None:
        return error(422, f"essay {blank + 1} (id {ids[blank]!r}) is empty or whitespace; remove it or add its text")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        return error(422, f"id {dup!r} is given twice; ids must be unique in a request")
    return None


def _guard(app, max_bytes: int) -> None:
    """One-line JSON errors for malformed requests, and the body-size limit."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        if first.get("type") == "json_invalid":
            return error(400, "the body is not valid JSON; send {\"essays\": [{\"id\": ..., \"text\": ...}]}")
        return error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.middleware("http")
    async def limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if request.method == "POST" and size is None:
            return error(411, "send a Content-Length header (a body of known size)")
        if size is not None and size.isdigit() and int(size) > max_bytes:
            return error(413, f"the body is {int(size) / 2**20:.1f} MiB, over the {max_bytes / 2**20:g} MiB limit; "
                              "send fewer or shorter essays per request")
        return await call_next(request)


def _score_csv(task, score, max_essays: int):
    """The handler of POST /score/csv: a CSV upload in, a CSV out."""
    from fastapi import File, Query, UploadFile
    from fastapi.responses import Response

    async def score_csv(file: UploadFile = File(...), interval: float | None = Query(None, gt=0, lt=1)):
        from stack.data import essays_frame

        raw = await file.read()
        try:
            df = pd.read_csv(io.BytesIO(raw), dtype={task.id: str, task.text: str}, keep_default_na=False,
                             na_values=[""], encoding="utf-8")
            essays = essays_frame(df, file.filename or "the upload", task)
        except StackError as e:
            return error(422, str(e))
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
            return error(422, f"{file.filename}: not a readable UTF-8 CSV ({str(e).splitlines()[0][:120]})")
        if (bad := check(essays[task.id].tolist(), essays[task.text].tolist(), max_essays)) is not None:
            return bad
        scores = await score(essays[task.text].tolist(), interval)
        scores[task.id] = essays[task.id].to_numpy()  # the upload's ids, in its order
        return Response(scores.to_csv(index=False), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="scores.csv"'})

    return score_csv


def create_app(scorer, max_bytes: int = MAX_BYTES, max_essays: int = MAX_ESSAYS, max_batch: int = MAX_BATCH):
    """The FastAPI app serving ``scorer`` (a stack.scorer.Scorer)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    task, worker = scorer.task, Worker(scorer, max_batch)
    app = FastAPI(title="stack", description=f"Scores essays on {', '.join(task.targets)} ({task.metric} blend).",
                  version=__import__("stack").__version__)
    _guard(app, max_bytes)

    async def score(texts: list[str], interval: float | None) -> pd.DataFrame:
        return await asyncio.wrap_future(worker.submit(texts, interval))

    @app.post("/score")
    async def score_json(body: ScoreRequest):
        ids, texts = [e.id for e in body.essays], [e.text for e in body.essays]
        if (bad := check(ids, texts, max_essays)) is not None:
            return bad
        scores = await score(texts, body.interval)
        return {"task": task.record(), "interval": body.interval, "scores": _records(scores, ids, task)}

    app.post("/score/csv")(_score_csv(task, score, max_essays))

    @app.get("/health")
    async def health():
        return {"status": "ok", "task": task.record(), "members": list(scorer.members), "source": scorer.source,
                "intervals": scorer.blend.intervals is not None,
                "limits": {"max_bytes": max_bytes, "max_essays": max_essays}}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text(encoding="utf-8")

    app.state.worker = worker
    return app


def run_server(bundle: Path | None, host: str, port: int, max_mb: float, max_essays: int) -> None:
    """Load the stack (a bundle, else the project's saved one), then serve it until interrupted."""
    import uvicorn

    from stack.scorer import Scorer

    scorer = Scorer.load(bundle) if bundle is not None else Scorer.from_project()
    app = create_app(scorer, int(max_mb * 2**20), max_essays)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
