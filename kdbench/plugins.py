"""Loading plugins and filling the registry from their register hooks.

Three ways in, in this order: the built-in default plugin (datasets, architectures and the
``scratch`` baseline), installed distributions that declare the ``kdbench`` entry-point group,
and plugin folders named on the command line (a folder holding ``plugin.py``).
"""
import hashlib
import importlib
import os
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path

import pluggy

from kdbench import hookspecs
from kdbench.errors import PluginError
from kdbench.registry import KINDS, Registry

ENTRY_POINT_GROUP = "kdbench"
PATH_PACKAGE = "kdbench_plugins"  # path plugins are imported as kdbench_plugins.<folder name>


def strict_from_env():
    return os.environ.get("KDBENCH_STRICT_PLUGINS", "") not in ("", "0")


def load_registry(plugin_dirs=(), strict=None, warn=None):
    """Build a Registry from the built-ins, entry points and ``plugin_dirs``.

    A plugin that fails to import or register is reported through ``warn`` (stderr by default)
    and skipped, unless ``strict`` (or KDBENCH_STRICT_PLUGINS=1), which raises PluginError.
    """
    strict = strict_from_env() if strict is None else strict
    warn = warn or (lambda msg: print(f"kdbench: warning: {msg}", file=sys.stderr))
    pm = pluggy.PluginManager("kdbench")
    pm.add_hookspecs(hookspecs)

    def skip(name, exc):
        msg = f"plugin {name!r} failed to load: {type(exc).__name__}: {exc}"
        if strict:
            raise PluginError(msg) from exc
        warn(msg + " (skipped; --strict-plugins makes this an error)")

    # a plugin's name is its folder's: two folders may not share one, and a folder replaces an
    # installed plugin of its name (the folder is what the user pointed at)
    folders = {}
    for folder in map(lambda d: Path(d).resolve(), plugin_dirs):
        if folders.setdefault(folder.name, folder) != folder:
            raise PluginError(f"two plugin folders are named {folder.name!r} ({folders[folder.name]} and {folder}); "
                              "a plugin is named after its folder, so rename one")

    from kdbench import builtin

    pm.register(builtin, name="kdbench.builtin")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in folders:
            warn(f"plugin folder {folders[ep.name]} replaces the installed plugin {ep.name!r} ({ep.value}) of the same name")
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take kdbench down
            skip(ep.name, exc)
    for name, folder in folders.items():
        try:
            pm.register(import_plugin_folder(folder), name=name)
        except PluginError:
            raise
        except Exception as exc:
            skip(name, exc)

    registry = Registry()
    for kind in KINDS:
        caller = getattr(pm.hook, f"kdbench_register_{kind}")
        for impl in caller.get_hookimpls():  # in registration order: built-ins first
            try:
                impl.function(register=registry.register_callback(kind, impl.plugin_name))
            except PluginError:
                raise
            except Exception as exc:
                skip(impl.plugin_name, exc)
    return registry


def import_plugin_folder(folder):
    """Import ``folder/plugin.py`` as ``kdbench_plugins.<folder>.plugin`` (relative imports work)."""
    folder = Path(folder).resolve()
    if not (folder / "plugin.py").is_file():
        raise PluginError(f"{folder} is not a kdbench plugin folder: it has no plugin.py")
    if PATH_PACKAGE not in sys.modules:
        root = types.ModuleType(PATH_PACKAGE)
        root.__path__ = []
        sys.modules[PATH_PACKAGE] = root
    package_name = f"{PATH_PACKAGE}.{folder.name.replace('-', '_')}"
    existing = sys.modules.get(package_name)
    if existing is not None and list(existing.__path__) != [str(folder)]:  # same name, other folder
        package_name += "_" + hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    module_name = f"{package_name}.plugin"
    if module_name in sys.modules:
        return sys.modules[module_name]
    package = types.ModuleType(package_name)
    package.__path__ = [str(folder)]
    sys.modules[package_name] = package
    try:
        return importlib.import_module(module_name)
    except BaseException:
        sys.modules.pop(package_name, None)
        raise
