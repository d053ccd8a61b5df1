"""The command line: run, list, leaderboard, teachers. Parsing and printing only; the work is
done by library functions a script could call the same way. Imports nothing heavy at module
level, so ``python -m kdbench --help`` stays fast."""
import difflib
import os
import sys
from pathlib import Path

from kdbench.arguments import KIND_NAMES, build_parser, parse_seeds
from kdbench.errors import ConfigError, KDBenchError


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `run --ddp N` starts the same command under torchrun
    # Before torch loads OpenMP: on a shared machine the default spin-wait makes two threads
    # many times slower than one; passive waiting costs little when the machine is quiet.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard, "report": cmd_report,
                "teachers": cmd_teachers, "new-plugin": cmd_new_plugin}[args.command](args)
    except KDBenchError as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None) or "runs"
        print(f"\nkdbench: interrupted; finished runs are saved in {out}. Rerun the same command to resume.", file=sys.stderr)
        return 130


def check_plugin_folder(folder):
    path = Path(folder)
    if path.is_dir():
        return path
    parent = path.parent if str(path.parent) else Path(".")
    siblings = [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(str(parent / c) for c in close)}?" if close else ""
    raise ConfigError(f"plugin folder {folder!r} does not exist{hint}")


def plugin_folders(dirs):
    """``--plugin DIR`` for each DIR: a plugin folder (it holds plugin.py), or a folder of them."""
    folders = []
    for d in dirs:
        path = check_plugin_folder(d)
        inside = [path] if (path / "plugin.py").is_file() else sorted(p for p in path.iterdir() if (p / "plugin.py").is_file())
        if not inside:
            raise ConfigError(f"--plugin {d}: neither a plugin folder (it has no plugin.py) nor a folder of plugin folders")
        folders += inside
    return folders


def check_writable_dir(path, flag):
    """``path`` is a folder this process can write, or can be created as one (nothing is created here)."""
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder; name a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {existing} is not writable; name a folder you can write")


def check_writable_tree(folder, flag):
    """``folder`` can be written, and so can every folder already below it."""
    check_writable_dir(folder, flag)
    for below, _, _ in os.walk(Path(folder).expanduser()):
        if not os.access(below, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {folder}: {below} is not writable; make it writable or name another {flag}")


def check_writable_file(path, flag):
    """``path`` can be written as a file: its folder exists and is writable, and it is no folder."""
    path = Path(path).expanduser()
    folder = path.parent
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; name a file")
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {path} is not writable")


def cmd_run(args):
    from kdbench import distributed

    if args.ddp:
        return launch_ddp(args.ddp, args.argv)
    if not distributed.launched():
        return run_grid(args)
    distributed.init(args.device)
    try:
        return run_grid(args)
    finally:
        distributed.finish()


def launch_ddp(processes, argv):
    """``run ... --ddp N``: the same command under torchrun, N processes on this machine."""
    import subprocess

    if processes < 2:
        raise ConfigError(f"--ddp {processes}: give the number of processes, 2 or more")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--ddp starts torchrun itself: drop it when the command already runs under torchrun")
    argv = [a for i, a in enumerate(argv) if a != "--ddp" and not a.startswith("--ddp=") and (i == 0 or argv[i - 1] != "--ddp")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m", "kdbench", *argv]
    return subprocess.run(command).returncode


def run_grid(args):
    from kdbench import distributed, engine, experiment, features, loggers
    from kdbench.schedule import RunOptions
    from kdbench.session import Session, SessionSpec

    folder = check_plugin_folder(args.plugin).resolve()
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    check_writable_dir(args.out, "--out")
    if args.cache:
        check_writable_dir(args.cache, "--cache")
    else:
        from kdbench.teachers import default_cache_dir

        check_writable_dir(default_cache_dir(), "the teacher cache ($KDBENCH_CACHE)")
    teacher_path, sets = args.teacher, list(args.sets)
    if "://" in teacher_path:  # a URL: set like the file's [teacher] url and sha256, so records name it
        sets += teacher_url_sets(teacher_path)
        teacher_path = ""
    session = Session(SessionSpec((str(folder),), args.strict_plugins, args.cache, args.device))
    registry = session.registry
    cells, seeds, profile = experiment.expand(folder, registry, grid=args.grid, sets=sets, profile=args.profile, seeds=seeds, plugin_dirs=[folder])
    check_writable_tree(Path(args.out) / cells[0].experiment, "--out")  # a rerun writes into what is there
    engine.check_datasets(session.data, cells)
    features.check_layer_options(session.data, cells)
    logger_names = tuple(dict.fromkeys(name for arg in args.loggers for name in arg.split(",") if name))
    loggers.check(logger_names, registry)
    options = RunOptions(out=args.out, cache=args.cache, device=args.device, force=args.force,
                         teacher_path=teacher_path, strict_plugins=args.strict_plugins, keep_stale=args.keep_stale,
                         loggers=logger_names)
    if distributed.launched() and (args.workers not in (None, 1) or args.executor != "local"):
        raise ConfigError("--workers and --executor ray do not combine with --ddp (each cell already trains on several processes)")
    workers = resolve_workers(args, cells)
    # everything above is checked by --dry-run too; it also loads every teacher that is a file
    # (--teacher PATH, shipped, downloaded) as the run would, so a bad one is the same error
    if args.dry_run:  # before any teacher download: a dry run writes nothing
        from kdbench import executors, plan

        if args.executor == "ray":  # what run checks as it starts the executor, without starting Ray
            executors.check_ray_options(args.ray_address, args.cpus_per_cell, args.gpus_per_cell, args.device)
        print(f"kdbench: {cells[0].experiment} ({profile or 'no'} profile): timing a few steps of each configuration ...")
        print(plan.dry_run(cells, seeds, registry, options, workers)[1])
        return 0
    if not distributed.is_main():  # DDP: rank 0 drives the grid; this rank trains its jobs with it
        from kdbench.job import follow

        follow(session)
        return 0
    try:
        return drive(args, session, folder, cells, seeds, profile, options, teacher_path)
    finally:
        if distributed.active():
            distributed.broadcast(None)  # the other ranks stop


def drive(args, session, folder, cells, seeds, profile, options, teacher_path):
    """Rank 0's (or the only process's) part of ``run``: the grid, its records and leaderboard."""
    from kdbench import leaderboard, schedule, store
    from kdbench.results import Results
    from kdbench.teachers import META, default_cache_dir

    if not teacher_path:  # a wrong hash or an unreachable server stops here, before any training
        schedule.download_teachers(cells, args.cache)
    executor = make_executor(args, cells)

    cache_dir = Path(args.cache).expanduser().resolve() if args.cache else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    shared = {"teacher cache": cache_dir, "plugin folder": folder / "plugin.py"}
    for folder_of_teachers in cells[0].teacher_stores:  # probed by a file it holds: it is never written
        shipped = next(Path(folder_of_teachers).glob(f"*/{META}"), None)
        if shipped:
            shared[f"shipped teachers {folder_of_teachers}"] = shipped
    executor.check_shared(shared)
    print(f"kdbench: {cells[0].experiment} ({profile or 'no'} profile): {len(cells)} cell(s) x {len(seeds)} seed(s) -> {args.out}")
    records, all_ok = schedule.run_grid(session, cells, seeds, options, executor)
    # the results of the whole experiment: every record under --out, from this and earlier
    # commands, each gain against the baseline its file names now; saved (one summary, two
    # formats), and printed for this command's runs
    target = Path(args.out) / cells[0].experiment
    everything = list(store.iter_records([target]))
    saved = Results(everything, cells[0].baseline)
    print("\n" + leaderboard.render(saved.select((r["experiment"], r["cell_id"], r["seed"]) for r in records), "md"))
    for suffix in ("md", "csv"):  # atomic: another process on this --out may save it at the same time
        store.write_bytes(target / f"leaderboard.{suffix}", leaderboard.render(saved, suffix).encode())
    print(f"kdbench: leaderboard of all {len(everything)} record(s) of {cells[0].experiment} saved to {target}/leaderboard.md and .csv")
    if not all_ok:
        print("kdbench: some runs failed (see above); rerun to retry them", file=sys.stderr)
    return 0 if all_ok else 1


def teacher_url_sets(value):
    """``--teacher URL#sha256=HEX`` as the two settings it stands for."""
    url, marker, sha256 = value.partition("#sha256=")
    if not marker or not sha256:
        raise ConfigError(f"--teacher {value}: a teacher URL needs its hash, as --teacher URL#sha256=HEX")
    return [f"teacher.url={url}", f"teacher.sha256={sha256}"]


def make_executor(args, cells):
    from kdbench import executors

    workers = resolve_workers(args, cells)
    if args.executor == "ray":
        return executors.RayExecutor(args.ray_address, args.cpus_per_cell, args.gpus_per_cell, args.device)
    return executors.ProcessExecutor(workers) if workers > 1 else executors.LocalExecutor()


def resolve_workers(args, cells):
    """How many cells run at once on this machine (--workers, $KDBENCH_WORKERS or the default);
    1 with Ray (its resources decide) and under DDP."""
    from kdbench import distributed

    workers = args.workers
    if workers is None and os.environ.get("KDBENCH_WORKERS"):
        try:
            workers = int(os.environ["KDBENCH_WORKERS"])
        except ValueError:
            raise ConfigError(f"KDBENCH_WORKERS={os.environ['KDBENCH_WORKERS']!r} is not a number of processes") from None
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: give a number of processes >= 1")
    if args.executor == "ray":
        if workers not in (None, 1):
            raise ConfigError("--workers is for the local executor; on Ray, --cpus-per-cell decides how many cells share a machine")
        return 1
    if args.ray_address or args.cpus_per_cell != 1.0 or args.gpus_per_cell:
        raise ConfigError("--ray-address, --cpus-per-cell and --gpus-per-cell need --executor ray")
    if workers is None:
        workers = 1 if distributed.launched() else default_workers(cells, args.device)
    return workers


def default_workers(cells, device):
    """One worker per core where that cannot change a result: on the CPU, with every cell pinning
    train.threads (the thread count is part of a run's identity), as many workers as this
    process's threads hold; else 1. The akd quick profile pins 1 thread: 2 workers on 2 cores."""
    import torch

    from kdbench.engine import resolve_device

    pinned = [cell.config["train"]["threads"] for cell in cells]
    if resolve_device(device).type != "cpu" or not all(pinned):
        return 1
    return max(1, torch.get_num_threads() // max(pinned))


def cmd_list(args):
    from kdbench.plugins import load_registry

    kinds = KIND_NAMES
    if args.kind:
        matches = [k for k in KIND_NAMES if k == args.kind or k == args.kind + "s"]
        if not matches:
            from kdbench.errors import did_you_mean

            raise ConfigError(did_you_mean(args.kind, KIND_NAMES, "kind"))
        kinds = matches
    registry = load_registry(plugin_folders(args.plugin_dirs), strict=args.strict_plugins or None)
    if args.layers:
        if len(kinds) != 1 or kinds[0] not in ("teachers", "students"):
            raise ConfigError("--layers lists a classifier's module paths: use `list teachers --layers MODEL` or `list students --layers MODEL`")
        return list_layers(registry, kinds[0], args.layers, args.dataset)
    for kind in kinds:
        print(f"{kind}:")
        for name in registry.names(kind):
            entry = registry.tables[kind][name]
            note = entry.metadata.get("description", "")
            print(f"  {name:<24} {entry.plugin:<18} {note}".rstrip())
    if not args.plugin_dirs:
        print("(built-in and installed plugins; a run also loads its plugin folder: add --plugin DIR, or --plugin plugins for every folder in plugins/)")
    return 0


def list_layers(registry, kind, name, dataset):
    """Every module path of ``name`` (as ctx.features takes them) with its output shape, from one
    forward of two test images of ``dataset``."""
    import dataclasses

    import torch

    from kdbench import engine
    from kdbench.config import DataConfig
    from kdbench.features import output_shapes

    registry.model_factory(kind, name)  # unknown names are one-line errors listing the valid ones
    registry.get("datasets", dataset)
    data = engine.DataCache(registry).bundle(dataclasses.asdict(DataConfig(name=dataset, val_size=0)), torch.device("cpu"))
    model = registry.build_model(kind, name, data.info)
    images, _ = next(iter(data.batches("test", 2)))
    shapes = output_shapes(model, images)
    modules = dict(model.named_modules())
    print(f"{name} on {dataset} (input {'x'.join(map(str, images.shape[1:]))}): module path, type, output shape without the batch dim")
    feature_paths = getattr(model, "feature_paths", {})  # the zoo's CIFAR nets name their stages' outputs
    if feature_paths:
        print("  feature paths (model.feature_paths: each stage's output, the same before its ReLU, the pooled feature):")
    for kind, paths in feature_paths.items():
        print(f"    {kind}: {paths if isinstance(paths, str) else ', '.join(paths)}")
    for path, shape in shapes.items():
        shown = "x".join(map(str, shape)) if isinstance(shape, torch.Size) else shape or "not run"
        print(f"  {path:<32} {type(modules[path]).__name__:<20} {shown}")
    return 0


def cmd_leaderboard(args):
    from kdbench import leaderboard, plot, store
    from kdbench.results import Results

    for d in args.dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"run folder {d!r} does not exist; pass the --out folder of a run")
    if args.plot:
        check_writable_file(args.plot, "--plot")
        check_plot_format(args.plot)
    if args.out:
        check_writable_file(args.out, "--out")
    unreadable = []
    records = list(store.iter_records(args.dirs, unreadable))
    if unreadable:
        print(f"kdbench: {len(unreadable)} unreadable record(s) left out (`kdbench run` redoes them): "
              + "; ".join(str(exc) for exc in unreadable), file=sys.stderr)
    if not records:  # an empty table always says why
        print(f"kdbench: no readable {store.RECORD} under {', '.join(args.dirs)}"
              + ("" if unreadable else "; pass the --out folder of a run (or one of its experiment folders)"), file=sys.stderr)
    results = Results(records)
    text = leaderboard.render(results, args.format, args.sort)
    if args.plot:
        plot.plot(results, args.plot)
        print(f"kdbench: wrote {args.plot}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(text)
        print(f"kdbench: wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def check_plot_format(path):
    """The --plot file's extension is one that matplotlib writes."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib") from None
    formats = Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in formats:
        raise ConfigError(f"--plot {path}: unknown image format {suffix!r}; valid: {', '.join(sorted(formats))}")


def cmd_report(args):
    from kdbench import report

    if args.seeds:
        parse_seeds(args.seeds)
    report.generate(args.root, report.parse_settings(args.cpu_settings), args.out, args.cache, args.only, args.seeds, args.keep_stale,
                    not args.no_run)
    return 0


def cmd_new_plugin(args):
    from kdbench.scaffold import new_plugin

    folder, files = new_plugin(args.name, args.dir, args.installable)
    print(f"kdbench: wrote {folder}/: {', '.join(files)}")
    print(f"  run it:  python -m kdbench run {folder}")
    print(f"  test it: python -m pytest {folder}")
    if args.installable:
        print(f"  install: pip install {folder}   (then every experiment can use {args.name})")
    return 0


def cmd_teachers(args):
    import time

    from tabulate import tabulate

    from kdbench import experiment
    from kdbench.teachers import META, default_cache_dir

    root = Path(args.cache).expanduser() if args.cache else default_cache_dir()
    dirs = args.plugin_dirs or (["plugins"] if Path("plugins").is_dir() else [])
    stores = {}  # the shipped teachers' folders the plugin folders name, each once
    for folder in plugin_folders(dirs):
        for store in experiment.teacher_stores(folder, experiment.read_experiment(folder).get("experiment", {}).get("teachers", [])):
            stores.setdefault(store, folder)
    rows = [teacher_row(meta, "cache") for meta in sorted((root / "teachers").glob(f"*/{META}"))]
    for download in sorted((root / "teachers" / "downloads").glob("*.pt")):
        rows.append([download.stem[:16], "downloaded (sha256)", "?", "?", "?", "", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(download.stat().st_mtime))])
    for store, folder in stores.items():
        rows += [teacher_row(meta, f"shipped ({os.path.relpath(store)})") for meta in sorted(Path(store).glob(f"*/{META}"))]
    if not rows:
        print(f"no teachers: none trained into or downloaded to {root}" + (f", none shipped with {', '.join(dirs)}" if dirs else ""))
        return 0
    print(tabulate(rows, headers=["key", "where", "model", "dataset", "trained by", "test (best val epoch)", "created"], tablefmt="github"))
    print(f"(cache: {root}" + ("" if dirs else "; add --plugin DIR for the teachers a plugin folder ships") + ")")
    return 0


def teacher_row(meta_path, where):
    import json

    try:
        meta = json.loads(meta_path.read_text())
        spec, metrics = meta["spec"], meta.get("trained_metrics", {})
        score = next((f"{k}={v:.2f}" for k, v in metrics.items() if k.endswith("_best")), "")
        return [meta["key"], where, spec["model"], spec["data"]["name"], spec["method"], score, meta.get("created", "")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # ValueError covers bad JSON and UTF-8
        return [meta_path.parent.name, where, "?", "?", "?", "unreadable meta.json", ""]

