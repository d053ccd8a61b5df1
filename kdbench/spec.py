"""Config hashing and the full teacher spec: shared by the grid expansion (kdbench.experiment)
and the teacher cache (kdbench.teachers), and importing neither, so the cache does not reach back
into the experiment-file parser at run time. No torch here."""
import dataclasses
import hashlib
import json

from kdbench.config import DataConfig, TeacherConfig, TrainConfig, check_data, check_seed, check_train
from kdbench.errors import ConfigError

TEACHER_FIELDS = {f.name for f in dataclasses.fields(TeacherConfig)}


def config_hash(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def check_type(value, default, key):
    """A value from the TOML file must match the type of the default it replaces."""
    if default is None or value is None:
        return value
    if isinstance(default, bool) != isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r} should be a {type(default).__name__}")
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if not isinstance(value, type(default)) and not (isinstance(default, int) and isinstance(value, int)):
        raise ConfigError(f"{key} = {value!r} should be a {type(default).__name__}")
    return value


def resolve_teacher(registry, teacher, data):
    """The full teacher spec (TeacherConfig fields, model options, typed sections) from a
    partial [teacher] table; its data is ``data`` with the teacher's own overrides."""
    if not teacher.get("model"):
        raise ConfigError("the experiment names no teacher model; set [teacher] model = ...")
    from kdbench.registry import option_defaults

    spec = field_defaults(TeacherConfig)
    options = option_defaults(registry.model_factory("teachers", teacher["model"]))
    for key, value in teacher.items():
        if key in spec:
            spec[key] = value
        elif key in options:
            spec[key] = check_type(value, options[key], f"teacher.{key}")
        else:
            raise ConfigError(f"teacher model {teacher['model']!r} has no option {key!r}; its options: {', '.join(options) or '(none)'}")
    check_teacher_url(spec)
    spec["train"] = section(TrainConfig, spec["train"], "teacher.train")
    check_train(spec["train"], "teacher.train")
    spec["data"] = section(DataConfig, data | spec["data"], "teacher.data")
    check_data(spec["data"], "teacher.data")
    check_seed(spec["seed"], "teacher.seed")
    method_cls = registry.get("methods", spec["method"])
    if method_cls.needs_teacher:
        raise ConfigError(f"teacher method {spec['method']!r} itself needs a teacher; use one that trains from labels (scratch)")
    fields = field_defaults(method_cls.Config)
    for key in spec["method_options"]:
        if key not in fields:
            raise ConfigError(f"teacher method {spec['method']!r} has no option {key!r}; valid: {', '.join(sorted(fields))}")
    spec["method_options"] = fields | spec["method_options"]
    check_method_options(method_cls, spec["method_options"], spec["method"], "teacher.method_options")
    return spec


def check_method_options(method_cls, options, arm, where="method"):
    """Instantiate the method's Config, so that its __post_init__ range checks run now."""
    options = {k: v for k, v in options.items() if k != "name"}
    try:
        method_cls.Config(**options)
    except ConfigError as exc:
        if where == "method":
            raise
        raise ConfigError(f"{where} of {arm!r}: {exc}") from None  # the teacher's method, say
    except Exception as exc:  # a plugin's check that raised something else still stops the grid here
        raise ConfigError(f"{where} of {arm!r}: {type(exc).__name__}: {exc}") from None


def check_teacher_url(spec):
    """A teacher given by URL needs the SHA-256 its download is verified against."""
    spec["url"], spec["sha256"] = str(spec["url"]).strip(), str(spec["sha256"]).strip().lower()
    url, sha256 = spec["url"], spec["sha256"]
    if sha256 and not url:
        raise ConfigError("teacher.sha256 is set but teacher.url is not: the hash verifies a teacher given by URL")
    if not url:
        return
    if not url.startswith(("http://", "https://", "file://")):
        raise ConfigError(f"teacher.url {url!r} is not an http://, https:// or file:// address")
    if not sha256:
        raise ConfigError(f"teacher.url {url!r} needs teacher.sha256 (the file's SHA-256, 64 hex digits) to verify the download")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ConfigError(f"teacher.sha256 {sha256!r} is not a SHA-256: expected 64 hex digits")


def default_of(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def field_defaults(cls):
    return {f.name: default_of(f) for f in dataclasses.fields(cls)}


def section(cls, values, where):
    defaults = field_defaults(cls)
    for key in values:
        if key not in defaults:
            raise ConfigError(f"unknown key {where}.{key}; valid: {', '.join(sorted(defaults))}")
    return {k: check_type(values.get(k, d), d, f"{where}.{k}") for k, d in defaults.items()}


def model_options(spec):
    """The teacher model's own options: the keys of a teacher spec that are not TeacherConfig fields."""
    return {k: v for k, v in spec.items() if k not in TEACHER_FIELDS}
