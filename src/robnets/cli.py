"""Command-line interface: ``robnets eval | merge | demo | train | search | weights | list-models | info`` and the
original ``main.py`` flags.

Every user-fixable problem ends in one line, ``robnets: error: <what is wrong and how to fix it>``,
with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from .errors import RobnetsError
from .runtime import THREADS_ENV

DEMO_N = 500
DEMO_N_ATTACK = 200


EVAL_EXAMPLES = """examples:
  robnets eval --weights robnet_free --data-dir DATA --suite autoattack --n 1000
  torchrun --nproc_per_node 4 -m robnets eval --weights robnet_free --data-dir DATA --suite autoattack --output-dir OUT
  robnets eval --weights robnet_free --data-dir DATA --suite autoattack --shard 3/8 --output-dir OUT   # one job of 8
  robnets merge OUT                                          # the shards of OUT into one result
  robnets eval --checkpoint RobNet_free_cifar10.pth.tar --model robnet_free --data-dir DATA --suite autoattack
  robnets eval --config RobNet_large_cifar10 --checkpoint W.pth.tar --data-dir DATA --attacks clean,pgd20
  robnets eval --weights robnet_compact --sample --norm L2 --eps 0.5 --attacks clean,pgdl2-20

attack names (--attacks, comma-separated): clean, fgsm, pgd<steps> (e.g. pgd20, pgd100), pgdl2-<steps>,
  mifgsm[<steps>], cw[<steps>], deepfool, apgd-ce, apgd-t, fab-t, square, autoattack
suites (--suite): quick = clean,pgd20; paper = clean,fgsm,pgd20,pgd100,deepfool,mifgsm (RobNets Table 1);
  autoattack = clean + the reference AutoAttack (pyautoattack; --autoattack-version standard|plus|rand)
"""


def _add_eval_arguments(parser: argparse.ArgumentParser, *, demo: bool = False) -> None:
    what = parser.add_argument_group("what to evaluate")
    data = parser.add_argument_group("data")
    threat = parser.add_argument_group("threat model and attacks")
    run = parser.add_argument_group("how to run")
    if not demo:
        what.add_argument("--config", "-c",
                          help="YAML config, original-style experiments/<name>/config.py, or a bundled experiment "
                               "by name (e.g. RobNet_free_cifar10)")
        what.add_argument("--model", help="registered model name (overrides the config's model.name)")
        what.add_argument("--weights", metavar="NAME",
                          help="published weights by name, e.g. robnet_free (list: robnets weights)")
        what.add_argument("--checkpoint", help="weights: original .pth.tar, plain state dict or .safetensors")
        what.add_argument("--untrained", action="store_true", help="evaluate random weights (no checkpoint)")
        data.add_argument("--dataset", help="cifar10, cifar100, svhn, imagenet or cifar10-sample")
        data.add_argument("--sample", action="store_true",
                          help="use the CIFAR-10 test sample embedded in the package (500 images)")
        data.add_argument("--data-dir", help="data root (default: $ROBNETS_DATA, then the config, then ./data)")
        data.add_argument("--download", action="store_true", help="download the dataset with torchvision")
    data.add_argument("--n", "--n-points", dest="n", type=int,
                      help="evaluate the first N test images (bounds the whole run, sanity checks included); "
                           "under torchrun write --n-points (torchrun reads --n as its own --nnodes)")
    data.add_argument("--n-attack", type=int, help="attack only the first N of them (each result states n)")
    data.add_argument("--batch-size", type=int, help="evaluation batch size")
    threat.add_argument("--attacks", help="comma-separated attack names (listed below)")
    threat.add_argument("--suite", choices=["quick", "paper", "autoattack"], help="named attack set (below)")
    threat.add_argument("--norm", choices=["Linf", "L2", "L1"], help="threat model (default Linf)")
    threat.add_argument("--eps", type=_parse_eps, metavar="EPS",
                        help="perturbation budget, e.g. 8/255 or 0.5 (default 8/255 for Linf, 0.5 for L2)")
    threat.add_argument("--autoattack-version", choices=["standard", "plus", "rand"])
    threat.add_argument("--eps-sweep", nargs="?", const="0,1,2,4,6,8,10,12,16", metavar="EPS_LIST",
                        help="accuracy-vs-eps plot (PNG + JSON) at these eps in units of 1/255")
    threat.add_argument("--transfer-from", metavar="CHECKPOINT",
                        help="black-box transfer: craft the attacks on this model (a weights file, or published "
                             "weights by name as --weights takes), score them on the evaluated one")
    threat.add_argument("--transfer-model", help="registered name of the transfer source (if not in its metadata)")
    threat.add_argument("--eot", type=int, metavar="K", help="average attack gradients over K forward passes")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (cuda when present)")
    run.add_argument("--bf16", action="store_true", help="bf16 autocast for forward passes (fp32 default)")
    run.add_argument("--sanity", choices=["off", "quick", "full"],
                     help="sanity checks written into the results (default quick)")
    run.add_argument("--plain", action="store_true",
                     help="run the model exactly as the original implementation does (no fast path)")
    run.add_argument("--output-dir", help="run folder for results.json, results.md, config.yaml "
                                          "(default: runs/eval-<name>-<model>-<time>); the same command with "
                                          "the same folder resumes an interrupted run")
    if not demo:
        run.add_argument("--shard", metavar="K/N",
                         help="compute only shard K of N (K from 0) into OUTPUT_DIR/shard-K-of-N, e.g. one job of a "
                              "slurm array; robnets merge OUTPUT_DIR combines them")
        run.add_argument("--distributed", action="store_true",
                         help="require a torchrun/slurm launch: every rank evaluates its shard, rank 0 merges "
                              "(detected automatically otherwise)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="dotted config override, e.g. --set attack.steps=100 (repeatable)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _parse_eps(text: str) -> float:
    """'8/255' or '0.0314' -> float; refuses what is not a finite non-negative number."""
    import math

    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number such as 8/255 or 0.5") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes (an unknown flag, an invalid choice, a missing value) in one line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = f"; see robnets {self.prog.split(' ', 1)[1]} --help" if " " in self.prog else "; see robnets --help"
        print(f"robnets: error: {message}{hint}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _OneLineParser(prog="robnets", description="Adversarially robust neural architectures.")
    parser.add_argument("--version", action="version", version=f"robnets {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    p_eval = sub.add_parser("eval", help="clean and adversarial accuracy of a model", epilog=EVAL_EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_eval_arguments(p_eval)

    p_merge = sub.add_parser("merge", help="combine evaluation shards (robnets eval --shard K/N) into one result")
    p_merge.add_argument("folders", nargs="+", metavar="DIR",
                         help="shard folders, or the run folder holding them (shard-K-of-N)")
    p_merge.add_argument("--output-dir", help="where the merged result goes (default: the folder holding the shards)")

    p_demo = sub.add_parser("demo", help="evaluate the published compact RobNet on the embedded CIFAR-10 sample (the main job)")
    _add_eval_arguments(p_demo, demo=True)

    p_train = sub.add_parser("train", help="adversarial training (original recipe or fast methods)")
    p_train.add_argument("--config", "-c", help="YAML config or original-style experiments/<name>/config.py")
    p_train.add_argument("--model", help="registered model name (overrides model.name)")
    p_train.add_argument("--genotype", help="train an architecture given as canonical string (model 'robnet')")
    p_train.add_argument("--method", help="pgd, fgsm_rs, nfgsm, trades or standard")
    p_train.add_argument("--epochs", type=int, help="epochs after the warm-up")
    p_train.add_argument("--batch-size", type=int, help="per-process batch size")
    p_train.add_argument("--data-dir", help="data root (default: $ROBNETS_DATA, then the config, then ./data)")
    p_train.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p_train.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p_train.add_argument("--output-dir", help="run folder (default: <output_dir>/train-<name>-<model>-<time>)")
    p_train.add_argument("--resume", help="run folder (or its state.pt) of an interrupted run to continue")
    p_train.add_argument("--distributed", action="store_true",
                         help="require a torchrun/slurm launch (detected automatically otherwise)")
    p_train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p_train.add_argument("--no-progress", action="store_true")

    p_search = sub.add_parser("search", help="robust architecture search: supernet, sample, fine-tune, score, rank")
    p_search.add_argument("--config", "-c", help="YAML config with a search section (see experiments/search_*)")
    p_search.add_argument("--data-dir", help="data root (default: $ROBNETS_DATA, then the config, then ./data)")
    p_search.add_argument("--output-dir", help="run folder (default: <output_dir>/search-<name>-<time>)")
    p_search.add_argument("--resume", metavar="FOLDER",
                          help="continue a stopped search in FOLDER with its saved config (nothing is redone)")
    p_search.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p_search.add_argument("--distributed", action="store_true",
                          help="join a torchrun/slurm process group: DDP supernet, candidates sharded over ranks")
    p_search.add_argument("--rescore", metavar="FOLDER",
                          help="noise floor of the finished search in FOLDER: score --candidates of its candidates "
                               "again with --finetune-seed and report the rank correlation of the two scorings")
    p_search.add_argument("--candidates", type=int, default=12, metavar="N",
                          help="with --rescore: how many candidates, spread over the ranking (default 12)")
    p_search.add_argument("--finetune-seed", type=int, default=1, metavar="S",
                          help="with --rescore: the other fine-tuning seed (default 1)")
    p_search.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p_search.add_argument("--no-progress", action="store_true")

    p_weights = sub.add_parser("weights", help="published weights by name, with their measured accuracies")
    p_weights.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'robnet_free*'")
    p_weights.add_argument("--json", action="store_true", help="print JSON")

    p_list = sub.add_parser("list-models", help="registered model names")
    p_list.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'robnet_*'")

    p_info = sub.add_parser("info", help="parameters, FLOPs per image and genotype of a model")
    p_info.add_argument("name")
    p_info.add_argument("--arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor override, e.g. --arg C=48 --arg imagenet_stem=true")
    p_info.add_argument("--codes", action="store_true", help="also print the original 2-bit code lists")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    for sub_parser in sub.choices.values():
        sub_parser.add_argument("--threads", type=int, metavar="N",
                                help=f"CPU threads (default: ${THREADS_ENV}, else the cores not already busy)")
    return parser


def _eval_overrides(args: argparse.Namespace) -> list[str]:
    """CLI flags as dotted config overrides (applied after --set ones, so flags win)."""
    out = list(args.overrides)
    if getattr(args, "model", None):
        out.append(f"model.name={args.model}")
    if getattr(args, "sample", False):
        out.append("data.dataset=cifar10-sample")
    elif getattr(args, "dataset", None):
        out.append(f"data.dataset={args.dataset}")
    if args.attacks:
        out.append(f"eval.attacks={args.attacks}")
    if args.norm:
        out.append(f"attack.norm={args.norm}")
    if args.eps is not None:
        out.append(f"attack.{'eps' if (args.norm or 'Linf') == 'Linf' else 'l2_eps'}={args.eps!r}")
    if args.n is not None:
        out.append(f"eval.n={args.n}")
    if args.batch_size is not None:
        out.append(f"eval.batch_size={args.batch_size}")
    if args.device:
        out.append(f"eval.device={args.device}")
    if args.bf16:
        out.append("eval.precision=bf16")
    if args.plain:
        out.append("eval.execution=plain")
    if args.sanity:
        out.append(f"eval.sanity={args.sanity}")
    if args.suite:
        from .evaluation.suites import SUITES

        if args.attacks:
            raise RobnetsError("give --suite or --attacks, not both")
        out.append(f"eval.attacks={','.join(SUITES[args.suite])}")
    if args.autoattack_version:
        out.append(f"eval.autoattack_version={args.autoattack_version}")
    if args.eps_sweep:
        out.append(f"eval.eps_sweep_255=[{args.eps_sweep}]")
    if args.transfer_from:
        source = args.transfer_from
        if not Path(source).exists():  # a published weights name, as --weights takes
            from .models.pretrained import PRETRAINED, pretrained_info, verified_path

            if any(source in (w.name, w.model) for w in PRETRAINED):
                source = str(verified_path(pretrained_info(source)))
        out.append(f"eval.transfer_checkpoint={source}")
    if args.transfer_model:
        out.append(f"eval.transfer_model={args.transfer_model}")
    if args.eot:
        out.append(f"attack.eot_iter={args.eot}")
    return out


def _check_counts(args: argparse.Namespace) -> None:
    for flag in ("n", "n_attack", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise RobnetsError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")


def _print_run(run, out=None) -> None:  # noqa: ANN001
    out = out or sys.stdout
    print("", file=out)
    print(run.table(), file=out)
    print(f"\nweights: {run.meta['weights']}", file=out)
    if "json" in run.files:
        print(f"results: {run.files['json']}  table: {run.files['markdown']}"
              + (f"  config: {run.files['config']}" if "config" in run.files else ""), file=out)
    else:
        print(f"shard: {run.files['shard']} (partial: shards {run.meta.get('missing_shards')} not done yet)", file=out)
    if "eps_sweep" in run.meta:
        print(f"eps sweep: {run.meta['eps_sweep']['png']} (data {run.meta['eps_sweep']['json']})", file=out)
    flagged = [f for f in run.meta.get("sanity", []) if f["fired"]]
    for flag in flagged:
        print(f"SANITY FLAG {flag['name']}: {flag['message']}", file=out)


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import load_config
    from .evaluation.pipeline import run_evaluation

    _check_counts(args)
    overrides = _eval_overrides(args)
    notes: list[str] = []  # said once the run is known to start (an error is one line)
    if args.weights:
        from .models.pretrained import pretrained_info, verified_path

        if args.checkpoint or args.untrained:
            raise RobnetsError("give --weights NAME or --checkpoint PATH / --untrained, not both")
        entry = pretrained_info(args.weights)
        args.checkpoint = str(verified_path(entry))
        notes.append(f"==> Published weights {entry.name} ({entry.model}, {entry.dataset}, {entry.threat_model} "
                     f"{entry.eps * 255:.0f}/255; sha256 verified)")
    if args.config is None and args.checkpoint:
        # the checkpoint names its architecture (this project's metadata) or shows it (original keys and shapes)
        from .evaluation.pipeline import model_overrides_from_checkpoint

        found = model_overrides_from_checkpoint(args.checkpoint)
        if args.model:  # the user's model name wins; width, depth and classes still come from the file
            found = [o for o in found if not o.startswith(("model.name=", "model.genotype="))]
        if found and not args.model and not str(args.checkpoint).endswith(".safetensors"):
            notes.append(f"==> Architecture read from the checkpoint's keys and shapes: "
                         f"{', '.join(o.removeprefix('model.') for o in found)}")
        overrides = found + overrides
    config = load_config(args.config, overrides)
    if args.config is None and not args.model:
        config.name = "cli"
    from .distributed import init_distributed, shutdown
    from .evaluation.shards import parse_shard
    from .runtime import resolve_device

    shard = parse_shard(args.shard) if args.shard else None
    if shard is not None and args.output_dir is None:
        raise RobnetsError("--shard needs --output-dir: every shard of the run goes into that folder, where "
                           "robnets merge finds them")
    ctx = init_distributed(resolve_device(config.eval.device).type, required=args.distributed)
    try:
        run = run_evaluation(config, checkpoint=args.checkpoint, untrained=args.untrained, data_dir=args.data_dir,
                             download=args.download, output_dir=args.output_dir, n_attack=args.n_attack,
                             progress=not args.no_progress and ctx.is_main,
                             log=lambda m: print(m, file=sys.stderr) if ctx.is_main else None, shard=shard, ctx=ctx,
                             notes=notes)
    finally:
        shutdown(ctx)
    if run is not None:
        _print_run(run)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .evaluation.pipeline import write_merged
    from .evaluation.shards import merge, shard_folders

    folders = shard_folders(args.folders)
    if args.output_dir:
        out = Path(args.output_dir)
    else:
        parents = {f.parent.resolve() if f.name.startswith("shard-") else f.resolve() for f in folders}
        if len(parents) != 1:
            raise RobnetsError("the shards lie in different folders; give --output-dir for the merged result")
        out = parents.pop()
    run = write_merged(merge(folders), out, log=lambda m: print(m, file=sys.stderr))
    _print_run(run)
    return 0


DEMO_WEIGHTS = "robnet_compact"  # small enough for PGD-20 on 200 images in about a minute on 2 CPU cores


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the published compact RobNet on the embedded CIFAR-10 sample, clean and PGD-20."""
    from .config import load_config
    from .evaluation.pipeline import model_overrides_from_checkpoint, run_evaluation
    from .models.pretrained import pretrained_info, verified_path

    _check_counts(args)
    entry = pretrained_info(DEMO_WEIGHTS)
    weights = verified_path(entry)
    base = ["name=demo", "data.dataset=cifar10-sample", "eval.attacks=clean,pgd20", f"eval.n={DEMO_N}",
            "eval.batch_size=100", "output_dir=./runs", *model_overrides_from_checkpoint(weights)]
    print(f"==> Published weights {entry.name} ({entry.notes}; CIFAR-10 test: "
          f"clean {entry.measured['clean'].accuracy:.2f} %, PGD-20 {entry.measured['pgd20'].accuracy:.2f} %, "
          f"n={entry.measured['pgd20'].n:,})", file=sys.stderr)
    config = load_config(None, base + _eval_overrides(args))
    n_attack = args.n_attack if args.n_attack is not None else DEMO_N_ATTACK
    run = run_evaluation(config, checkpoint=weights, output_dir=args.output_dir, n_attack=n_attack,
                         progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    _print_run(run)
    return 0


def cmd_list_models(args: argparse.Namespace) -> int:
    from .models import list_models, model_info

    names = list_models(args.pattern)
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name.ljust(width)}  {model_info(name).description}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from .models.pretrained import PRETRAINED, list_pretrained, weights_table

    names = set(list_pretrained(args.pattern))
    if args.json:
        print(json.dumps([w.to_dict() for w in PRETRAINED if w.name in names], indent=2))
        return 0
    lines = weights_table().splitlines()
    keep = lines[:2] + [line for line, w in zip(lines[2:], PRETRAINED) if w.name in names]
    print("\n".join(keep))
    print("\nload: robnets.create_model('<name>') or create_model('<model>', pretrained=True); "
          "evaluate: robnets eval --weights <name>")
    return 0


def _parse_model_args(pairs: Sequence[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise RobnetsError(f"--arg {pair!r} must look like KEY=VALUE, e.g. --arg C=48")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from .models import create_model, model_info
    from .models.flops import flops_per_image

    info = model_info(args.name)
    model = create_model(args.name, **_parse_model_args(args.model_args))
    config = getattr(model, "config", {})
    size = (3, 224, 224) if config.get("imagenet_stem") else info.input_size
    params = sum(p.numel() for p in model.parameters())
    flops = flops_per_image(model, size)
    genotype = getattr(model, "genotype", None)
    data = {"name": args.name, "description": info.description, "parameters": params,
            "flops_per_image": flops, "input_size": list(size), "arguments": config,
            "genotype": str(genotype) if genotype is not None else None,
            "density": round(genotype.density(), 4) if genotype is not None else None,
            "paper_reports": info.published, "paper": info.paper}
    if args.codes and genotype is not None:
        data["codes"] = genotype.to_codes()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{args.name}: {info.description}")
    print(f"  parameters      {params:,}")
    print(f"  FLOPs / image   {flops / 1e9:.3f} G (forward, {size[1]}x{size[2]} input)")
    print(f"  arguments       {', '.join(f'{k}={v}' for k, v in config.items() if v is not None)}")
    if genotype is not None:
        kind = "shared cell" if genotype.is_shared else f"cell-free, {len(genotype.cells)} cells"
        print(f"  genotype        ({kind}, density {genotype.density():.3f})")
        print(f"    {genotype}")
    if info.published:
        print(f"  paper reports   {', '.join(f'{k} {v}%' for k, v in info.published.items())} for its own weights "
              f"({info.paper}; those weights are not distributed: `robnets weights` lists what is, with measured "
              f"numbers)")
    if args.codes and genotype is not None:
        print(f"  2-bit codes     {json.dumps(genotype.to_codes())}")
    return 0


def _train_overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    if args.model:
        out.append(f"model.name={args.model}")
    if args.genotype:
        genotype = args.genotype
        if Path(genotype).is_file():
            genotype = Path(genotype).read_text().strip()
        out += ["model.name=robnet", f"model.genotype={genotype}"]
    for flag, key in (("method", "train.method"), ("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
                      ("device", "train.device")):
        if getattr(args, flag) is not None:
            out.append(f"{key}={getattr(args, flag)}")
    if args.bf16:
        out.append("train.precision=bf16")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .training.driver import run_training

    import os

    result = run_training(args.config, _train_overrides(args), output_dir=args.output_dir, data_dir=args.data_dir,
                          resume=args.resume, distributed=args.distributed, progress=not args.no_progress)
    if os.environ.get("RANK", "0") in ("", "0"):  # one line per run, not per process
        print(f"run folder: {result.folder} "
              f"({'complete' if result.completed else f'interrupted: resume with --resume {result.folder}'})")
    return _exit_status(result.stopped_by)


def _exit_status(stopped_by: int | None) -> int:
    """0, or 128 + the signal that stopped a run (saved, resumable), so that `train && eval` and batch
    schedulers do not go on as if it had finished."""
    return 0 if stopped_by is None else 128 + int(stopped_by)


def cmd_search(args: argparse.Namespace) -> int:
    from .search.driver import rescore_search, run_search

    overrides = list(args.overrides) + ([f"search.device={args.device}"] if args.device else [])
    if args.rescore is not None:
        search, floor = rescore_search(args.rescore, overrides, args.candidates, args.finetune_seed,
                                       data_dir=args.data_dir, progress=not args.no_progress)
        if floor is None:
            print(f"re-scoring stopped: run the same command to continue ({args.rescore})")
            return _exit_status(search.stop_signal or signal.SIGTERM)
        from .search.analysis import describe

        print(f"noise floor ({floor['n']} candidates, fine-tuning seeds {floor['finetune_seeds']}), adversarial "
              f"accuracy of the two scorings: {describe(floor['adv'])}; {Path(args.rescore) / 'noise_floor.json'}")
        return 0
    result, is_main = run_search(args.config, overrides, output_dir=args.output_dir, data_dir=args.data_dir,
                                 resume=args.resume, distributed=args.distributed, progress=not args.no_progress)
    if is_main:
        if result.completed and result.best is not None:
            print(f"best architecture: {result.best['genotype']} (clean {result.best['clean']:.1f}%, "
                  f"adversarial {result.best['adv']:.1f}%, n={result.best['n']})")
        print(f"search folder: {result.folder} "
              f"({'complete' if result.completed else 'stopped: continue with --resume ' + str(result.folder)})")
    return _exit_status(result.stopped_by)


COMMANDS = {"train": cmd_train, "search": cmd_search, "eval": cmd_eval, "merge": cmd_merge, "demo": cmd_demo, "list-models": cmd_list_models, "weights": cmd_weights, "info": cmd_info}


def run_guarded(fn, *args) -> int:  # noqa: ANN001
    """Run a command; user errors become one line on stderr and exit status 2."""
    try:
        return fn(*args)
    except RobnetsError as exc:
        print(f"robnets: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robnets: interrupted", file=sys.stderr)
        return 130


class _StderrHandler(logging.Handler):
    """The library's log lines on the current stderr (looked up at each line, so redirection is followed)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def configure_logging() -> None:
    """The command line shows the library's INFO lines (progress of training, search, AutoAttack) on stderr;
    Python users of the library get them only if they configure logging themselves. In a torchrun or slurm
    launch only the first process speaks (others show warnings and errors), so each line appears once."""
    import os

    logger = logging.getLogger("robnets")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    rank = os.environ.get("RANK") or (os.environ.get("SLURM_PROCID") if int(os.environ.get("SLURM_NTASKS", "1") or 1)
                                      > 1 else None)
    logger.setLevel(logging.INFO if rank in (None, "", "0") else logging.WARNING)


def _with_threads(fn):  # noqa: ANN001, ANN202
    """The command, after torch's CPU threads are set (--threads, $ROBNETS_THREADS, or the load-aware default)."""
    def run(args: argparse.Namespace) -> int:
        from .runtime import configure_threads

        configure_threads(getattr(args, "threads", None))  # each run's first line says how many
        return fn(args)
    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    return _quiet_on_closed_pipe(run_guarded, _with_threads(COMMANDS[args.command]), args)


def _quiet_on_closed_pipe(fn, *args) -> int:  # noqa: ANN001
    """Output into a pipe whose reader has gone (``robnets weights --json | head``) ends quietly, as in Unix tools."""
    import os

    try:
        code = fn(*args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # nothing more reaches the closed pipe, not even at exit
        os.dup2(devnull, sys.stdout.fileno())
        return 0


# ------------------------------------------------------------------------------ original main.py flags
def build_original_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="main.py", description="RobNets original command line (python main.py --config ... --eval_only)")
    parser.add_argument("--config", "-c", default="./experiments/RobNet_free_cifar10/config.py",
                        help="location of the config file")
    parser.add_argument("--eval_only", action="store_true", help="only evaluate (clean and PGD)")
    parser.add_argument("--distributed", action="store_true", help="distributed run (torchrun or slurm)")
    parser.add_argument("--checkpoint", help="weights to evaluate instead of the config's resume_path")
    parser.add_argument("--data-dir", help="data root (default: $ROBNETS_DATA, then the config's data_root)")
    parser.add_argument("--n", type=int, help="evaluate only the first N test images")
    parser.add_argument("--output-dir", help="run folder for the results (needed to resume; the same folder "
                                             "continues an interrupted evaluation)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, metavar="N", help=f"CPU threads (default: ${THREADS_ENV}, else the "
                        f"cores not already busy)")
    return parser


def _original(args: argparse.Namespace) -> int:
    from .config import load_config
    from .evaluation.pipeline import run_evaluation

    if not args.eval_only:
        from .training.driver import run_training

        # the original trains with PGD-7 (its attack_param.num_steps is the evaluation's)
        result = run_training(args.config, list(args.overrides), data_dir=args.data_dir,
                              distributed=args.distributed)
        print(f"run folder: {result.folder}")
        return 0
    overrides = list(args.overrides)
    if args.n is not None:
        overrides.append(f"eval.n={args.n}")
    if args.device:
        overrides.append(f"eval.device={args.device}")
    config = load_config(args.config, overrides)
    attack = "clean" if not config.attack.enabled else f"pgd{config.attack.steps}"
    config.eval.attacks = ["clean", attack] if attack != "clean" else ["clean"]
    checkpoint = args.checkpoint or config.checkpoint.path
    if checkpoint is None:
        raise RobnetsError(f"{args.config} sets no resume_path for the eval_only mode; pass --checkpoint PATH")
    print("==> Building model..")
    print(f"==> Resuming from checkpoint {checkpoint}..")
    print("==> Preparing data..")
    from .distributed import init_distributed, shutdown
    from .runtime import resolve_device

    ctx = init_distributed(resolve_device(config.eval.device).type, required=args.distributed)
    try:
        output = args.output_dir or (f"{config.output_dir}/eval-{config.name}-distributed" if ctx.enabled else None)
        run = run_evaluation(config, checkpoint=checkpoint, data_dir=args.data_dir, progress=ctx.is_main,
                             log=lambda m: print(m) if ctx.is_main else None, ctx=ctx, output_dir=output)
    finally:
        shutdown(ctx)
    if run is None:
        return 0
    for result in run.results:
        what = "Clean Data" if result.attack == "clean" else f"Adversarial Data ({result.attack})"
        print(f"==> Testing on {what}..")
        print(f" * Prec@1 {result.accuracy:.3f}  (n={result.n}, {result.seconds:.1f} s)")
    _print_run(run)
    return 0


def original_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the repository's ``main.py`` (the original RobNets command line)."""
    args = build_original_parser().parse_args(argv)
    configure_logging()
    return _quiet_on_closed_pipe(run_guarded, _with_threads(_original), args)


if __name__ == "__main__":
    sys.exit(main())
