"""Intermediate features by module path, without editing the models (torchdistill's
ForwardHookManager is the idea): forward hooks on named submodules that keep the output of the
last forward. The engine registers them for a cell (``ctx.features``) and removes them at the
cell's teardown, also when the cell fails, so a teacher shared by many cells carries no hook
from one cell into the next."""
import torch

from kdbench.errors import ConfigError


def module_paths(model):
    """Dotted paths of every submodule of ``model`` (as in ``model.named_modules()``), root excluded."""
    return [name for name, _ in model.named_modules() if name]


def find_modules(model, paths):
    modules = dict(model.named_modules())
    unknown = [p for p in paths if p not in modules or not p]
    if unknown:
        raise ConfigError(f"unknown module path(s) {', '.join(map(repr, unknown))} of {type(model).__name__}; "
                          f"valid: {', '.join(module_paths(model))}")
    return [modules[p] for p in paths]


class FeatureTap:
    """Forward hooks on ``model``'s submodules named by ``paths``. After any forward of ``model``,
    ``outputs[path]`` is that submodule's output of the last forward: with its autograd graph when
    the forward had one (the student), without under ``torch.no_grad`` (the teacher)."""

    def __init__(self, model, paths):
        self.paths = list(paths)
        self.outputs = {}
        self.handles = [m.register_forward_hook(self.hook(p)) for p, m in zip(self.paths, find_modules(model, self.paths))]

    def hook(self, path):
        def keep(module, inputs, output):
            self.outputs[path] = output

        return keep

    def __getitem__(self, path):
        return self.outputs[path]

    def remove(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.outputs.clear()


@torch.no_grad()
def output_shapes(model, inputs, paths=None):
    """{path: output shape without the batch dim} for ``paths`` (default: every submodule) from
    one forward of ``inputs`` in eval mode (no RNG drawn, no statistics updated). A submodule that
    returns something other than a tensor maps to its type name; one not run maps to None."""
    paths = module_paths(model) if paths is None else list(paths)
    tap = FeatureTap(model, paths)
    was_training = model.training
    model.eval()
    try:
        model(inputs)
    finally:
        model.train(was_training)
        outputs = dict(tap.outputs)
        tap.remove()
    shapes = {}
    for path in paths:
        out = outputs.get(path)
        shapes[path] = out.shape[1:] if torch.is_tensor(out) else None if out is None else type(out).__name__
    return shapes
