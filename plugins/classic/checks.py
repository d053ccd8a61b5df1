"""Range checks of the classic methods' options (one-line ConfigErrors before any training)."""
from kdbench.errors import ConfigError


def check_paths(config, key, single=True):
    value = getattr(config, key)
    paths = [value] if single else value
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        kind = "a module path (e.g. '4')" if single else "a non-empty list of module paths (e.g. 1+4)"
        raise ConfigError(f"method.{key} = {value!r} is not valid; expected {kind}")


def check_int(config, key, low):
    value = getattr(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"method.{key} = {value!r} is not valid; expected an integer >= {low}")
