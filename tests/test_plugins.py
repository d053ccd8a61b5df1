"""Plugin loading: built-ins, entry points, folders; failures, strictness, duplicates; the
meta-test that every hook spec is documented and exercised by a test."""
import inspect
import sys
from pathlib import Path

import pytest

from conftest import write_plugin
from kdbench import hookspecs
from kdbench.errors import ConfigError, PluginError
from kdbench.plugins import load_registry
from kdbench.registry import KINDS

GENERATOR_PLUGIN = '''
import torch.nn as nn
import kdbench


def noise_to_image(in_channels, image_size, nz: int = 8):
    return nn.Sequential(nn.Linear(nz, in_channels * image_size**2), nn.Unflatten(1, (in_channels, image_size, image_size)))


@kdbench.hookimpl
def kdbench_register_generators(register):
    register("noise-to-image", noise_to_image, description="a linear generator")
'''

DATASET_PLUGIN = '''
import torch
import kdbench
from kdbench.data import RawData


def stripes(cfg):
    g = torch.Generator().manual_seed(cfg.split_seed)
    x = torch.randint(0, 256, (300, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(300) % 3
    return RawData("stripes", x[:200], y[:200], x[200:], y[200:], 3, (0.5,), (0.25,))


def stripes_teacher(num_classes, image_size):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(image_size**2, num_classes))


@kdbench.hookimpl
def kdbench_register_datasets(register):
    register("stripes", stripes)


@kdbench.hookimpl
def kdbench_register_teachers(register):
    register("stripes-teacher", stripes_teacher)
'''

BROKEN_PLUGIN = "raise RuntimeError('boom at import')\n"


def test_builtins_are_registered_as_a_plugin():
    registry = load_registry([])
    assert "scratch" in registry.names("methods")
    assert {"fashion-mnist", "synthetic", "cifar100"} <= set(registry.names("datasets"))
    assert {"resnet18", "small-cnn", "mlp"} <= set(registry.names("teachers")) & set(registry.names("students"))
    assert registry.tables["methods"]["scratch"].plugin == "kdbench.builtin"


def test_folder_plugins_for_generators_and_datasets(tmp_path):
    gen = write_plugin(tmp_path / "gen", plugin=GENERATOR_PLUGIN)
    data = write_plugin(tmp_path / "stripes", plugin=DATASET_PLUGIN)
    registry = load_registry([gen, data])
    assert registry.tables["generators"]["noise-to-image"].plugin == "gen"
    model = registry.build_model("generators", "noise-to-image", {"num_classes": 3, "in_channels": 1, "image_size": 8}, nz=4)
    assert model[0].in_features == 4
    # a generator name serves as a teacher/student model too (GAN distillation)
    assert registry.model_factory("teachers", "noise-to-image") is registry.get("generators", "noise-to-image")
    raw = registry.get("datasets", "stripes")(type("Cfg", (), {"split_seed": 0})())
    assert raw.train_x.shape == (200, 1, 8, 8)
    teacher = registry.build_model("teachers", "stripes-teacher", {"num_classes": 3, "in_channels": 1, "image_size": 8})
    assert teacher(raw.train_x[:2].float()).shape == (2, 3)
    assert "stripes-teacher" not in registry.names("students")


def test_broken_plugin_is_skipped_by_name_or_fails_when_strict(tmp_path, monkeypatch):
    broken = write_plugin(tmp_path / "broken", plugin=BROKEN_PLUGIN)
    warnings = []
    registry = load_registry([broken], warn=warnings.append)
    assert "scratch" in registry.names("methods")
    assert len(warnings) == 1 and "plugin 'broken' failed to load: RuntimeError: boom at import" in warnings[0]
    with pytest.raises(PluginError, match="plugin 'broken' failed to load"):
        load_registry([broken], strict=True)
    monkeypatch.setenv("KDBENCH_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError):
        load_registry([broken])


def test_duplicate_names_name_both_plugins(tmp_path):
    one = write_plugin(tmp_path / "one", plugin=GENERATOR_PLUGIN)
    two = write_plugin(tmp_path / "two", plugin=GENERATOR_PLUGIN)
    with pytest.raises(PluginError, match="generator 'noise-to-image' is registered twice: by plugin 'one' and by plugin 'two'"):
        load_registry([one, two])
    shadow = write_plugin(tmp_path / "shadow", plugin="import kdbench\n@kdbench.hookimpl\ndef kdbench_register_methods(register):\n    register('scratch', object)\n")
    with pytest.raises(PluginError, match="by plugin 'kdbench.builtin' and by plugin 'shadow'"):
        load_registry([shadow])


def test_unknown_names_suggest_close_ones():
    registry = load_registry([])
    with pytest.raises(ConfigError, match=r"unknown method 'scrach' \(did you mean 'scratch'\?\); valid: kd, scratch"):
        registry.get("methods", "scrach")
    with pytest.raises(ConfigError, match=r"unknown dataset 'fashion-mnst' \(did you mean 'fashion-mnist'"):
        registry.get("datasets", "fashion-mnst")
    with pytest.raises(ConfigError, match="model 'mlp' has no option 'widht'; its options are: hidden, depth"):
        registry.build_model("students", "mlp", {"num_classes": 10, "in_channels": 1, "image_size": 28}, widht=2)


def test_entry_point_plugin(tmp_path, monkeypatch):
    """An installed distribution declaring the ``kdbench`` entry-point group is loaded."""
    (tmp_path / "ep_plugin.py").write_text(GENERATOR_PLUGIN)
    dist = tmp_path / "ep_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[kdbench]\nep = ep_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry([])
    assert registry.tables["generators"]["noise-to-image"].plugin == "ep"
    sys.modules.pop("ep_plugin", None)


def test_list_command_shows_names_and_plugins(tmp_path, cli):
    gen = write_plugin(tmp_path / "gen", plugin=GENERATOR_PLUGIN)
    code, out, _ = cli("list", "generators", "--plugin", str(gen))
    assert code == 0 and "noise-to-image" in out and "gen" in out and "a linear generator" in out
    code, out, _ = cli("list")
    assert code == 0 and all(f"{kind}:" in out for kind in KINDS) and "kdbench.builtin" in out
    code, _, err = cli("list", "generatrs")
    assert code == 2 and "did you mean 'generators'" in err


def test_list_says_how_to_include_plugins_and_takes_a_folder_of_plugin_folders(tmp_path, cli):
    code, out, _ = cli("list", "methods")
    assert code == 0 and "kd" in out and "add --plugin DIR, or --plugin plugins" in out
    write_plugin(tmp_path / "plugins" / "gen", plugin=GENERATOR_PLUGIN)
    write_plugin(tmp_path / "plugins" / "softkd")
    (tmp_path / "plugins" / "notes").mkdir()  # no plugin.py: not a plugin, skipped
    code, out, _ = cli("list", "--plugin", str(tmp_path / "plugins"))
    assert code == 0 and "noise-to-image" in out and "soft-kd" in out and "add --plugin" not in out
    code, _, err = cli("list", "--plugin", str(tmp_path / "plugins" / "notes"))
    assert code == 2 and "neither a plugin folder (it has no plugin.py) nor a folder of plugin folders" in err and err.count("\n") == 1


def test_every_hook_spec_is_documented_and_exercised():
    specs = [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("kdbench_register_")]
    assert sorted(specs) == sorted(f"kdbench_register_{kind}" for kind in KINDS)
    tests = Path(__file__).parent
    sources = "".join(p.read_text() for p in tests.glob("*.py") if p.name != Path(__file__).name)
    sources += (tests / "conftest.py").read_text() + GENERATOR_PLUGIN + DATASET_PLUGIN
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and "register(" in doc, f"{name} is undocumented"
        assert f"def {name}(register)" in sources, f"no test plugin implements {name}"


REPLACING_PLUGIN = '''
import kdbench
from kdbench.method import KD


class LoudKD(KD):
    """kd, replaced on purpose."""


@kdbench.hookimpl
def kdbench_register_methods(register):
    register("kd", LoudKD, replaces=True, description="kd with a twist")
'''


def test_a_builtin_is_replaced_only_on_purpose(tmp_path):
    plain = write_plugin(tmp_path / "plain", plugin=REPLACING_PLUGIN.replace(", replaces=True", ""))
    with pytest.raises(PluginError, match=r"by plugin 'kdbench.builtin' and by plugin 'plain'; rename one of them "
                                          r"\(to replace a built-in on purpose: register\(name, obj, replaces=True\)\)"):
        load_registry([plain])
    folder = write_plugin(tmp_path / "loud", plugin=REPLACING_PLUGIN)
    notices = []
    registry = load_registry([folder], warn=notices.append)
    assert registry.get("methods", "kd").__name__ == "LoudKD" and registry.plugin_of("methods", "kd") == "loud"
    assert notices == ["plugin 'loud' replaces the built-in method 'kd'"]
    again = write_plugin(tmp_path / "again", plugin=REPLACING_PLUGIN)
    with pytest.raises(PluginError, match="registers method 'kd' with replaces=True, but 'kd' comes from plugin 'loud', not a built-in; rename one of them"):
        load_registry([folder, again])
    nothing = write_plugin(tmp_path / "nothing", plugin=REPLACING_PLUGIN.replace('"kd"', '"kd2"'))
    with pytest.raises(PluginError, match="registers method 'kd2' with replaces=True, but 'kd2' is not a built-in"):
        load_registry([nothing])


def test_a_misspelled_or_unmarked_hook_is_an_error(tmp_path):
    typo = write_plugin(tmp_path / "typo", plugin=GENERATOR_PLUGIN.replace("kdbench_register_generators", "kdbench_register_generator"))
    with pytest.raises(PluginError) as info:
        load_registry([typo])
    message = str(info.value)
    assert message.startswith("plugin 'typo': unknown hook 'kdbench_register_generator' (did you mean 'kdbench_register_generators'")
    assert message.endswith("valid: " + ", ".join(f"kdbench_register_{k}" for k in sorted(KINDS))) and "\n" not in message
    unmarked = write_plugin(tmp_path / "unmarked", plugin=GENERATOR_PLUGIN.replace("@kdbench.hookimpl\n", ""))
    with pytest.raises(PluginError, match="plugin 'unmarked' defines kdbench_register_generators without @kdbench.hookimpl, so it is never called"):
        load_registry([unmarked])
