"""First minute on a lent GPU: check that the fused Triton kernels and the CUDA-graph attack loop are correct
there, time Triton against PyTorch kernels on robnet_free, and write the choice to an env file that the later
device steps source (ROBNETS_FAST_KERNELS, ROBNETS_CUDA_GRAPHS).

    python3 scripts/device/preflight.py --env /tmp/robnets_env --json $OUT/preflight.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import traceback

import torch

import robnets
from robnets.acceleration import FastRobNet, triton_usable
from robnets.acceleration.numerics import compare_with_float64, logits_and_input_grad
from robnets.attacks import PGD
from robnets.runtime import autocast_context
from robnets.training.methods import MethodSettings, make_inputs, training_loss


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_step(engine, x, y, iters: int = 10) -> float:
    """Seconds per attack step (forward + input gradient), median over ``iters`` after warm-up."""
    times = []
    for i in range(iters + 3):
        _sync(x.device)
        start = time.perf_counter()
        logits_and_input_grad(engine, x, y)
        _sync(x.device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _time_train_step(model, engine, x, y, precision: str, iters: int = 6) -> float:
    """Seconds per N-FGSM training step as the trainer runs it (median after warm-up)."""
    settings = MethodSettings(name="nfgsm", precision=precision)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(iters + 2):
        _sync(x.device)
        start = time.perf_counter()
        x_in = make_inputs(engine, x, y, settings)
        model.train()
        loss, _ = training_loss(model, x, x_in, y, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(x.device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    model.eval()
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="/tmp/robnets_env")
    parser.add_argument("--json", default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    parser.add_argument("--time-triton", action="store_true",
                        help="also time the Triton kernels (compiling them took minutes on an H200)")
    parser.add_argument("--train-rate-only", action="store_true",
                        help="only time the N-FGSM training step (what plan_epochs.py needs), ~30 s on a GPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    report: dict = {"device": name, "torch": torch.__version__, "batch_size": args.batch_size}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    print(report, flush=True)

    torch.manual_seed(0)
    model = robnets.create_model("robnet_free").to(device).eval()
    x = torch.rand(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    if args.train_rate_only:
        model.to(memory_format=torch.channels_last)
        for precision in ("bf16",):
            report[f"nfgsm_train_step_images_per_s_{precision}"] = args.batch_size / _time_train_step(
                model, FastRobNet(model), x, y, precision)
        print("N-FGSM training img/s:", {k: round(v) for k, v in report.items() if k.startswith("nfgsm_train_step")},
              flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        return 0

    # 1. correctness of each kernel family, fp32 with TF32 off, against float64 of the same path: logits and the
    #    input gradient at the fp32 run's own ReLU pattern within 1e-4, and only near-zero ReLU inputs flipped
    #    (a flipped kink moves a gradient discontinuously in any fp32 execution: acceleration/numerics.py)
    kernels_ok = {"torch": True, "triton": triton_usable(device)}
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    xs, ys = x[:32], y[:32]
    model64 = copy.deepcopy(model).double()
    plain = compare_with_float64(model.set_reference_mode(True), model64.set_reference_mode(True), xs, ys)
    report["plain_fp32_vs_float64"] = plain.as_dict()
    model.set_reference_mode(False)
    model64.set_reference_mode(False)
    print("plain fp32 vs float64:", plain.as_dict(), flush=True)
    for kind in ("torch", "triton"):
        if not kernels_ok[kind]:
            continue
        try:
            result = compare_with_float64(FastRobNet(model, kernels=kind), FastRobNet(model64), xs, ys)
            report[f"{kind}_fp32"] = result.as_dict()
            report[f"{kind}_fp32"]["grad_rel_vs_plain_fp32"] = _rel(result.grad, plain.grad)
            kernels_ok[kind] = (result.logits_rel <= 1e-4 and result.grad_rel_same_pattern <= 1e-4
                                and result.flipped_units <= 1e-5 * result.relu_units
                                and result.max_flip_margin <= 1e-4)
        except Exception:  # noqa: BLE001 - report any failure of a kernel family and fall back
            report[f"{kind}_error"] = traceback.format_exc(limit=3)
            kernels_ok[kind] = False
        print(kind, "ok" if kernels_ok[kind] else "REJECTED", report.get(f"{kind}_fp32"),
              report.get(f"{kind}_error", ""), flush=True)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    if not any(kernels_ok.values()):
        print("no kernel family passed; falling back to torch kernels", flush=True)
        kernels_ok["torch"] = True
    report["kernels_ok"] = dict(kernels_ok)

    # 2. speed of one attack step (forward + input gradient) on each path, default precision settings
    speed = {"plain": _time_step(model.set_reference_mode(True), x, y)}
    model.set_reference_mode(False)
    for kind, ok in kernels_ok.items():
        if ok and (kind == "torch" or args.time_triton):
            for precision in ("fp32", "bf16"):
                try:
                    engine = FastRobNet(model, kernels=kind)
                    with autocast_context(device, precision):
                        speed[f"{kind}_{precision}"] = _time_step(engine, x, y)
                except Exception:  # noqa: BLE001
                    report[f"{kind}_{precision}_speed_error"] = traceback.format_exc(limit=3)
                    if precision == "fp32":
                        kernels_ok[kind] = False
    report["attack_step_seconds"] = speed
    report["attack_step_images_per_s"] = {k: args.batch_size / v for k, v in speed.items()}
    print("attack step img/s:", {k: round(v) for k, v in report["attack_step_images_per_s"].items()}, flush=True)
    fastest = min((k for k in ("torch", "triton") if kernels_ok[k] and f"{k}_fp32" in speed),
                  key=lambda k: speed[f"{k}_fp32"])
    report["chosen_kernels"] = fastest
    model.to(memory_format=torch.channels_last)  # as the trainer holds it
    # 2b. one N-FGSM training step (fast attack, then forward/backward/SGD on the source model in train mode)
    for precision in ("bf16", "fp32"):
        try:
            report[f"nfgsm_train_step_images_per_s_{precision}"] = args.batch_size / _time_train_step(
                model, FastRobNet(model, kernels=fastest), x, y, precision)
        except Exception:  # noqa: BLE001
            report[f"nfgsm_train_{precision}_error"] = traceback.format_exc(limit=3)
    print("N-FGSM training img/s:", {k: round(v) for k, v in report.items() if k.startswith("nfgsm_train_step")},
          flush=True)

    # 3. the CUDA-graph attack loop equals the eager loop
    graphs_ok = False
    try:
        engine = FastRobNet(model, kernels=fastest)
        eager = PGD(engine, steps=5, seed=0)(x[:64], y[:64])
        start = time.perf_counter()
        graphed = PGD(engine, steps=5, seed=0, cuda_graphs=True)(x[:64], y[:64])
        _sync(device)
        mismatch = (eager != graphed).float().mean().item()
        graphs_ok = mismatch <= 1e-3 and (graphed - x[:64]).abs().max().item() <= 8 / 255 + 1e-6
        report["cuda_graph_mismatch_fraction"] = mismatch
        report["cuda_graph_capture_s"] = time.perf_counter() - start
    except Exception:  # noqa: BLE001
        report["cuda_graph_error"] = traceback.format_exc(limit=3)
    report["cuda_graphs"] = graphs_ok
    print("cuda graphs ok:", graphs_ok, report.get("cuda_graph_error", ""), flush=True)

    with open(args.env, "w") as f:
        f.write(f"export ROBNETS_FAST_KERNELS={fastest}\nexport ROBNETS_CUDA_GRAPHS={int(graphs_ok)}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(f"chosen: kernels={fastest} cuda_graphs={graphs_ok}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
