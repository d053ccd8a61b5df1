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


def check_layer_options(data_cache, cells):
    """Before any training: every module path that a cell's method names in one of its
    ``layer_options`` is a submodule of that model, or a one-line ConfigError naming the option,
    teacher or student, the model and the valid paths."""
    import json

    from kdbench.spec import model_options

    registry = data_cache.registry

    models = {}  # one throwaway build per (role, model spec, dataset)
    for cell in cells:
        for option, role in registry.get("methods", cell.method).layer_options.items():
            value = cell.config["method"][option]
            paths = [value] if isinstance(value, str) else list(value)
            spec = cell.config[role]
            data = (spec.get("data") if role == "teacher" else None) or cell.config["data"]
            key = (role, json.dumps(spec, sort_keys=True, default=str), data["name"])
            if key not in models:
                raw = data_cache.source(data)
                info = {"num_classes": raw.num_classes, "in_channels": raw.train_x.shape[1], "image_size": raw.train_x.shape[2]}
                options = model_options(spec) if role == "teacher" else {k: v for k, v in spec.items() if k != "model"}
                models[key] = module_paths(registry.build_model(f"{role}s", spec["model"], info, **options))
            valid = models[key]
            unknown = [p for p in paths if not isinstance(p, str) or p not in valid]
            if unknown:
                raise ConfigError(f"method.{option} of {cell.method!r} names {', '.join(map(repr, unknown))}, not a module path "
                                  f"of the {role} {spec['model']!r}; valid: {suggest_paths(unknown[0], valid)} "
                                  f"(python -m kdbench list {role}s --layers {spec['model']} --dataset {data['name']})")


def suggest_paths(path, valid, limit=30):
    """All of ``valid`` when short; otherwise the paths close to ``path`` and the top-level ones."""
    import difflib

    if len(valid) <= limit:
        return ", ".join(valid)
    close = difflib.get_close_matches(str(path), valid, n=5, cutoff=0.6)
    top = [p for p in valid if "." not in p]
    return ", ".join(dict.fromkeys(close + top)) + f", ... ({len(valid)} in all)"
