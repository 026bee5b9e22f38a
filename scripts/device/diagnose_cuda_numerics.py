"""Are the fast path's fp32 input gradients on CUDA equal to float64 up to rounding? (~1 minute on a GPU)

On an H200 (TF32 off) a random robnet_large_v1's fast-path input gradient was 3.9e-3 from float64 (plain: 1.6e-4).
On CPU the same kind of gap is entirely explained by a few ReLU inputs within rounding of zero flipping sign
(robnets.acceleration.numerics): at the fp32 run's own activation pattern both paths agree with float64 to
~5e-7. This script measures, for the plain path and the fast path (PyTorch kernels, and Triton's when usable),
against float64 of the same path: the plain gradient error, the error at the same activation pattern, the
number of flipped ReLU units and how close to zero they were, under variants that isolate other suspects:

* ``default``          channels-last fast path, cuDNN picks its algorithms
* ``nchw``             the fast path without channels-last
* ``deterministic``    cudnn.deterministic (restricts cuDNN to deterministic algorithms)
* ``no_cudnn``         cuDNN disabled (PyTorch's native CUDA convolutions)

    python3 scripts/device/diagnose_cuda_numerics.py --json $OUT/numerics.json [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json

import torch

import robnets
from robnets.acceleration import FastRobNet, triton_usable
from robnets.acceleration.folding import randomize_batchnorm
from robnets.acceleration.numerics import compare_with_float64


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", default=None)
    parser.add_argument("--variants", default="default,nchw,deterministic,no_cudnn")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton kernels (they compile for minutes)")
    args = parser.parse_args()
    device = torch.device(args.device)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                    "conv_fp32_precision": getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)}
    triton = device.type == "cuda" and not args.no_triton and triton_usable(device)
    try:
        for name, kwargs in [("robnet_large_v1", {"C": 16, "layers": 8}), ("robnet_free", {"C": 8})]:
            torch.manual_seed(0)
            model = robnets.create_model(name, **kwargs)
            randomize_batchnorm(model)
            model = model.to(device).eval()
            model64 = copy.deepcopy(model).double()
            x = torch.rand(16, 3, 32, 32, device=device)
            y = torch.randint(0, 10, (16,), device=device)
            rows = {}
            for variant in args.variants.split(","):
                with _variant(variant):
                    cl = variant != "nchw"
                    paths = {"plain": (model.set_reference_mode(True), model64.set_reference_mode(True)),
                             "fast": (FastRobNet(model, channels_last=cl), FastRobNet(model64, channels_last=cl))}
                    if triton and variant == "default":
                        paths["fast_triton"] = (FastRobNet(model, kernels="triton"), FastRobNet(model64))
                    rows[variant] = {}
                    for path, (m32, m64) in paths.items():
                        result = compare_with_float64(m32, m64, x, y).as_dict()
                        rows[variant][path] = result
                        print(name, variant, path, {k: (f"{v:.2e}" if isinstance(v, float) else v)
                                                    for k, v in result.items()}, flush=True)
                    model.set_reference_mode(False)
                    model64.set_reference_mode(False)
            report[name] = rows
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
