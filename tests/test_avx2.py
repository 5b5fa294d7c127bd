"""The CPU fast paths on a CPU without native bf16: oneDNN and ATen held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``,
``ATEN_CPU_CAPABILITY=avx2``) in a subprocess make any newer x86-64 CPU behave as an AVX2-only one, where oneDNN
builds no bf16 primitive ("could not create a primitive descriptor"). There the probe in stack.runtime says so,
the softmax and packed linears fall back to PyTorch's own ops, and an explicit ``precision: bf16`` runs,
emulated, after one warning line."""

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import ok

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="ONEDNN_MAX_CPU_ISA=AVX2 emulates an x86-64 CPU")
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

PATHS = r"""
import json, sys, warnings
import torch
import torch.nn.functional as F
from transformers import AutoModel
from stack import runtime
from stack.backbones import attention, packed
from stack.backbones.embedder import inference_model

bf16, out = torch.bfloat16, {}
out["native"], out["onednn_bf16"] = runtime.native_bf16(torch.device("cpu")), runtime.onednn(bf16)
torch.manual_seed(0)
scores = (torch.randn(2, 3, 5, 6) * 4).to(bf16)
scores[0, :, :, 4:] = torch.finfo(bf16).min
out["softmax_err"] = (attention.softmax(scores).float() - torch.softmax(scores.float(), -1)).abs().max().item()
q, k, v = (torch.randn(3, 2, 7, 8).to(bf16) for _ in range(3))
keep = torch.ones(3, 7, dtype=torch.bool)
keep[1, 5:] = False
mask = keep[:, None, None, :].expand(3, 1, 7, 7)
with torch.inference_mode():
    got, _ = attention.cpu_attention(torch.nn.Module().eval(), q, k, v, mask, scaling=0.3)
ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=0.3).transpose(1, 2)
out["attention_err"] = (got.float() - ref).abs().max().item()
out["packable_bf16"], out["packable_fp32"] = packed.packable(bf16), packed.packable(torch.float32)

model = AutoModel.from_pretrained(sys.argv[1]).eval()
ids = torch.randint(5, 1000, (2, 12))
attn = torch.ones(2, 12, dtype=torch.long)
attn[1, 8:] = 0
fast = inference_model(model, bf16, rows=24)
with torch.inference_mode():
    ref = model(input_ids=ids, attention_mask=attn).last_hidden_state
    got = fast(input_ids=ids, attention_mask=attn).last_hidden_state
out["linears_left"] = sum(type(m) is torch.nn.Linear for m in fast.modules())
out["attention"] = fast.config._attn_implementation
out["model_cos"] = F.cosine_similarity(got.float()[attn.bool()], ref[attn.bool()], dim=-1).min().item()
with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter("always")
    out["precision"] = [runtime.precision("bf16", torch.device("cpu"), "m.yaml") for _ in range(2)]
out["warnings"] = [str(w.message) for w in said]
print(json.dumps(out))
"""


def _env() -> dict:
    return {**os.environ, **AVX2, "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def test_avx2_setting_turns_off_onednn_bf16_in_a_subprocess():
    """The emulation itself: if these variables stopped hiding bf16, the tests below would test nothing."""
    code = "import torch; from stack import runtime; print(runtime.onednn(torch.bfloat16), runtime.onednn(torch.float32))"
    result = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_fast_paths_fall_back_to_torch_where_onednn_has_no_bf16(tiny_bert_dir):
    result = subprocess.run([sys.executable, "-c", PATHS, str(tiny_bert_dir)], env=_env(), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["native"] is False and out["onednn_bf16"] is False
    assert out["softmax_err"] < 8e-3 and out["attention_err"] < 3e-2  # PyTorch's softmax, not oneDNN's
    assert out["packable_bf16"] is False and out["packable_fp32"] is True
    # bf16 model: nothing packed (the plain nn.Linear runs emulated bf16), attention still the whole-batch path
    assert out["linears_left"] == 2 * 6 + 1 and out["attention"] == "stack_cpu"
    assert out["model_cos"] > 0.99
    assert out["precision"] == ["bf16", "bf16"] and len(out["warnings"]) == 1
    assert out["warnings"][0].startswith("m.yaml: bf16 on a CPU without native bf16")


def test_fit_with_explicit_bf16_runs_emulated_with_one_warning_line(project):
    """The reported failure: `stack fit minilm --set precision=bf16` was oneDNN's RuntimeError, exit 1."""
    ok("folds")
    cmd = [sys.executable, "-m", "stack.cli", "fit", "minilm", "--set", "precision=bf16"]
    result = subprocess.run(cmd, cwd=project, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert said == ["warning: configs/members/minilm.yaml: bf16 on a CPU without native bf16 (no AVX-512 BF16 or "
                    "AMX) is emulated, several times slower than fp32; set precision: auto (fp32 here) to run at full "
                    "speed"]
    assert "Traceback" not in result.stderr
    assert "(bf16" in result.stdout and (project / "cache" / "minilm" / "train.parquet").is_file()
