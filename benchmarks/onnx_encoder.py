"""A frozen encoder through ONNX Runtime (fp32, and int8 by dynamic quantization) beside PyTorch's own path, on the
same chunks, in one run: essays/s and the minimum cosine of the pooled states to PyTorch fp32's.

The encoder is the default run's MPNet cut after hidden state 9 (what its member and heads read), exported with
``torch.onnx.export`` to return states 4-9; every path pools the same chunks the same way (mean over tokens), so
the only difference is who runs the blocks. PyTorch runs ``stack.backbones.embedder``'s copy (packed oneDNN
weights, bf16 where native). Rounds alternate the paths (each round starts with the next one).

    .venv/bin/python benchmarks/onnx_encoder.py --n 48 --rounds 2
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/onnx_encoder.py --n 16 --rounds 1

ONNX Runtime's kernels are picked by the CPU's own flags: the two variables above hold PyTorch (oneDNN and ATen)
to AVX2 but not ONNX Runtime, so under them only PyTorch's figures are an AVX2 CPU's.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

LAYERS = (4, 5, 6, 7, 8, 9)


class States(torch.nn.Module):
    """input ids, mask -> hidden states 4..9, stacked ``(6, b, t, d)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return torch.stack([out.hidden_states[i] for i in LAYERS])


def pooled(states: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Mean over each chunk's pooled tokens of every state -> ``(b, 6 * d)``."""
    w = pool[None, :, :, None].astype(np.float32)
    means = (states.astype(np.float32) * w).sum(2) / np.maximum(w.sum(2), 1)
    return np.concatenate(list(means), axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="essays (the first n of train.csv)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from stack import runtime
    from stack.backbones.chunks import batches, chunks_from_ids, encode
    from stack.backbones.depth import truncate
    from stack.backbones.embedder import inference_model
    from stack.backbones.loading import load_backbone
    from stack.members.registry import load_member

    spec = load_member("mpnet")
    threads = runtime.set_threads(0)
    tokenizer, model = load_backbone(spec.backbone)
    model.eval()
    texts = pd.read_csv("data/fb3/train.csv")["full_text"].iloc[: args.n].tolist()
    chunks = chunks_from_ids(encode(texts, tokenizer), tokenizer, 512, 64, False)
    todo = [(ids, attn, pool) for _, ids, attn, pool in batches(chunks, 16, tokenizer.pad_token_id)]
    tmp = Path(tempfile.mkdtemp())
    export = copy.deepcopy(model)
    truncate(export, max(LAYERS))
    cut = States(export)
    torch.onnx.export(cut, (todo[0][0], todo[0][1]), tmp / "fp32.onnx", input_names=["ids", "mask"],
                      output_names=["states"], dynamic_axes={"ids": {0: "b", 1: "t"}, "mask": {0: "b", 1: "t"},
                                                             "states": {1: "b", 2: "t"}}, opset_version=17,
                      dynamo=False)
    quantize_dynamic(str(tmp / "fp32.onnx"), str(tmp / "int8.onnx"), weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sessions = {p: ort.InferenceSession(str(tmp / f"{p}.onnx"), opts, providers=["CPUExecutionProvider"])
                for p in ("fp32", "int8")}
    torch_paths = {p: States(inference_model(model, runtime.torch_dtype(p), 16 * 512, deepest=max(LAYERS)))
                   for p in ("fp32", "bf16") if p == "fp32" or runtime.native_bf16(torch.device("cpu"))}

    def run(path: str) -> np.ndarray:
        out = []
        for ids, attn, pool in todo:
            if path.startswith("torch"):
                with torch.inference_mode():
                    states = torch_paths[path.split("-")[1]](ids, attn).float().numpy()
            else:
                states = sessions[path.split("-")[1]].run(["states"], {"ids": ids.numpy(), "mask": attn.numpy()})[0]
            out.append(pooled(states, pool.numpy()))
        return np.concatenate(out)

    paths = [f"torch-{p}" for p in torch_paths] + ["ort-fp32", "ort-int8"]
    times, embs = {p: [] for p in paths}, {}
    for r in range(args.rounds):
        for p in paths[r % len(paths):] + paths[: r % len(paths)]:
            t0 = time.perf_counter()
            embs[p] = run(p)
            times[p].append(time.perf_counter() - t0)
    ref = embs["torch-fp32"]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    print(f"{args.n} essays, {len(chunks)} chunks, {threads} threads, oneDNN ISA: {isa}; best of {args.rounds} rounds")
    print("| path | essays/s | vs torch fp32 | min cosine to torch fp32 |\n|---|---|---|---|")
    for p in paths:
        a, b = embs[p], ref
        cos = float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())
        print(f"| {p} | {args.n / min(times[p]):.2f} | {min(times['torch-fp32']) / min(times[p]):.2f}x | {cos:.5f} |",
              flush=True)


if __name__ == "__main__":
    main()
