"""One contract test for every registered method: the built-ins and every method of every plugin
folder in plugins/. Each is built from its own experiment (shrunk to synthetic data and a few
steps), trained straight through, trained again with an interruption after its first epoch and
resumed from the checkpoint to the identical result and module states, evaluated (last and best),
and torn down with no hook left on the teacher, its extras or any of the method's modules.

A method that is not an arm of its plugin's experiment must train the experiment's teacher
([teacher] method = ...); one that is neither is a failure here: give it an arm. The built-ins
run in the fast tier; the plugins' methods are marked slow (`python -m pytest -m "not slow"`
leaves them out, the full suite runs them)."""

import functools

import pytest
import torch

from conftest import REPO, write_plugin

PLUGINS = sorted(p for p in (REPO / "plugins").iterdir() if (p / "plugin.py").is_file())

BUILTIN_TOML = '''
[experiment]
name = "builtin"
methods = ["scratch", "kd"]

[teacher]
model = "small-cnn"
c1 = 8
c2 = 16
hidden = 32

[student]
model = "mlp"
hidden = 16
'''

# Every experiment, shrunk: synthetic data, two epochs of two steps, one-epoch teachers.
TINY = [
    "data.name=synthetic", "data.val_size=200", "data.train_subset=0", "data.test_subset=200",
    "train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=16", "train.eval_every=1",
    "train.checkpoint_every=1", "train.threads=0",
    "teacher.train.epochs=1", "teacher.train.steps_per_epoch=2", "teacher.train.batch_size=16",
    "teacher.data.train_subset=0",
]
# ... and what each plugin's own methods spend per step or per evaluation.
SMALLER = {
    "akd": ["method.student_steps=2"],
    "gankd": ["method.eval_samples=64", "method.grid=4", "method.fd_epochs=1", "method.fd_train_subset=0",
              "teacher.method_options.eval_samples=64", "teacher.method_options.grid=4",
              "teacher.method_options.fd_epochs=1", "teacher.method_options.fd_train_subset=0"],
    "vkd": ["teacher.method_options.cgan_epochs=1"],
}


class Interrupted(Exception):
    pass


@functools.cache  # one registry and teacher cache per folder for all the cases, as in one run's session
def registry_for(folder):
    from kdbench.plugins import load_registry

    return load_registry([str(folder)], strict=None)


@functools.cache
def teacher_cache(root, registry, device):
    from kdbench.teachers import TeacherCache

    return TeacherCache(root, registry, device)


def cases():
    from kdbench.plugins import load_registry

    out = [pytest.param(None, name, id=f"builtin-{name}") for name in ("scratch", "kd")]
    for folder in PLUGINS:
        registry = load_registry([folder], strict=True)
        for name in registry.names("methods"):
            if registry.tables["methods"][name].plugin != "kdbench.builtin":
                out.append(pytest.param(folder, name, id=f"{folder.name}-{name}", marks=pytest.mark.slow))
    return out


def run_spec(folder, name, tmp_path_factory):
    """(registry, prepare keyword arguments, teacher spec) for ``name`` from its experiment."""
    from kdbench import experiment
    from kdbench.spec import model_options

    if folder is None:  # the built-ins, on the experiment above
        folder = write_plugin(tmp_path_factory.getbasetemp() / "builtin-contract", "", BUILTIN_TOML)
    registry = registry_for(folder)
    sets = TINY + SMALLER.get(folder.name, [])
    cells, _, _ = experiment.expand(folder, registry, sets=sets, seeds=[0], plugin_dirs=[folder])
    arm = next((c.config for c in cells if c.method == name), None)
    if arm is not None:
        options = {k: v for k, v in arm["method"].items() if k != "name"}
        spec = dict(role="students", model_spec=arm["student"], method_options=options, data_cfg=arm["data"], train_cfg=arm["train"])
        return registry, spec, arm["teacher"]
    teacher = next((c.config["teacher"] for c in cells if (c.config["teacher"] or {}).get("method") == name), None)
    assert teacher is not None, f"method {name!r} is neither an arm nor the teacher method of {folder}/kdbench.toml"
    spec = dict(role="teachers", model_spec={"model": teacher["model"]} | model_options(teacher),
                method_options=teacher["method_options"], data_cfg=teacher["data"], train_cfg=teacher["train"] | {"epochs": 2})
    return registry, spec, None


def hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules())


@pytest.mark.parametrize("folder,name", cases())
def test_method_contract(folder, name, tmp_path, tmp_path_factory, no_onednn):
    from kdbench import engine

    registry, spec, teacher_spec = run_spec(folder, name, tmp_path_factory)
    device = torch.device("cpu")
    cache = teacher_cache(str(tmp_path_factory.getbasetemp() / "contract-teachers"), registry, device)
    method_cls = registry.get("methods", name)
    teacher = cache.get(teacher_spec) if method_cls.needs_teacher else None

    def prepare(run_dir):
        return engine.prepare(registry=registry, **spec, method_name=name, seed=0, device=device, run_dir=tmp_path / run_dir,
                              teacher=teacher, teacher_loader=cache.get_partial(spec["data_cfg"]), data_cache=cache.data)

    built = []
    method, ctx = prepare("straight")
    built.append(ctx)
    straight = engine.train(method, ctx)
    assert straight["selection"]["best_epoch"] in (1, 2)
    assert set(straight["metrics"]) >= {f"{straight['selection']['metric']}_{k}" for k in ("last", "best")}

    method, ctx = prepare("resumed")
    built.append(ctx)
    end_epoch = method.end_epoch

    def interrupt(epoch):
        logged = end_epoch(epoch)
        if epoch == 1:
            raise Interrupted
        return logged

    method.end_epoch = interrupt
    with pytest.raises(Interrupted):
        engine.train(method, ctx)
    assert (tmp_path / "resumed" / engine.CHECKPOINT).is_file()
    method, ctx = prepare("resumed")
    built.append(ctx)
    resumed = engine.train(method, ctx)
    assert resumed["metrics"] == straight["metrics"] and resumed["selection"] == straight["selection"]
    assert straight["best_state"].keys() == resumed["best_state"].keys() == ctx.modules.keys()
    for module, state in straight["best_state"].items():
        for key, value in state.items():
            assert torch.equal(value, resumed["best_state"][module][key]), f"{module}.{key} differs after resuming"

    models = [m for c in built for m in c.modules.values()]
    if teacher is not None:
        models += [teacher.model, *teacher.extras.values()]
    assert all(hooks(m) == 0 for m in models), "a hook outlived its cell"
