"""The command line's grammar: the parser of every subcommand and the parsing of its values. The
command line (kdbench.cli) and ``report`` (which expands the ``run`` arguments its README blocks
quote) both read commands with it. Imports nothing heavy."""
import argparse

from kdbench.errors import ConfigError

KIND_NAMES = ("datasets", "teachers", "students", "generators", "methods", "loggers")


def build_parser():
    parser = argparse.ArgumentParser(prog="kdbench", description="A plugin-based benchmark harness for knowledge distillation.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment grid from a plugin folder and print its leaderboard")
    run.add_argument("plugin", help="plugin folder holding plugin.py and kdbench.toml (e.g. plugins/akd)")
    run.add_argument("--grid", action="append", default=[], metavar="AXIS=V1,V2", help="grid axis or config key and its values (repeatable; cartesian product)")
    run.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE", help="override a config key, e.g. method.temperature=8 (repeatable)")
    run.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the experiment's)")
    run.add_argument("--profile", help="named profile of the experiment (default: the file's, usually quick)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--out", default="runs", help="folder for run records (default ./runs)")
    run.add_argument("--cache", default="", help="teacher cache folder (default $KDBENCH_CACHE or ~/.cache/kdbench)")
    run.add_argument("--teacher", default="", metavar="PATH|URL#sha256=HEX", help="use this teacher checkpoint instead of the cache, or download it (verified against its SHA-256)")
    run.add_argument("--force", action="store_true", help="redo finished runs")
    run.add_argument("--ddp", type=int, default=0, metavar="N", help="train each cell with DistributedDataParallel over N processes (starts torchrun; one per GPU, or gloo on CPU)")
    run.add_argument("--workers", type=int, default=None, metavar="N", help="run N cells at once in spawned processes, the CPU threads split between them (default: one per core on the CPU when every cell pins train.threads, so that no result depends on it; else 1, one after another in this process; also $KDBENCH_WORKERS)")
    run.add_argument("--executor", default="local", choices=["local", "ray"], help="where cells run: this machine (default), or a Ray cluster (pip install -e '.[ray]')")
    run.add_argument("--ray-address", default="", metavar="ADDR", help="join this Ray cluster (e.g. auto, or HOST:6379 after `ray start --head`); default: a local one sized to this machine")
    run.add_argument("--cpus-per-cell", type=float, default=1.0, metavar="N", help="with --executor ray: CPUs each cell asks for (its intra-op threads; default 1)")
    run.add_argument("--gpus-per-cell", type=float, default=0.0, metavar="N", help="with --executor ray: GPUs each cell asks for, fractions allowed (e.g. 0.5; default 0)")
    run.add_argument("--keep-stale", action="store_true", help="keep finished runs whose code or teacher changed (marked stale) instead of rerunning them")
    run.add_argument("--log", action="append", default=[], dest="loggers", metavar="LOGGER", help="also log every run to this tracker: tensorboard, or one a plugin registers (repeatable; see list loggers)")
    run.add_argument("--dry-run", action="store_true", help="print the cells, teachers, parameters and a timed estimate of the wall time, then stop (trains nothing, writes nothing)")
    add_plugin_options(run)

    lst = sub.add_parser("list", help="list registered components and the plugin that supplied each")
    lst.add_argument("kind", nargs="?", help=f"one of {', '.join(KIND_NAMES)} (default: all)")
    lst.add_argument("--plugin", action="append", default=[], dest="plugin_dirs", metavar="DIR", help="also load this plugin folder, or each plugin folder in DIR (e.g. --plugin plugins; repeatable)")
    lst.add_argument("--layers", metavar="MODEL", help="list MODEL's module paths (for ctx.features) with their output shapes; kind: teachers or students")
    lst.add_argument("--dataset", default="fashion-mnist", help="the dataset that sizes the model for --layers (default fashion-mnist; e.g. synthetic)")
    add_plugin_options(lst)

    board = sub.add_parser("leaderboard", help="tables from run records: mean and std over seeds")
    board.add_argument("dirs", nargs="*", default=["runs"], help="run folders (default ./runs)")
    board.add_argument("--format", default="md", choices=["md", "csv", "html"])
    board.add_argument("--sort", help="column to sort by, descending (e.g. top1_best)")
    board.add_argument("--out", help="write to this file instead of stdout")
    board.add_argument("--plot", metavar="PNG", help="also save accuracy (or the method's metric) against parameters (needs matplotlib)")

    report = sub.add_parser("report", help="rerun the experiments the READMEs quote (CPU) and rewrite their tables")
    report.add_argument("--cpu-settings", default="native", metavar="S1,S2", help="CPU settings to run under: native, avx512, avx2, default, or all (= avx512,avx2,default); the first gives the main table")
    report.add_argument("--only", action="append", default=[], metavar="PLUGIN", help="regenerate only the blocks that run this plugin folder name, e.g. hinton (repeatable)")
    report.add_argument("--seeds", help="comma-separated seeds (default: each experiment's)")
    report.add_argument("--out", default="runs/report", help="folder for the run records, one subfolder per CPU setting (default runs/report)")
    report.add_argument("--cache", default="", help="teacher cache folder, one subfolder per CPU setting (default OUT/cache)")
    report.add_argument("--root", default=".", help="repository root holding README.md and plugins/ (default .)")
    report.add_argument("--keep-stale", action="store_true", help="reuse finished runs whose code or teacher changed (run --keep-stale); the tables say so")
    report.add_argument("--no-run", action="store_true", help="run nothing: write the tables from the records already in --out (the tables name their commits)")

    new = sub.add_parser("new-plugin", help="write a plugin folder (a method that trains, its experiment, a test) to start from")
    new.add_argument("name", help="the method's name, e.g. my-kd (the folder's name too)")
    new.add_argument("--dir", default=".", help="where to create the folder (default: here)")
    new.add_argument("--installable", action="store_true", help="also write a pyproject.toml declaring the kdbench entry point, for pip install")

    teachers = sub.add_parser("teachers", help="list the teachers a run can use: trained into the cache, downloaded, shipped")
    teachers.add_argument("--cache", default="", help="cache folder (default $KDBENCH_CACHE or ~/.cache/kdbench)")
    teachers.add_argument("--plugin", action="append", default=[], dest="plugin_dirs", metavar="DIR", help="also the teachers shipped with this plugin folder, or with each plugin folder in DIR (default: ./plugins, when there is one)")
    return parser


def add_plugin_options(parser):
    parser.add_argument("--strict-plugins", action="store_true", help="fail when a plugin cannot be loaded (also KDBENCH_STRICT_PLUGINS=1)")


def parse_seeds(text):
    if not text.strip():
        raise ConfigError("--seeds is empty; write comma-separated integers like 0,1,2 (or leave it out for the experiment's seeds)")
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"malformed --seeds {text!r}: expected comma-separated integers like 0,1,2") from None
    return seeds
