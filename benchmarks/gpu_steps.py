"""The steps of benchmarks/gpu_check.py: each runs in a child process (``gpu_check.py --step KEY``) and returns
``{status, result}``; gpu_check.py times them, limits them and prints the table (see its docstring).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRY = "no CUDA device"
MPNET = "mpnet not run: its weights (220 MB in fp16) do not fit the 64 MiB carry limit; MiniLM stands in"
README_CPU = (0.5063, 27.9)  # README: minilm-ft fold 0 after 1 epoch, minutes per epoch on 2 CPU cores


@dataclasses.dataclass(frozen=True)
class Sizes:
    epochs: int = 3  # step 2
    fold: int = 0
    essays: int = 0  # training essays of steps 2 and 4 (0: all 3,911)
    ft_max_len: int = 512
    deberta_max_len: int = 1024
    frozen_essays: int = 512  # step 4: embedded on both paths


TINY = Sizes(epochs=1, essays=100, ft_max_len=64, deberta_max_len=256, frozen_essays=32)

# key, row, time limit in seconds on a GPU (x10 on the CPU); expected on one H200 with 16 CPU cores in the comments
STEPS = (
    ("pytest", "pytest -m gpu", 150),  # ~60 s: ~30 tests on tiny models
    ("ft-bf16", "minilm-ft bf16", 120),  # ~60 s: 3 epochs x ~3,130 essays x <=512 tokens, launch-bound; 783 validated
    ("ft-fp16", "minilm-ft fp16", 120),  # ~60 s: the same with the grad scaler
    ("deberta", "tiny deberta base+large", 90),  # ~30 s: 2 members x 2 folds x 40 essays x 1,024 tokens; blend; predict
    ("frozen", "frozen minilm", 100),  # ~40 s: 512 essays on 16 CPU cores and on CUDA; `stack fit minilm` (3,914)
)


def skipped(detail: str) -> dict:
    return {"status": "skipped", "result": f"{DRY}: {detail}"}


def invoke(*args: str) -> str:
    """``stack ARGS`` in this process (the user's verbs); its output goes to the log."""
    from typer.testing import CliRunner

    from stack.cli import app

    r = CliRunner().invoke(app, list(args))
    print(f"$ stack {' '.join(args)}\n{r.output}", flush=True)
    if r.exit_code != 0:
        if r.exc_info and not isinstance(r.exception, SystemExit):
            traceback.print_exception(*r.exc_info)
        last = (r.output.strip().splitlines() or [repr(r.exception)])[-1]
        raise RuntimeError(f"`stack {' '.join(args)}` exited {r.exit_code}: {last}")
    return r.output


def fb3_project(ctx) -> Path:
    """A copy of the project on the real FB3 essays, its 5 folds made by `stack folds`, MiniLM at ctx's folder; cwd."""
    import pandas as pd

    from conftest import edit_yaml

    root, sizes = Path(ctx["workdir"]) / "fb3", Sizes(**ctx["sizes"])
    if not (root / "cache" / "folds.parquet").is_file():
        for name in ("params.yaml", "dvc.yaml"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, root / name)
        shutil.copytree(ROOT / "configs", root / "configs", dirs_exist_ok=True)
        shutil.copytree(ROOT / "data" / "fb3", root / "data" / "fb3", dirs_exist_ok=True)
        if sizes.essays:
            train = root / "data" / "fb3" / "train.csv"
            pd.read_csv(train).iloc[: sizes.essays].to_csv(train, index=False)
        edit_yaml(root / "configs" / "backbones" / "minilm.yaml", path=ctx["minilm"], packaged=None)
        os.chdir(root)
        invoke("folds")
    os.chdir(root)
    return root


def step_pytest(ctx) -> dict:
    import pytest

    class Count:
        def __init__(self):
            self.collected, self.stats = 0, {}

        def pytest_collection_finish(self, session):
            self.collected = len(session.items)

        def pytest_terminal_summary(self, terminalreporter):
            self.stats = {k: len(terminalreporter.stats.get(k, [])) for k in ("passed", "failed", "error", "skipped")}

    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text(encoding="utf-8"))
    count = Count()
    args = ["-q", "-m", "gpu", "-p", "no:cacheprovider", f"--basetemp={ctx['workdir']}/pytest", *files]
    code = pytest.main(args + (["--collect-only"] if ctx["dry"] else []), plugins=[count])
    if ctx["dry"]:
        return skipped(f"{count.collected} GPU tests collected in {len(files)} files")
    where = "" if ctx["device"] == "cuda" else " (on the CPU: STACK_GPU_TESTS_ON_CPU=1)"
    result = ", ".join(f"{n} {k}" for k, n in count.stats.items() if n) + where
    return {"status": "ok" if code == 0 else "failed", "result": result or f"pytest exited {int(code)}"}


def step_finetune(ctx, precision: str) -> dict:
    import pandas as pd
    from safetensors import safe_open

    from stack.config import load_params
    from stack.members import fit_member
    from stack.members.registry import load_member

    sizes, dev = Sizes(**ctx["sizes"]), ctx["device"]
    root = fb3_project(ctx)
    ran = "fp32" if precision == "fp16" and dev != "cuda" else precision  # fp16 needs CUDA
    over = [f"folds=[{sizes.fold}]", f"epochs={sizes.epochs}", f"max_len={sizes.ft_max_len}", f"precision={ran}",
            f"device={dev}", "dvclive=false"]
    load_member("minilm-ft", over)  # the member's own checks: keys, precision on this device, max_len
    if ctx["dry"]:
        return skipped(f"would fine-tune fold {sizes.fold} for {sizes.epochs} epochs in {precision}")
    fit_member("minilm-ft", load_params(), over)
    fold = root / "models" / "minilm-ft" / f"fold{sizes.fold}"
    saved = json.loads((fold / "config.json").read_text())
    hist = saved["history"]
    folds = pd.read_parquet(root / "cache" / "folds.parquet")
    n_train = int((folds["fold"] != sizes.fold).sum())
    rate = n_train * len(hist) / sum(h["train_seconds"] for h in hist)
    with safe_open(str(fold / "model.safetensors"), "pt") as f:
        dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()})  # noqa: SIM118 (safe_open is no dict)
    score, first = hist[-1]["valid_mcrmse"], hist[0]["valid_mcrmse"]
    speed = f"{rate:.1f} essays/s training"
    if not sizes.essays:  # README's figure is for the whole training fold
        speed += f" ({rate / (n_train / (README_CPU[1] * 60)):.0f}x README's {README_CPU[1]} min/epoch on 2 CPU cores)"
    result = (f"fold {sizes.fold} MCRMSE {score:.4f} after {len(hist)} epoch(s) (epoch 1: {first:.4f}; CPU, README: "
              f"{README_CPU[0]} after 1), {speed}, autocast {saved['precision']}, weights {'/'.join(dtypes)}")
    if ran != precision:
        result += f" [{precision} needs CUDA: ran {ran}]"
    bad = (not math.isfinite(score) or saved["precision"] != ran or dtypes != ["F32"]
           or (not sizes.essays and score >= 0.60))  # predicting the mean scores 0.6568
    return {"status": "failed" if bad else "ok", "result": result}


def step_deberta(ctx) -> dict:
    import numpy as np
    import pandas as pd

    from stack.members.registry import load_member

    from conftest import DATA, TINY, edit_yaml, make_project, save_tiny

    sizes, work = Sizes(**ctx["sizes"]), Path(ctx["workdir"])
    tiny = work / "tiny-deberta-v3"
    root = make_project(work / "deberta", tiny, members=("base", "large"))
    train = pd.read_csv(DATA / "train.csv")
    longest = train.loc[train["full_text"].str.len().nlargest(40).index].sort_index()  # inputs near max_len
    longest.to_csv(root / "data" / "fb3" / "train.csv", index=False)
    keys = {"epochs": 1, "max_len": sizes.deberta_max_len, "grad_checkpointing": True, "device": ctx["device"],
            "eval_batch_size": 8, "dvclive": False}
    edit_yaml(root / "configs" / "members" / "base.yaml", **keys)
    edit_yaml(root / "configs" / "members" / "large.yaml", **keys, awp_start_epoch=1)  # AWP from epoch 2 never runs
    os.chdir(root)
    for name in ("base", "large"):
        load_member(name)
    have_dvc = importlib.util.find_spec("dvc") is not None
    dvc = "dvc repro not run (tests/test_dvc.py runs it on the CPU)" if have_dvc else "dvc repro skipped: dvc is not installed"
    if ctx["dry"]:
        return skipped(f"would fit base and large (max_len {sizes.deberta_max_len}, gradient checkpointing), "
                       f"blend and predict; {dvc}")
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2Model

    # DeBERTa-v3's attention: relative positions only (no absolute table: any length), shared keys, normed rel. embeddings
    config = DebertaV2Config(**TINY, relative_attention=True, position_buckets=64, pos_att_type=["p2c", "c2p"],
                             position_biased_input=False, share_att_key=True, norm_rel_ebd="layer_norm")
    save_tiny(tiny, DebertaV2Model, config)
    invoke("folds")
    invoke("fit", "base")
    invoke("fit", "large")
    invoke("blend", "--models", "base,large")
    invoke("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv")
    cv = {m: json.loads(Path(f"metrics/members/{m}.json").read_text())["mcrmse"] for m in ("base", "large")}
    blend = json.loads(Path("metrics/cv.json").read_text())["blend"]["mcrmse"]
    prec = {json.loads(p.read_text())["precision"] for p in Path("models").glob("*/fold*/config.json")}
    scores = pd.read_csv("scores.csv").drop(columns="text_id").to_numpy()
    tok = AutoTokenizer.from_pretrained(tiny)
    longest_ids = max(len(x) for x in tok(longest["full_text"].tolist(), truncation=True,
                                          max_length=sizes.deberta_max_len)["input_ids"])
    ok = np.isfinite(scores).all() and scores.min() >= 1 and scores.max() <= 5 and np.isfinite(list(cv.values())).all()
    result = (f"MCRMSE base {cv['base']:.3f}, large {cv['large']:.3f}, blend {blend:.3f} (random weights, 40 essays: "
              f"the path, not skill); inputs up to {longest_ids} tokens, autocast {'/'.join(sorted(prec))}, "
              f"checkpointing; predict: {len(scores)} essays; {dvc}")
    return {"status": "ok" if ok else "failed", "result": result}


def step_frozen(ctx) -> dict:
    import numpy as np
    import pandas as pd

    from stack.config import load_params
    from stack.members import fit_member
    from stack.members.registry import load_member

    sizes, dev = Sizes(**ctx["sizes"]), ctx["device"]
    root = fb3_project(ctx)
    spec = load_member("minilm", [f"device={dev}"])
    if ctx["dry"]:
        return skipped(f"would embed {sizes.frozen_essays} essays on the CPU and on CUDA, then fit minilm; {MPNET}")
    from stack.backbones.embedder import embed_texts
    from stack.backbones.loading import load_backbone

    tok, model = load_backbone(spec.backbone)
    texts = pd.read_csv(root / "data" / "fb3" / "train.csv")["full_text"].tolist()[: sizes.frozen_essays]
    embed_texts(texts[:8], tok, model, dataclasses.replace(spec.cfg, device=dev))  # warm-up: CUDA context, cuBLAS
    runs = {}
    for path in ("cpu", dev):
        t0 = time.perf_counter()
        emb, prec = embed_texts(texts, tok, model, dataclasses.replace(spec.cfg, device=path))
        runs[path] = (emb, prec, len(texts) / (time.perf_counter() - t0))
    a, b = runs["cpu"][0], runs[dev][0]
    cos = float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())
    t0 = time.perf_counter()
    r = fit_member("minilm", load_params(), [f"device={dev}"])
    fit_rate = r["embedded"] / (time.perf_counter() - t0)
    result = (f"{len(texts)} essays: CPU {runs['cpu'][2]:.3g} essays/s ({runs['cpu'][1]}), {dev} {runs[dev][2]:.3g} "
              f"essays/s ({runs[dev][1]}), min cosine {cos:.5f}; `stack fit minilm`: CV {r['cv']['mcrmse']:.4f} (docs/speed.md: 0.5029), "
              f"{r['embedded']} essays embedded, {fit_rate:.3g} essays/s with the heads; {MPNET}")
    bad = cos <= 0.999 or not math.isfinite(r["cv"]["mcrmse"]) or (not sizes.essays and r["cv"]["mcrmse"] > 0.52)
    return {"status": "failed" if bad else "ok", "result": result}


RUNNERS = {"pytest": step_pytest, "ft-bf16": lambda c: step_finetune(c, "bf16"),
           "ft-fp16": lambda c: step_finetune(c, "fp16"), "deberta": step_deberta, "frozen": step_frozen}


def child(step: str, ctx_file: Path, result_file: Path) -> int:
    ctx = json.loads(ctx_file.read_text())
    sys.path.insert(0, str(ROOT / "tests"))  # conftest's helpers: tiny encoders, throw-away projects
    os.chdir(ROOT)
    try:
        out = RUNNERS[step](ctx)
    except Exception as e:  # the row says what broke; the log has the traceback
        traceback.print_exc()
        out = {"status": "failed", "result": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"}
    torch = sys.modules.get("torch")
    if torch is not None and ctx["device"] == "cuda" and torch.cuda.is_initialized():
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result_file.write_text(json.dumps(out))
    return 0 if out["status"] != "failed" else 1
