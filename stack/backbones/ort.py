"""A frozen encoder run by ONNX Runtime: fp32 on the CPU, where it beat PyTorch's own fp32 path at identical
embeddings (benchmarks/onnx_encoder.py on a 2-core AVX2 CPU: 1.19x, minimum cosine 1.00000; int8 by dynamic
quantization ran 1.84x but moved the pooled states to a minimum cosine of 0.83, so it is not offered).

The encoder, cut after the deepest hidden state its member reads (stack.backbones.depth), is exported once per
weights, depth and PyTorch version with ``torch.onnx.export`` into a cache folder (``$STACK_ONNX_CACHE``, else
``$XDG_CACHE_HOME/stack/onnx`` or ``~/.cache/stack/onnx``; about 9 s for MPNet, then reused by every process) and
checked against PyTorch on a sample of chunks of other shapes than the export's: any export or check that fails
leaves the member on PyTorch, after one line saying why. An ONNX file is a graph of standard operators, read by
ONNX Runtime; it runs no Python.

    enc = encoder(model, deepest=9, threads=2, where=..., check=lambda enc: ...)   # or None: use PyTorch
    out = enc(input_ids=ids, attention_mask=mask, output_hidden_states=True)     # out.hidden_states: 0..deepest
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from stack import runtime
from stack.backbones.depth import truncate


@dataclass
class Output:
    hidden_states: tuple  # (b, t, d) float32 tensors, states 0..deepest


class _States(torch.nn.Module):
    """ids, mask -> hidden states ``0..deepest`` stacked ``(deepest + 1, b, t, d)``: the graph that is exported."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        return torch.stack(self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states)


class OrtEncoder:
    """Called like a transformers encoder (the keyword arguments stack.backbones.embedder passes)."""

    def __init__(self, session, path: Path):
        self.session, self.path = session, path

    def __call__(self, input_ids, attention_mask, output_hidden_states: bool = True) -> Output:
        feed = {"ids": input_ids.numpy(), "mask": attention_mask.numpy()}
        return Output(tuple(torch.from_numpy(self.session.run(["states"], feed)[0])))


def cache_dir() -> Path:
    if os.environ.get("STACK_ONNX_CACHE"):
        return Path(os.environ["STACK_ONNX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stack" / "onnx"


def model_key(model, deepest: int) -> str:
    """What decides the exported graph: the architecture and its config, every weight, the depth, PyTorch."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{type(model).__name__}|{model.config.to_json_string()}|{deepest}|{torch.__version__}".encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def export(model, deepest: int, path: Path) -> None:
    """``model`` cut after hidden state ``deepest``, fp32, with batch and length dynamic, written atomically."""
    cut = copy.deepcopy(model).float().eval()
    truncate(cut, deepest)
    ids = torch.full((2, 16), 1000, dtype=torch.long)  # shapes unlike the check's: a baked-in shape fails it
    mask = torch.ones_like(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_States(cut), (ids, mask), str(tmp), input_names=["ids", "mask"],
                              output_names=["states"], opset_version=17, dynamo=False,
                              dynamic_axes={"ids": {0: "b", 1: "t"}, "mask": {0: "b", 1: "t"},
                                            "states": {1: "b", 2: "t"}})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def encoder(model, deepest: int, threads: int, where: str, check) -> OrtEncoder | None:
    """``model`` (cut after ``deepest``) as an ONNX Runtime session with ``threads`` intra-op threads, if
    ``check(encoder)`` accepts it; else None, after one line naming ``where`` and why."""
    where = where or "engine onnx"
    path = cache_dir() / f"{model_key(model, deepest)}.onnx"
    exported = path.exists()
    try:
        import onnxruntime as ort

        if not exported:  # only an export needs onnx (1.3 s to import): a cached graph does not
            import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError as e:
        runtime.say(f"{where}: engine onnx needs the onnx and onnxruntime packages ({e.name} is missing); "
                    "running PyTorch")
        return None
    try:
        if not exported:
            export(model, deepest, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.log_severity_level = 3
        enc = OrtEncoder(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), path)
    except Exception as e:  # an exporter or runtime limit: PyTorch runs the member instead
        runtime.say(f"{where}: could not run this encoder with ONNX Runtime ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200] if str(e) else ''}); running PyTorch")
        return None
    if not check(enc):
        runtime.say(f"{where}: ONNX Runtime's embeddings of a sample differ from PyTorch's ({path}); running PyTorch")
        return None
    return enc
