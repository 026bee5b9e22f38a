"""Reading the original RobNets ``experiments/<name>/config.py`` files without executing them.

Those files are plain top-level assignments (``model = 'robnet_free'``, ``model_param = dict(C=36, ...)``,
``attack_param = {'epsilon': 8 / 255., ...}``). They are parsed with :mod:`ast` and evaluated by a tiny
interpreter that knows only literals, ``dict(...)``, lists/tuples, arithmetic and names assigned earlier
in the same file; anything else (imports, calls, attribute access) is refused with the line number.
"""

from __future__ import annotations

import ast
import operator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}


MAX_FILE_BYTES = 1 << 20  # original config files are a few hundred bytes
MAX_STEPS = 100_000  # evaluated expression nodes per file
MAX_STRING = 4096


class SafeEvaluator:
    """Evaluate literal expressions; ``names`` holds values assigned earlier."""

    def __init__(self, source: str, names: dict[str, Any] | None = None) -> None:
        self.source = source
        self.names = names if names is not None else {}
        self.steps = 0

    def fail(self, node: ast.AST, why: str) -> ConfigError:
        line = getattr(node, "lineno", "?")
        snippet = ast.unparse(node)[:60] if isinstance(node, ast.expr) else type(node).__name__
        return ConfigError(f"{self.source}:{line}: {why} in {snippet!r}; config files may only use literals, "
                           f"dict(...), lists, arithmetic and names assigned earlier")

    def eval(self, node: ast.AST) -> Any:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.fail(node, f"more than {MAX_STEPS:,} values")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (str, bytes)) and len(node.value) > MAX_STRING:
                raise self.fail(node, f"a string longer than {MAX_STRING:,} characters")
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            raise self.fail(node, f"unknown name {node.id!r}")
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise self.fail(node, "'**' unpacking is not supported")
            pairs = [(self.eval(k), self.eval(v)) for k, v in zip(node.keys, node.values)]
            try:
                return dict(pairs)
            except TypeError as exc:
                raise self.fail(node, f"invalid key ({exc})") from None
        if isinstance(node, (ast.List, ast.Tuple)):
            values = [self.eval(e) for e in node.elts]
            return values if isinstance(node, ast.List) else tuple(values)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            operand = self.eval(node.operand)
            try:
                return _UNARY[type(node.op)](operand)
            except Exception as exc:  # noqa: BLE001
                raise self.fail(node, f"cannot compute ({exc})") from None
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.eval(node.left), self.eval(node.right)
            if isinstance(node.op, ast.Pow) and (not isinstance(right, (int, float)) or abs(right) > 64):
                raise self.fail(node, "exponent too large")
            sequences = (str, bytes, list, tuple)
            if isinstance(node.op, ast.Mult) and (isinstance(left, sequences) or isinstance(right, sequences)):
                raise self.fail(node, "sequence repetition is not supported")
            try:
                result = _BINARY[type(node.op)](left, right)
            except Exception as exc:  # noqa: BLE001
                raise self.fail(node, f"cannot compute ({exc})") from None
            if isinstance(result, int) and not isinstance(result, bool) and result.bit_length() > 1024:
                raise self.fail(node, "number too large")
            return result
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            if node.args or any(k.arg is None for k in node.keywords):
                raise self.fail(node, "dict(...) takes keyword arguments only")
            return {k.arg: self.eval(k.value) for k in node.keywords}
        raise self.fail(node, f"unsupported {type(node).__name__}")

    def evaluate(self, node: ast.AST) -> Any:
        """:meth:`eval`, turning a too deeply nested expression into a ConfigError."""
        try:
            return self.eval(node)
        except RecursionError:
            raise ConfigError(f"{self.source}:{getattr(node, 'lineno', '?')}: expression too deeply "
                              f"nested") from None


def parse_original_config(text: str, source: str = "<config>") -> dict[str, Any]:
    """Return the top-level assignments of an original-style config file as a dict."""
    try:
        tree = ast.parse(text, filename=source)
    except SyntaxError as exc:
        raise ConfigError(f"{source}:{exc.lineno}: syntax error ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"{source}: too deeply nested to parse") from None
    evaluator = SafeEvaluator(source)
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # docstring
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            value = evaluator.evaluate(stmt.value)
            for target in stmt.targets:
                evaluator.names[target.id] = value
            continue
        kind = type(stmt).__name__
        raise ConfigError(f"{source}:{stmt.lineno}: {kind} statements are not allowed; config files may "
                          f"contain only plain assignments such as model_param = dict(C=36)")
    return dict(evaluator.names)


def evaluate_expression(text: str, source: str = "<value>") -> Any:
    """Evaluate one literal expression such as ``8/255`` (used for command-line overrides)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError):
        raise ConfigError(f"{source}: cannot read value {text[:60]!r}") from None
    return SafeEvaluator(source).evaluate(tree.body)


# ------------------------------------------------------------------------------------------ mapping
# original section -> (our section, {original key: our key}); nested dicts map to dotted keys.
_SECTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "model_param": ("model", {"C": "C", "num_classes": "num_classes", "layers": "layers", "steps": "steps",
                              "multiplier": "multiplier", "stem_multiplier": "stem_multiplier",
                              "share": "share", "AdPoolSize": "adaptive_pool_size",
                              "ImgNetBB": "imagenet_stem", "genotype": "genotype"}),
    "dataset_param": ("data", {"data_root": "root", "batch_size": "batch_size", "num_workers": "num_workers",
                               "cutout": "cutout", "resize_size": "resize_size",
                               "input_img_size": "input_size"}),
    "attack_param": ("attack", {"attack": "enabled", "epsilon": "eps", "num_steps": "steps",
                                "step_size": "step_size", "random_start": "random_start"}),
    "train_param": ("train", {"learning_rate": "lr", "learning_rate_min": "lr_min", "momentum": "momentum",
                              "weight_decay": "weight_decay", "epochs": "epochs", "no_wd": "no_wd",
                              "warm_up_param.warm_up_base_lr": "warmup_lr",
                              "warm_up_param.warm_up_epochs": "warmup_epochs"}),
    "resume_path": ("checkpoint", {"path": "path", "origin_ckpt": "original_format"}),
}
_TOP_LEVEL = {"model": "model.name", "dataset": "data.dataset", "seed": "seed", "report_freq": "report_freq",
              "save_path": "output_dir"}


def _flatten(value: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict):
            out.update(_flatten(item, name + "."))
        else:
            out[name] = item
    return out


def original_to_nested(values: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """Translate original config names to this project's nested config dict."""
    nested: dict[str, Any] = {}

    def put(dotted: str, value: Any) -> None:
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    known = list(_TOP_LEVEL) + list(_SECTIONS)
    for key, value in values.items():
        if key in _TOP_LEVEL:
            put(_TOP_LEVEL[key], value)
        elif key in _SECTIONS:
            section, names = _SECTIONS[key]
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a dict, got {type(value).__name__}")
            for inner, item in _flatten(value).items():
                if inner not in names:
                    raise ConfigError(f"{source}: unknown key {key}.{inner}{did_you_mean(inner, names)}")
                put(f"{section}.{names[inner]}", item)
        else:
            raise ConfigError(f"{source}: unknown setting {key!r}{did_you_mean(key, known)}; "
                              f"known: {', '.join(known)}")
    return nested


def load_original_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is not an original config file (those are a few "
                          f"hundred bytes; the limit is {MAX_FILE_BYTES:,})")
    return original_to_nested(parse_original_config(path.read_text(encoding="utf-8"), str(path)), str(path))
