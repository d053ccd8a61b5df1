"""Experiment files, profiles, --set/--grid parsing and cell expansion.

A plugin folder's ``kdbench.toml``::

    [experiment]
    name = "hinton"
    methods = ["scratch", "hinton"]   # the arms; every cell runs one of them
    seeds = [0, 1]
    profile = "quick"                 # the default profile
    teachers = "../../teachers"       # shipped teachers (relative to this folder; optional)

    [data]     ... kdbench.config.DataConfig
    [teacher]  ... kdbench.config.TeacherConfig; other keys are the teacher model's options
    [teacher.train] / [teacher.data]  TrainConfig / DataConfig overrides for the teacher
    [student]  model = "mlp", other keys are the student model's options
    [train]    ... kdbench.config.TrainConfig
    [method]   hyperparameters: a plain key goes to every arm whose Config has that field (an
               error when those fields' defaults differ: they are different options);
    [method.NAME]   options of arm NAME alone, over the plain ones (--set method.NAME.KEY=VALUE)
    [measure]  ... kdbench.config.MeasureConfig

    [axes.temperature]                # --grid temperature=5,20
    key = "method.temperature"
    [axes.students]                   # --grid students=50,20: aliases for settings
    values = { "50" = { "student.model" = "resnet18" }, "20" = { "student.model" = "resnet18", "student.width" = 0.5 } }

    [profiles.quick]                  # deep-merged over everything above (axes included)
    [profiles.paper]

An axis with ``key`` takes raw values of that key (``values`` may still name aliases for them);
an axis without ``key`` takes only its aliases. ``--grid`` also accepts any config key directly
(``--grid train.lr=0.1,0.05``) and the built-in axis ``method`` (a subset of the arms).
"""
import copy
import dataclasses
import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from kdbench import engine
from kdbench.config import (DataConfig, MeasureConfig, TeacherConfig, TrainConfig, check_data, check_measure, check_seeds,
                             check_train)
from kdbench.errors import ConfigError, close_hint, did_you_mean
from kdbench.spec import (TEACHER_FIELDS, check_method_options, check_type, config_hash, default_of, field_defaults,
                          resolve_teacher, section)

SECTIONS = {"data": DataConfig, "train": TrainConfig, "measure": MeasureConfig}
TOP_LEVEL = {"experiment", "data", "teacher", "student", "train", "method", "measure", "axes", "profiles"}
EXPERIMENT_KEYS = {"name", "description", "methods", "seeds", "profile", "baseline", "teachers"}


@dataclass
class Cell:
    """One configuration of the grid: plain data, picklable, identified by a hash of ``config``."""

    experiment: str
    config: dict  # data, teacher, student, train, measure, method (with "name")
    labels: dict  # axis -> the value chosen, for tables and folder names
    plugin_dirs: list = field(default_factory=list)
    baseline: str = "scratch"  # the arm that leaderboard gains are measured against
    teacher_stores: list = field(default_factory=list)  # folders of shipped teachers, searched before the cache

    @property
    def id(self):
        return config_hash(self.config)[:10]

    @property
    def method(self):
        return self.config["method"]["name"]

    @property
    def name(self):
        parts = [self.method] + [f"{k}={v}" for k, v in self.labels.items() if k != "method"]
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", "__".join(parts))
        return f"{slug}__{self.id}"


# ---------------------------------------------------------------------------------------------
# Reading the file


def read_experiment(folder):
    """The parsed ``kdbench.toml`` of a plugin folder (unknown sections and keys rejected)."""
    path = Path(folder) / "kdbench.toml"
    if not path.is_file():
        raise ConfigError(f"{folder} has no kdbench.toml; a plugin folder needs one (see README, 'Writing a plugin')")
    text = path.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    check_document(doc, path, text)
    return doc


def check_document(doc, path, text):
    """Reject unknown sections and keys that no registry lookup is needed for."""

    def fail(key, valid, where):
        line = next((i + 1 for i, l in enumerate(text.splitlines()) if re.match(rf"\s*\[?{re.escape(key)}\b", l)), "?")
        raise ConfigError(f"{path}:{line}: unknown key {key!r} in {where}{close_hint(key, valid)}; valid keys: {', '.join(sorted(valid))}")

    def check(d, where):
        for key in d:
            if key not in TOP_LEVEL:
                fail(key, TOP_LEVEL, where)
        for key in d.get("experiment", {}):
            if key not in EXPERIMENT_KEYS:
                fail(key, EXPERIMENT_KEYS, "[experiment]")
        for section, cls in SECTIONS.items():
            valid = {f.name for f in dataclasses.fields(cls)}
            for key in d.get(section, {}):
                if key not in valid:
                    fail(key, valid, f"[{section}]")
        for key, sub in (("train", TrainConfig), ("data", DataConfig)):
            valid = {f.name for f in dataclasses.fields(sub)}
            for k in d.get("teacher", {}).get(key, {}):
                if k not in valid:
                    fail(k, valid, f"[teacher.{key}]")
        for name, axis in d.get("axes", {}).items():
            if not isinstance(axis, dict) or not set(axis) <= {"key", "values"} or not axis:
                fail(name, {"key", "values"}, f"[axes.{name}]")

    check(doc, "the experiment file")
    for name, profile in doc.get("profiles", {}).items():
        if "profiles" in profile:
            fail("profiles", TOP_LEVEL - {"profiles"}, f"[profiles.{name}]")
        check(profile, f"[profiles.{name}]")


def deep_merge(base, over):
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_profile(doc, profile=None):
    """``doc`` with ``profile`` (or the file's default) merged in; returns (doc, profile name)."""
    profiles = doc.get("profiles", {})
    name = profile or doc.get("experiment", {}).get("profile")
    if name is None:
        return doc, None
    if name not in profiles:
        raise ConfigError(did_you_mean(name, profiles, "profile"))
    merged = deep_merge({k: v for k, v in doc.items() if k != "profiles"}, profiles[name])
    return merged, name


# ---------------------------------------------------------------------------------------------
# Typing values from the command line


def parse_value(raw, default, key):
    """Parse the string ``raw`` as the type of ``default`` (bool, int, float, str or list)."""
    raw = raw.strip()
    if raw == "":
        raise ConfigError(f"empty value for {key!r}; write {key}=<value>")
    try:
        if isinstance(default, bool):
            lowered = raw.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            if raw.lower() == "none":
                return []
            items = raw.split("+")
            return [parse_value(item, default[0], key) if default else parse_scalar(item) for item in items]
    except ValueError:
        kind = type(default).__name__
        raise ConfigError(f"{key}={raw!r} is not a valid {kind}; write {key}=<{kind}>") from None
    if default is None:
        return parse_scalar(raw)
    return raw


def parse_scalar(raw):
    """An untyped value: int, float, bool or string, in that order."""
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def parse_assignment(text, flag):
    """``key=value`` -> (key, value string), rejecting the malformed shapes with a hint."""
    if "=" not in text:
        raise ConfigError(f"malformed {flag} {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"malformed {flag} {text!r}: the key before '=' is missing")
    if not value.strip():
        raise ConfigError(f"malformed {flag} {text!r}: the value after '=' is missing")
    return key, value


def parse_grid_values(text):
    key, values = parse_assignment(text, "--grid")
    items = values.split(",")
    if any(not v.strip() for v in items):
        raise ConfigError(f"malformed --grid {text!r}: empty value in the list (write {key}=v1,v2)")
    return key, [v.strip() for v in items]


# ---------------------------------------------------------------------------------------------
# Resolving cells


class Resolver:
    """Knows the defaults of every settable key of one experiment, so that values can be typed
    and unknown keys rejected with the list of valid ones."""

    def __init__(self, doc, registry):
        self.doc = doc
        self.registry = registry
        self.arms = list(doc.get("experiment", {}).get("methods", ["scratch"]))
        for arm in self.arms:
            registry.get("methods", arm)  # unknown arm -> ConfigError with suggestions

    def method_fields(self, arms=None):
        out = {}
        for arm in arms or self.arms:
            for f in dataclasses.fields(self.registry.get("methods", arm).Config):
                out.setdefault(f.name, default_of(f))
        return out

    def split_method_table(self, table):
        """A [method] table -> (plain options, {arm: its own [method.ARM] options}), every key
        checked. A plain key goes to each arm with that field that does not set it itself, and
        is an error when those fields' defaults differ: then they are different options."""
        own = {arm: field_defaults(self.registry.get("methods", arm).Config) for arm in self.arms}
        fields = self.method_fields()
        plain, scoped = {}, {}
        for key, value in table.items():
            if key in self.arms:
                if not isinstance(value, dict):
                    raise ConfigError(f"method.{key} names an arm: give its options as [method.{key}] or method.{key}.OPTION")
                for option in value:
                    if option not in own[key]:
                        raise ConfigError(f"method {key!r} has no option {option!r} (method.{key}.{option}); "
                                          f"valid: {', '.join(sorted(own[key])) or '(none)'}")
                scoped[key] = value
            elif key in fields:
                plain[key] = value
            elif isinstance(value, dict):
                raise ConfigError(did_you_mean(key, self.arms, f"arm in [method.{key}]"))
            else:
                raise ConfigError(f"[method] option {key!r} belongs to no arm{close_hint(key, fields)}; valid: {', '.join(sorted(fields))} "
                                  f"(or a table [method.ARM], ARM one of {', '.join(self.arms)})")
        for key in plain:
            reach = {arm: o[key] for arm, o in own.items() if key in o and key not in scoped.get(arm, {})}
            if len({(type(d), repr(d)) for d in reach.values()}) > 1:
                defaults = ", ".join(f"{arm} {d!r}" for arm, d in reach.items())
                raise ConfigError(f"[method] {key} would set different options of the same name (defaults: {defaults}); "
                                  f"scope it per arm: [method.ARM] {key} = ... or --set method.ARM.{key}=..., ARM one of {', '.join(reach)}")
        return plain, scoped

    def model_options(self, role, name):
        from kdbench.registry import option_defaults

        return option_defaults(self.registry.model_factory(role, name))

    def defaults_for(self, key, settings):
        """The default value that types ``key`` (dotted), given the settings chosen so far."""
        head, _, rest = key.partition(".")
        if head in SECTIONS and rest:
            return section_default(SECTIONS[head], rest, key)
        if head == "method" and rest:
            arm, _, option = rest.partition(".")
            if arm in self.arms:
                own = field_defaults(self.registry.get("methods", arm).Config)
                if not option:
                    raise ConfigError(f"{key} names an arm: set its options as {key}.OPTION=VALUE")
                if option not in own:
                    raise ConfigError(f"method {arm!r} has no option {option!r} ({key}){close_hint(option, own, f'method.{arm}.')}; valid: {', '.join(sorted(own)) or '(none)'}")
                return own[option]
            fields = self.method_fields()
            if rest not in fields:
                raise ConfigError(f"no method of this experiment has option {rest!r}{close_hint(rest, fields, 'method.')}; valid: {', '.join(sorted(fields))}")
            return fields[rest]
        if head == "student" and rest:
            options = {"model": ""} | self.model_options("students", settings.get("student.model", self.doc.get("student", {}).get("model", "")))
            if rest not in options:
                raise ConfigError(f"unknown key {key!r}{close_hint(rest, options, 'student.')}; valid student keys: {', '.join(sorted(options))}")
            return options[rest]
        if head == "teacher" and rest:
            sub, _, leaf = rest.partition(".")
            if sub in ("train", "data") and leaf:
                return section_default(SECTIONS[sub], leaf, key)
            if sub == "method_options" and leaf:
                method = settings.get("teacher.method", self.doc.get("teacher", {}).get("method", "scratch"))
                fields = field_defaults(self.registry.get("methods", method).Config)
                if leaf not in fields:
                    raise ConfigError(f"teacher method {method!r} has no option {leaf!r}{close_hint(leaf, fields, 'teacher.method_options.')}; valid: {', '.join(sorted(fields))}")
                return fields[leaf]
            teacher_defaults = field_defaults(TeacherConfig)
            if rest in teacher_defaults and rest not in ("train", "data", "method_options"):
                return teacher_defaults[rest]
            model = settings.get("teacher.model", self.doc.get("teacher", {}).get("model", ""))
            options = self.model_options("teachers", model)
            if rest not in options:
                valid = sorted(set(teacher_defaults) | set(options))
                raise ConfigError(f"unknown key {key!r}{close_hint(rest, valid, 'teacher.')}; valid teacher keys: {', '.join(valid)}")
            return options[rest]
        valid = [f"{s}.<field>" for s in ("data", "train", "measure", "method", "student", "teacher")]
        raise ConfigError(f"unknown key {key!r}; keys look like {', '.join(valid)}")

    def typed(self, key, raw, settings):
        return parse_value(raw, self.defaults_for(key, settings), key)

    def resolve(self, settings, arm):
        """The full config of one cell: file values, then ``settings`` (dotted key -> value)."""
        doc = copy.deepcopy(self.doc)
        for key, value in settings.items():
            set_dotted(doc, key, value)
        data = section(DataConfig, doc.get("data", {}), "data")
        check_data(data)  # val_size >= 1: the best epoch is chosen on the validation split, never on test
        train = section(TrainConfig, doc.get("train", {}), "train")
        check_train(train)
        measure = section(MeasureConfig, doc.get("measure", {}), "measure")
        check_measure(measure)
        student = dict(doc.get("student", {}))
        if not student.get("model"):
            raise ConfigError("the experiment names no student model; set [student] model = ... or --set student.model=...")
        student_options = self.model_options("students", student["model"])
        for key in student:
            if key != "model" and key not in student_options:
                raise ConfigError(f"student model {student['model']!r} has no option {key!r}; its options: {', '.join(student_options) or '(none)'}")
        method_cls = self.registry.get("methods", arm)
        engine.check_steps(method_cls, arm, train)
        plain, scoped = self.split_method_table(doc.get("method", {}))
        own = scoped.get(arm, {})
        method = {"name": arm} | {
            k: check_type(own[k], d, f"method.{arm}.{k}") if k in own else check_type(plain.get(k, d), d, f"method.{k}")
            for k, d in field_defaults(method_cls.Config).items()
        }
        check_method_options(method_cls, method, arm)
        teacher = doc.get("teacher", {})
        if method_cls.needs_teacher:
            teacher = resolve_teacher(self.registry, teacher, data)
        elif teacher.get("model"):  # only its size matters here (the parameter ratio)
            teacher = {k: v for k, v in resolve_teacher(self.registry, teacher, data).items() if k not in TEACHER_FIELDS or k == "model"}
        else:
            teacher = None
        return {
            "data": data,
            "teacher": teacher,
            "student": student,
            "train": train,
            "method": method,
            "measure": measure,
        }


def section_default(cls, name, key):
    defaults = field_defaults(cls)
    if name not in defaults:
        raise ConfigError(f"unknown key {key!r}{close_hint(name, defaults, key[:-len(name)])}; valid: {', '.join(sorted(defaults))}")
    return defaults[name]


def set_dotted(doc, key, value):
    parts = key.split(".")
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def expand(folder, registry, grid=(), sets=(), profile=None, seeds=None, plugin_dirs=()):
    """The cells of the experiment in ``folder`` and its seeds, validated before any training."""
    doc, profile = apply_profile(read_experiment(folder), profile)
    resolver = Resolver(doc, registry)
    settings = {}
    for text in sets:
        key, raw = parse_assignment(text, "--set")
        settings[key] = resolver.typed(key, raw, settings)
    axes = doc.get("axes", {})
    arms = resolver.arms
    choices = []  # one list per --grid axis: [(label, {dotted key: value}), ...]
    for text in grid:
        name, values = parse_grid_values(text)
        if name == "method":
            for v in values:
                if v not in arms:
                    raise ConfigError(did_you_mean(v, arms, "arm of this experiment (--grid method=...)"))
            arms = values
            continue
        if name in axes:
            choices.append([(name, v, axis_value(name, axes[name], v, resolver, settings)) for v in values])
        elif "." in name:
            choices.append([(name, v, {name: resolver.typed(name, v, settings)}) for v in values])
        else:
            raise ConfigError(did_you_mean(name, list(axes) + ["method"], "grid axis") + " (or a config key such as train.lr)")
    experiment_doc = doc.get("experiment", {})
    # an axis is labelled on the arms whose config it changes (no temperature on scratch): among
    # the values given, the experiment's own setting and the axis's declared values, so that one
    # value alone (--grid students=50) names its cells as a grid of several does, and they are reused
    def candidates(axis):
        name = axis[0][0]
        declared = list(axes[name].get("values", {})) if name in axes else []
        return ([assignment for _, _, assignment in axis] + [{}]
                + [axis_value(name, axes[name], str(v), resolver, settings) for v in declared])

    applies = {(axis[0][0], arm) for axis in choices for arm in arms
               if len({config_hash(resolver.resolve(settings | assignment, arm)) for assignment in candidates(axis)}) > 1}
    stores = teacher_stores(folder, experiment_doc.get("teachers", []))
    cells, seen = [], set()
    for combo in itertools.product(*choices) if choices else [()]:
        combined = dict(settings)
        for _, _, assignment in combo:
            combined.update(assignment)
        for arm in arms:
            config = resolver.resolve(combined, arm)
            shown = {axis: label for axis, label, _ in combo if (axis, arm) in applies}
            cell = Cell(experiment_doc.get("name", Path(folder).resolve().name), config, {"method": arm} | shown,
                        [str(Path(d).resolve()) for d in plugin_dirs], experiment_doc.get("baseline", "scratch"), stores)
            # an axis that does not apply to an arm (a temperature for scratch) gives the same cell
            if cell.id not in seen:
                seen.add(cell.id)
                cells.append(cell)
    if seeds is not None:
        check_seeds(list(seeds), "--seeds")
    else:
        seeds = doc.get("experiment", {}).get("seeds", [0])
        check_seeds(seeds, "experiment.seeds")
    return cells, list(seeds), profile


def teacher_stores(folder, value):
    """``[experiment] teachers``: folders of shipped teachers (relative to the plugin folder), laid
    out like the cache (KEY/teacher.pt + meta.json). A teacher whose key is there is loaded from
    there, so every machine distils from the same teacher; any other teacher is trained as usual."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"experiment.teachers = {value!r} should be a folder or a list of folders")
    stores = [(Path(folder) / Path(n).expanduser()).resolve() for n in names]
    for name, store in zip(names, stores):
        if not store.is_dir():
            raise ConfigError(f"experiment.teachers: {name!r} is not a folder (looked for {store})")
    return [str(s) for s in stores]


def axis_value(name, axis, raw, resolver, settings):
    """The settings that value ``raw`` of ``axis`` stands for."""
    aliases = axis.get("values", {})
    if isinstance(aliases, list):
        aliases = {str(v): v for v in aliases}
    key = axis.get("key")
    if raw in aliases:
        value = aliases[raw]
        if isinstance(value, dict):
            return {k: check_type(v, resolver.defaults_for(k, settings | value), k) for k, v in value.items()}
        if key is None:
            raise ConfigError(f"axis {name!r} needs a 'key' for its plain values")
        return {key: check_type(value, resolver.defaults_for(key, settings), key)}
    if key is None:
        raise ConfigError(f"unknown value {raw!r} for axis {name!r}; valid: {', '.join(aliases)}")
    return {key: resolver.typed(key, raw, settings)}
