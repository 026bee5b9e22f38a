"""Where does the fast path's fp32 input gradient lose accuracy on CUDA? (~1 minute on a GPU)

On CPU the fast and plain paths agree within 1e-4; on an H200 (TF32 off) the fast path's input gradient
was 3.9e-3 from float64 on a random robnet_large_v1 (plain: 1.6e-4). This script measures, against a float64
reference of the plain path, the fp32 error of both paths under variants that isolate the suspects:

* ``default``          channels-last fast path, cuDNN picks its algorithms
* ``nchw``             the fast path without channels-last
* ``deterministic``    cudnn.deterministic (restricts cuDNN to deterministic algorithms)
* ``no_cudnn``         cuDNN disabled (PyTorch's native CUDA convolutions)

and, for the default variant, the relative error of every cell's output (forward) so the depth at which the
error appears is visible.

    python3 scripts/device/diagnose_cuda_numerics.py --json $OUT/numerics.json [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

import robnets
from robnets.acceleration import FastRobNet
from robnets.acceleration.folding import randomize_batchnorm

from preflight import _logits_grad, _rel  # this folder is on sys.path when a script here runs


@contextlib.contextmanager
def _variant(name: str):
    cudnn = torch.backends.cudnn
    saved = cudnn.enabled, cudnn.deterministic, cudnn.benchmark
    try:
        if name == "deterministic":
            cudnn.deterministic = True
        elif name == "no_cudnn":
            cudnn.enabled = False
        yield
    finally:
        cudnn.enabled, cudnn.deterministic, cudnn.benchmark = saved


def _cell_outputs(fast: FastRobNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Every cell's output of the fast path (forward only)."""
    net = fast.source
    outputs = []
    with torch.no_grad():
        h = net.normalize(x)
        if fast.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        s0 = s1 = fast._stem(h)
        for cell in fast._cells:
            s0, s1 = s1, cell(s0, s1, fast._half)
            outputs.append(s1)
    return outputs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                    "conv_fp32_precision": getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)}
    try:
        for name, kwargs in [("robnet_large_v1", {"C": 16, "layers": 8}), ("robnet_free", {"C": 8})]:
            torch.manual_seed(0)
            model = robnets.create_model(name, **kwargs)
            randomize_batchnorm(model)
            model = model.to(device).eval().double()
            x = torch.rand(16, 3, 32, 32, device=device, dtype=torch.float64)
            y = torch.randint(0, 10, (16,), device=device)
            ref_logits, ref_grad = _logits_grad(model.set_reference_mode(True), x, y)
            ref_cells = _cell_outputs(FastRobNet(model.set_reference_mode(False), channels_last=False), x)
            model, xf = model.float(), x.float()
            rows = {}
            for variant in ("default", "nchw", "deterministic", "no_cudnn"):
                with _variant(variant):
                    plain_logits, plain_grad = _logits_grad(model.set_reference_mode(True), xf, y)
                    fast = FastRobNet(model.set_reference_mode(False), channels_last=variant != "nchw")
                    fast_logits, fast_grad = _logits_grad(fast, xf, y)
                    rows[variant] = {
                        "plain_logits": _rel(plain_logits, ref_logits), "fast_logits": _rel(fast_logits, ref_logits),
                        "plain_grad": _rel(plain_grad, ref_grad), "fast_grad": _rel(fast_grad, ref_grad),
                        "fast_vs_plain_grad": _rel(fast_grad, plain_grad)}
                    if variant == "default":
                        rows["cells_forward_rel"] = [_rel(a, b) for a, b in zip(_cell_outputs(fast, xf), ref_cells)]
                print(name, variant, {k: f"{v:.2e}" for k, v in rows[variant].items()}, flush=True)
            print(name, "cell outputs vs float64:", [f"{v:.1e}" for v in rows["cells_forward_rel"]], flush=True)
            report[name] = rows
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
