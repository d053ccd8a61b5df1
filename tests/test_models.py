"""Every registered classifier, built-in or from a plugin folder in plugins/, builds for the
dataset and maps a batch to logits (a new architecture is tested for free, the timm way)."""
from pathlib import Path

import pytest
import torch

from kdbench.plugins import load_registry

PLUGIN_DIRS = sorted(p for p in (Path(__file__).resolve().parents[1] / "plugins").glob("*") if (p / "plugin.py").exists())
REGISTRY = load_registry(PLUGIN_DIRS, strict=True)
MODELS = sorted({("teachers", n) for n in REGISTRY.names("teachers")} | {("students", n) for n in REGISTRY.names("students")})


pytestmark = pytest.mark.usefixtures("no_onednn")


@pytest.mark.parametrize("role, name", MODELS, ids=[f"{r[:-1]}:{n}" for r, n in MODELS])
def test_forward_shape(role, name):
    model = REGISTRY.build_model(role, name, {"num_classes": 10, "in_channels": 3, "image_size": 32}).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
