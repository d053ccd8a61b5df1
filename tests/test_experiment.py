"""Experiment files, profiles, --set and --grid: typing, expansion and the one-line errors."""
import pytest

from conftest import THIRD_PARTY_TOML, write_plugin
from kdbench.errors import ConfigError
from kdbench.experiment import expand, parse_value
from kdbench.plugins import load_registry


@pytest.fixture
def setup(plugin_dir):
    return plugin_dir, load_registry([plugin_dir])


def test_parse_value_types():
    assert parse_value("true", False, "k") is True and parse_value("0", True, "k") is False
    assert parse_value("3", 1, "k") == 3 and parse_value("0.5", 1.0, "k") == 0.5 and parse_value("4", 1.0, "k") == 4.0
    assert parse_value("crop+hflip", [], "k") == ["crop", "hflip"] and parse_value("none", ["a"], "k") == []
    assert parse_value("100+150", [30], "k") == [100, 150]
    with pytest.raises(ConfigError, match=r"train.epochs='x' is not a valid int"):
        parse_value("x", 1, "train.epochs")
    with pytest.raises(ConfigError, match="not a valid bool"):
        parse_value("maybe", False, "k")


def test_expansion_product_dedupe_and_labels(setup):
    folder, registry = setup
    cells, seeds, profile = expand(folder, registry, grid=["temperature=2,8", "size=small,big"])
    assert profile == "quick" and seeds == [0, 1]
    assert len(cells) == 6  # scratch is not split by the temperature axis
    assert len({c.id for c in cells}) == 6
    kd = [c for c in cells if c.method == "soft-kd"]
    assert sorted((c.config["method"]["temperature"], c.config["student"]["hidden"]) for c in kd) == [(2.0, 8), (2.0, 32), (8.0, 8), (8.0, 32)]
    assert all("temperature" not in c.labels for c in cells if c.method == "scratch")
    assert all(c.config["train"]["epochs"] == 2 for c in cells)


def test_set_profile_seeds_and_config_key_axes(setup):
    folder, registry = setup
    cells, seeds, _ = expand(folder, registry, grid=["train.lr=0.1,0.01", "method=soft-kd"],
                             sets=["method.alpha=0.25", "data.augment=hflip+vflip"], profile="longer", seeds=[3])
    assert seeds == [3] and len(cells) == 2
    assert {c.config["train"]["lr"] for c in cells} == {0.1, 0.01}
    assert all(c.config["method"] == {"name": "soft-kd", "temperature": 4.0, "alpha": 0.25} for c in cells)
    assert all(c.config["data"]["augment"] == ["hflip", "vflip"] and c.config["train"]["epochs"] == 3 for c in cells)
    assert cells[0].config["teacher"]["c1"] == 8 and cells[0].config["teacher"]["train"]["epochs"] == 2


@pytest.mark.parametrize("args, message", [
    ({"grid": ["temperature="]}, "the value after '=' is missing"),
    ({"grid": ["=50"]}, "the key before '=' is missing"),
    ({"grid": ["temperature=2,,8"]}, "empty value in the list"),
    ({"grid": ["temprature=2"]}, "unknown grid axis 'temprature' (did you mean 'temperature'?)"),
    ({"grid": ["size=huge"]}, "unknown value 'huge' for axis 'size'; valid: small, big"),
    ({"grid": ["method=softkd"]}, "did you mean 'soft-kd'"),
    ({"sets": ["train.epochs=two"]}, "train.epochs='two' is not a valid int"),
    ({"sets": ["train.epoch=2"]}, "unknown key 'train.epoch' (did you mean 'train.epochs'"),
    ({"sets": ["teacher.train.epoch=2"]}, "unknown key 'teacher.train.epoch' (did you mean 'teacher.train.epochs'"),
    ({"sets": ["data.valsize=2"]}, "unknown key 'data.valsize' (did you mean 'data.val_size'"),
    ({"sets": ["method.temp=2"]}, "no method of this experiment has option 'temp' (did you mean 'method.temperature'?); valid: alpha, temperature"),
    ({"sets": ["student.width=2"]}, "valid student keys: hidden, model"),
    ({"sets": ["student.hiden=2"]}, "unknown key 'student.hiden' (did you mean 'student.hidden'?)"),
    ({"sets": ["method.soft-kd.temprature=2"]}, "(method.soft-kd.temprature) (did you mean 'method.soft-kd.temperature'?)"),
    ({"sets": ["teacher.depth=2"]}, "unknown key 'teacher.depth'"),
    ({"sets": ["lr"]}, "expected KEY=VALUE"),
    ({"profile": "paper"}, "unknown profile 'paper'"),
    ({"sets": ["data.val_size=0"]}, "invalid data.val_size = 0; valid: an integer >= 1"),
])
def test_bad_grid_and_set_are_rejected_before_training(setup, args, message):
    folder, registry = setup
    with pytest.raises(ConfigError) as info:
        expand(folder, registry, **args)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_names_in_the_file(tmp_path):
    registry = load_registry([])
    for old, new, message in [
        ('methods = ["scratch", "soft-kd"]', 'methods = ["scratch", "sof-kd"]', "unknown method 'sof-kd'"),
        ('model = "linear-student"', 'model = "linear-studnt"', "unknown student model 'linear-studnt' (did you mean 'linear-student'?)"),
        ('model = "small-cnn"', 'model = "smal-cnn"', "did you mean 'small-cnn'"),
    ]:
        folder = write_plugin(tmp_path / new.split('"')[1], toml=THIRD_PARTY_TOML.replace(old, new))
        reg = load_registry([folder])
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            cells, _, _ = expand(folder, reg)
    assert "soft-kd" not in registry.names("methods")  # plugins loaded per registry, not globally


def test_toml_syntax_error_and_unknown_key_name_file_and_line(tmp_path):
    registry = load_registry([])
    broken = write_plugin(tmp_path / "broken", toml=THIRD_PARTY_TOML.replace('name = "softkd"', 'name = "softkd'))
    with pytest.raises(ConfigError, match=r"kdbench.toml: TOML syntax error: .*line 3"):
        expand(broken, registry)
    unknown = write_plugin(tmp_path / "unknown", toml=THIRD_PARTY_TOML.replace("lr = 0.002", "learning_rate = 0.002"))
    with pytest.raises(ConfigError) as info:
        expand(unknown, load_registry([unknown]))
    line = THIRD_PARTY_TOML.replace("lr = 0.002", "learning_rate = 0.002").splitlines().index("learning_rate = 0.002") + 1
    assert f"kdbench.toml:{line}: unknown key 'learning_rate' in [train]" in str(info.value)
    typo = write_plugin(tmp_path / "typo", toml=THIRD_PARTY_TOML.replace("lr = 0.002", "lrr = 0.002"))
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' in \[train\] \(did you mean 'lr'\?\)"):
        expand(typo, load_registry([typo]))
    assert "lr" in str(info.value)


def test_cells_and_jobs_are_plain_picklable_data(setup):
    import pickle

    from kdbench.schedule import Job, RunOptions

    folder, registry = setup
    cells, _, _ = expand(folder, registry, grid=["temperature=2,8"])
    job = Job(cells[1], 0, RunOptions(out="runs"))
    clone = pickle.loads(pickle.dumps(job))
    assert clone.cell.id == job.cell.id and clone.folder == job.folder and clone.cell.config == job.cell.config


def test_teacher_settings_do_not_split_arms_without_a_teacher(setup):
    folder, registry = setup
    cells, _, _ = expand(folder, registry, grid=["teacher.train.epochs=1,2"])
    assert sorted(c.method for c in cells) == ["scratch", "soft-kd", "soft-kd"]
    scratch = next(c for c in cells if c.method == "scratch")
    assert scratch.config["teacher"] == {"model": "small-cnn", "c1": 8, "c2": 16, "hidden": 32}
    assert scratch.baseline == "scratch"


def test_an_axis_value_equal_to_the_default_is_still_labelled(setup):
    folder, registry = setup
    cells, _, _ = expand(folder, registry, grid=["temperature=4,8"])  # 4.0 is the file's default
    assert sorted(c.labels.get("temperature", "-") for c in cells) == ["-", "4", "8"]


def test_one_axis_value_names_its_cells_as_a_grid_of_several_does(setup):
    """--grid size=small alone gives the cells (and run folders) of --grid size=small,big, so the
    finished runs of the larger grid are reused; an axis that changes nothing for an arm (a
    temperature for scratch) still labels none of its cells."""
    folder, registry = setup
    both, _, _ = expand(folder, registry, grid=["size=small,big"])
    one, _, _ = expand(folder, registry, grid=["size=small"])
    assert {c.name for c in one} <= {c.name for c in both} and len(one) == 2
    temperature, _, _ = expand(folder, registry, grid=["temperature=8"])
    assert {c.method: c.labels.get("temperature") for c in temperature} == {"scratch": None, "soft-kd": "8"}


def with_kd(tmp_path, name, method_table=""):
    """The third-party experiment with the built-in kd as a third arm: kd and soft-kd share
    temperature (default 4.0 in both) but not alpha (0.1 in kd, 0.5 in soft-kd)."""
    toml = THIRD_PARTY_TOML.replace('methods = ["scratch", "soft-kd"]', 'methods = ["scratch", "kd", "soft-kd"]')
    folder = write_plugin(tmp_path / name, toml=toml + method_table)
    return folder, load_registry([folder])


def methods_of(cells, keys=("temperature", "alpha")):
    return {c.method: {k: c.config["method"][k] for k in keys} for c in cells if c.method != "scratch"}


def test_method_options_scoped_per_arm(tmp_path):
    folder, registry = with_kd(tmp_path, "scoped", '[method]\ntemperature = 2.0\n[method.kd]\nalpha = 0.3\n'
                                                   '[method.soft-kd]\nalpha = 0.7\ntemperature = 8.0\n')
    cells, _, _ = expand(folder, registry)
    assert methods_of(cells) == {"kd": {"temperature": 2.0, "alpha": 0.3}, "soft-kd": {"temperature": 8.0, "alpha": 0.7}}
    cells, _, _ = expand(folder, registry, sets=["method.kd.alpha=0.2", "method.temperature=3"])
    assert methods_of(cells)["kd"] == {"temperature": 3.0, "alpha": 0.2}
    assert methods_of(cells)["soft-kd"]["temperature"] == 8.0  # its own value wins over a plain one
    cells, _, _ = expand(folder, registry, grid=["method.soft-kd.alpha=0.1,0.9"])
    assert sorted(c.config["method"]["alpha"] for c in cells if c.method == "soft-kd") == [0.1, 0.9]
    assert [c.config["method"]["alpha"] for c in cells if c.method == "kd"] == [0.3]  # not split by soft-kd's axis


def test_a_plain_key_shared_by_fields_of_one_default_reaches_every_arm_with_the_same_cells(tmp_path):
    plain, registry = with_kd(tmp_path, "plain", "[method]\ntemperature = 2.0\n")
    cells, _, _ = expand(plain, registry)
    assert {m["temperature"] for m in methods_of(cells).values()} == {2.0}
    scoped, registry = with_kd(tmp_path, "scoped", "[method.kd]\ntemperature = 2.0\n[method.soft-kd]\ntemperature = 2.0\n")
    assert {c.id for c in expand(scoped, registry)[0]} == {c.id for c in cells}  # the same configs, the same runs


@pytest.mark.parametrize("table, sets, message", [
    ("[method]\nalpha = 0.3\n", [], "[method] alpha would set different options of the same name (defaults: kd 0.1, "
                                    "soft-kd 0.5); scope it per arm: [method.ARM] alpha = ... or --set method.ARM.alpha=..."),
    ("", ["method.alpha=0.3"], "[method] alpha would set different options"),
    ("[method.kd]\nalpah = 0.3\n", [], "method 'kd' has no option 'alpah' (method.kd.alpah); valid: alpha, "),
    ("", ["method.kd.alpah=0.3"], "method 'kd' has no option 'alpah' (method.kd.alpah)"),
    ("", ["method.kd=0.3"], "method.kd names an arm: set its options as method.kd.OPTION=VALUE"),
    ("[method]\nkd = 0.3\n", [], "method.kd names an arm: give its options as [method.kd]"),
    ("[method.dkd]\nalpha = 0.3\n", [], "unknown arm in [method.dkd] 'dkd' (did you mean 'kd'?); valid: kd, scratch, soft-kd"),
    ("[method.kd]\nalpha = 2.0\n", [], "alpha"),  # the Config's own range check still runs
])
def test_ambiguous_or_misscoped_method_options_are_one_line_errors(tmp_path, table, sets, message):
    folder, registry = with_kd(tmp_path, "bad", table)
    with pytest.raises(ConfigError) as info:
        expand(folder, registry, sets=sets)
    assert message in str(info.value) and "\n" not in str(info.value)
