"""Name -> component tables, filled through the register hooks (see kdbench.plugins)."""
import inspect
from dataclasses import dataclass, field

from kdbench.errors import ConfigError, PluginError, did_you_mean

KINDS = ("datasets", "teachers", "students", "generators", "methods", "loggers")
# Arguments the core fills in from the dataset for the model factories that declare them.
DATA_ARGS = ("num_classes", "in_channels", "image_size")


@dataclass(frozen=True)
class Entry:
    name: str
    obj: object
    plugin: str
    metadata: dict = field(default_factory=dict)


BUILTIN = "kdbench.builtin"


class Registry:
    def __init__(self, notice=None):
        self.tables = {kind: {} for kind in KINDS}
        # plugin name -> {name, version, fingerprint, source}: the code behind each component
        self.plugins = {}
        self.notice = notice or (lambda message: None)

    def register_callback(self, kind, plugin):
        """The ``register(name, obj, replaces=False, **metadata)`` function handed to ``plugin``'s
        hook. ``replaces=True`` replaces the built-in component of that name on purpose."""

        def register(name, obj, replaces=False, **metadata):
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin!r} registered a {kind[:-1]} with an invalid name {name!r}")
            if not callable(obj):
                raise PluginError(f"plugin {plugin!r} registered {kind[:-1]} {name!r} with a non-callable {obj!r}")
            table = self.tables[kind]
            old = table.get(name)
            if replaces:
                if old is None or old.plugin != BUILTIN:
                    what = f"comes from plugin {old.plugin!r}, not a built-in; rename one of them" if old else "is not a built-in"
                    raise PluginError(f"plugin {plugin!r} registers {kind[:-1]} {name!r} with replaces=True, but {name!r} {what}")
                self.notice(f"plugin {plugin!r} replaces the built-in {kind[:-1]} {name!r}")
            elif old is not None:
                hint = " (to replace a built-in on purpose: register(name, obj, replaces=True))" if old.plugin == BUILTIN else ""
                raise PluginError(
                    f"{kind[:-1]} {name!r} is registered twice: by plugin {old.plugin!r} and by "
                    f"plugin {plugin!r}; rename one of them{hint}"
                )
            table[name] = Entry(name, obj, plugin, metadata)

        return register

    def names(self, kind):
        return sorted(self.tables[kind])

    def get(self, kind, name):
        try:
            return self.tables[kind][name].obj
        except KeyError:
            raise ConfigError(did_you_mean(name, self.tables[kind], kind[:-1])) from None

    def plugin_of(self, kind, name):
        return self.tables[kind][name].plugin

    def model_plugin(self, role, name):
        """The plugin that supplies teacher/student model ``name`` (generators serve both roles)."""
        for kind in (role, "generators"):
            if name in self.tables[kind]:
                return self.tables[kind][name].plugin
        return None

    def model_factory(self, role, name):
        """The factory for a teacher/student ``name``; generators serve both roles (GAN distillation)."""
        for kind in (role, "generators"):
            if name in self.tables[kind]:
                return self.tables[kind][name].obj
        choices = list(self.tables[role]) + list(self.tables["generators"])
        raise ConfigError(did_you_mean(name, choices, f"{role[:-1]} model"))

    def build_model(self, role, name, data_info, **options):
        """Build model ``name`` of ``role`` ("teachers", "students" or "generators").

        ``data_info`` maps num_classes / in_channels / image_size; each is passed only to factories
        that declare it. Unknown options are a ConfigError listing the factory's options.
        """
        factory = self.model_factory(role, name) if role != "generators" else self.get(role, name)
        params = inspect.signature(factory).parameters
        valid = option_defaults(factory)
        unknown = [k for k in options if k not in valid]
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            raise ConfigError(
                f"model {name!r} has no option {unknown[0]!r}; its options are: {', '.join(valid) or '(none)'}"
            )
        data_args = {k: data_info[k] for k in DATA_ARGS if k in params and k not in options}
        return factory(**data_args, **options)


def option_defaults(factory):
    """A model factory's own options (name -> default), without the data-derived arguments."""
    out = {}
    for name, p in inspect.signature(factory).parameters.items():
        if name in DATA_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[name] = None if p.default is inspect.Parameter.empty else p.default
    return out
