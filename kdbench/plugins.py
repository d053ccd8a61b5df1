"""Loading plugins and filling the registry from their register hooks.

Three ways in, in this order: the built-in default plugin (datasets, architectures and the
``scratch`` baseline), installed distributions that declare the ``kdbench`` entry-point group,
and plugin folders named on the command line (a folder holding ``plugin.py``).

Each plugin gets a fingerprint of its code when it is loaded (``Registry.plugins``), so that a run
record can say which code produced it and ``run`` can tell when that code changed:
a folder plugin: sha256 over its ``*.py`` files (relative paths and bytes, tests and __pycache__
left out); an installed distribution: its name, version and a hash of its files; the built-ins:
kdbench's version.
"""
import functools
import hashlib
import importlib
import json
import os
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path

import pluggy

from kdbench import hookspecs
from kdbench.errors import PluginError
from kdbench.errors import did_you_mean
from kdbench.registry import BUILTIN, KINDS, Registry

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

    import kdbench
    from kdbench import builtin

    registry = Registry(notice=warn)
    pm.register(builtin, name=BUILTIN)
    registry.plugins[BUILTIN] = plugin_info(BUILTIN, kdbench.__version__, "builtin", engine_fingerprint())
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in folders:
            warn(f"plugin folder {folders[ep.name]} replaces the installed plugin {ep.name!r} ({ep.value}) of the same name")
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
            registry.plugins[ep.name] = distribution_info(ep, module)
        except Exception as exc:  # a broken third-party plugin must not take kdbench down
            skip(ep.name, exc)
    for name, folder in folders.items():
        try:
            module = import_plugin_folder(folder)
            pm.register(module, name=name)
            registry.plugins[name] = plugin_info(name, getattr(module, "__version__", None), str(Path(folder).resolve()), folder_fingerprint(folder))
        except PluginError:
            raise
        except Exception as exc:
            skip(name, exc)

    check_hook_names(pm)
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


def check_hook_names(pm):
    """A hook implementation whose name is no hook spec (a misspelling pluggy would ignore) is
    an error naming it and the valid hooks; so is a hook spec's name defined without @hookimpl."""
    specs = sorted(name for name in dir(hookspecs) if name.startswith("kdbench_register_"))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        for name, caller in vars(pm.hook).items():
            if not name.startswith("_") and not caller.has_spec() and caller.get_hookimpls():
                plugin = caller.get_hookimpls()[0].plugin_name
                raise PluginError(f"plugin {plugin!r}: " + did_you_mean(name, specs, "hook")) from None
        raise
    for plugin in pm.get_plugins():
        for name in specs:
            if callable(getattr(plugin, name, None)) and not pm.parse_hookimpl_opts(plugin, name):
                raise PluginError(f"plugin {pm.get_name(plugin)!r} defines {name} without @kdbench.hookimpl, so it is never called")


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


def plugin_info(name, version, source, fingerprint):
    return {"name": name, "version": None if version is None else str(version), "fingerprint": fingerprint, "source": source}


# kdbench's modules that only parse the command line, present, plan or test runs: editing them
# cannot change a result, so they are left out of the engine's fingerprint
NOT_RESULTS = {"__main__.py", "arguments.py", "cli.py", "errors.py", "leaderboard.py", "loggers.py", "plan.py", "plot.py", "report.py",
               "results.py", "scaffold.py", "stats.py"}


@functools.lru_cache(maxsize=1)
def engine_fingerprint():
    """sha256 over kdbench's version, its sources that can change a result (the engine, data, zoo,
    losses, runner, ...; not NOT_RESULTS), the fused kernels' sources and whether the compiled op
    loaded (the kernels and the reference losses round differently). A record made by other
    engine code is stale, as one made by other plugin code is."""
    import kdbench
    import kdbench_ext

    parts = [f"kdbench=={kdbench.__version__}", f"ext={kdbench_ext.available()}",
             folder_fingerprint(Path(kdbench.__file__).parent, skip=NOT_RESULTS),
             folder_fingerprint(Path(kdbench_ext.__file__).parent, suffixes=(".py", ".cpp", ".h", ".cu"))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def folder_fingerprint(folder, suffixes=(".py",), skip=()):
    """sha256 over a folder's sources (a plugin's Python files by default): sorted relative paths
    and their bytes (tests, test_*.py, __pycache__ and the relative paths in ``skip`` left out:
    they do not change what a run computes)."""
    folder = Path(folder).resolve()
    digest = hashlib.sha256()
    files = [p for p in folder.rglob("*") if p.suffix in suffixes and p.is_file()]
    for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
        rel = path.relative_to(folder)
        if (any(part in ("__pycache__", "tests", "test") for part in rel.parts[:-1]) or rel.name.startswith("test_")
                or rel.as_posix() in skip):
            continue
        digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def distribution_info(ep, module):
    """Name, version and a hash of an installed distribution's files (importlib.metadata); an
    editable install also hashes the source folder its plugin module is imported from."""
    dist = ep.dist
    if dist is None:  # an entry point without a distribution (rare): its module's folder
        folder = Path(module.__file__).parent
        return plugin_info(ep.name, getattr(module, "__version__", None), str(folder), folder_fingerprint(folder))
    digest = hashlib.sha256(f"{dist.metadata['Name']}=={dist.version}".encode())
    for file in sorted(dist.files or [], key=str):
        path = Path(file.locate())
        if "__pycache__" not in file.parts and path.is_file():
            digest.update(str(file).encode() + b"\0" + path.read_bytes() + b"\0")
    if is_editable(dist) and getattr(module, "__file__", None):
        digest.update(folder_fingerprint(Path(module.__file__).parent).encode())
    return plugin_info(ep.name, dist.version, f"{dist.metadata['Name']} {dist.version}", digest.hexdigest())


def is_editable(dist):
    try:
        return bool(json.loads(dist.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable"))
    except ValueError:
        return False
