"""torch.hub entry points: ``torch.hub.load(repo_dir, "robnet_free", source="local", pretrained=True)``.

Each entry builds the registered model of the same name; ``pretrained=True`` (or a tag such as
``pretrained="nfgsm_4ep_cifar10"``) loads published weights shipped with the package, verified by sha256.
"""

import sys
from pathlib import Path

dependencies = ["torch", "safetensors", "yaml"]

_SRC = Path(__file__).resolve().parent / "src"
if (_SRC / "robnets").is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # a source checkout without `pip install`

from robnets.models import create_model as _create_model  # noqa: E402


def _entry(name):
    def build(pretrained=False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = name
    build.__doc__ = f"{name}; pretrained=True loads its default published weights (see `robnets weights`)."
    return build


robnet_free = _entry("robnet_free")
robnet_large_v1 = _entry("robnet_large_v1")
robnet_large_v2 = _entry("robnet_large_v2")
robnet_compact = _entry("robnet_compact")
