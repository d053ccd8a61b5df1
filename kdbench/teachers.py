"""The content-addressed teacher cache.

A teacher's key hashes everything that shapes it: model and options, the method that trains
it and its options, its training and data settings, its seed, and the cache format version. A
missing teacher is trained once (under a file lock, so parallel cells wait instead of training
it twice) and shared by every cell and later run. On load the file's checksum is verified (a
corrupt file is reported and retrained) and the teacher is measured on the test set, so every
row records the accuracy of the teacher it really used.

An experiment may ship its teachers (``[experiment] teachers``: folders laid out like the cache).
They are searched first and never written: a teacher trained on another CPU is another teacher
(its floats, and so its students, differ), so shipping it is what makes a quick table hold on
every machine. A shipped file that fails its checksum is an error, not a retrain.
"""
import hashlib
import io
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

import torch

from kdbench import engine, store
from kdbench.errors import CheckpointError
from kdbench.spec import config_hash, model_options, resolve_teacher
from kdbench.measure import count_params

CACHE_VERSION = 1
WEIGHTS = "teacher.pt"
META = "meta.json"


def default_cache_dir():
    return Path(os.environ.get("KDBENCH_CACHE", "~/.cache/kdbench")).expanduser()


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_folder(stores, key):
    """The folder of teacher ``key`` among the shipped teacher folders ``stores``, or None."""
    return next((Path(s) / key for s in stores if (Path(s) / key / META).is_file()), None)


def teacher_key(spec):
    shaping = {k: v for k, v in spec.items() if k != "path"}
    return config_hash({"version": CACHE_VERSION, "teacher": shaping})[:16]


class TeacherCache:
    def __init__(self, root, registry, device, warn=None, stores=(), data=None):
        self.root = Path(root).expanduser() / "teachers"
        self.stores = [Path(s) for s in stores]  # shipped teachers, read-only, searched first
        self.registry = registry
        self.data = data or engine.DataCache(registry)  # the session's, or one of its own
        self.device = device
        self.warn = warn or (lambda msg: print(f"kdbench: {msg}", file=sys.stderr))
        self.loaded = {}  # key -> Teacher, so a process verifies each teacher once

    def get(self, spec):
        """The trained teacher for a full spec (see spec.resolve_teacher). The caller's
        random streams are left as they were, whether the teacher was cached or trained."""
        with engine.preserved_rng():
            if spec.get("path"):
                return self.load_external(spec)
            if spec.get("url"):
                return self.load_url(spec)
            key = teacher_key(spec)
            if key not in self.loaded:
                shipped = self.shipped(key)
                if shipped:
                    self.loaded[key] = self.load_cached(spec, shipped, shipped=True)
                else:
                    folder = self.root / key
                    with store.file_lock(folder.with_suffix(".lock")):
                        self.loaded[key] = self.load_cached(spec, folder) or self.train(spec, folder)
            return self.loaded[key]

    def shipped(self, key):
        """The shipped folder holding teacher ``key``, or None."""
        return shipped_folder(self.stores, key)

    def checksum(self, spec):
        """The sha256 of the checkpoint of teacher ``spec``: a cached one whose file matches its
        meta.json, else trained (or retrained) into the cache now; a shipped one whose file matches
        its meta.json (never restored or evaluated for it); a ``path`` or ``url`` is loaded and checked."""
        shipped = None if spec.get("path") or spec.get("url") else self.shipped(teacher_key(spec))
        if shipped:
            if not (shipped / WEIGHTS).exists():
                raise CheckpointError(f"shipped teacher {shipped} has no {WEIGHTS}; restore it (git checkout) or remove the folder")
            try:
                digest = json.loads((shipped / META).read_bytes().decode("utf-8"))["sha256"]
                if sha256_file(shipped / WEIGHTS) != digest:
                    raise CheckpointError("checksum mismatch")
            except (OSError, ValueError, KeyError, TypeError, CheckpointError) as exc:
                raise CheckpointError(f"shipped teacher {shipped} is corrupt ({type(exc).__name__}: {exc}); restore it (git checkout)") from None
            return digest
        if not spec.get("path") and not spec.get("url"):
            folder = self.root / teacher_key(spec)
            with store.file_lock(folder.with_suffix(".lock")):
                try:
                    digest = json.loads((folder / META).read_text())["sha256"]
                    if sha256_file(folder / WEIGHTS) == digest:
                        return digest
                except (OSError, ValueError, KeyError, TypeError):
                    pass  # missing or damaged: get() below reports it and trains it
        return self.get(spec).info["sha256"]

    def get_partial(self, data_cfg):
        """``ctx.load_teacher``: a teacher from a partial spec, on the run's data by default."""
        return lambda partial: self.get(resolve_teacher(self.registry, partial, data_cfg))

    def prepare(self, spec, run_dir):
        return engine.prepare(
            registry=self.registry, role="teachers", model_spec={"model": spec["model"]} | model_options(spec),
            method_name=spec["method"], method_options=spec["method_options"], data_cfg=spec["data"], data_cache=self.data,
            train_cfg=spec["train"], seed=spec["seed"], device=self.device, run_dir=run_dir,
            teacher_loader=self.get_partial(spec["data"]),
        )

    def train(self, spec, folder):
        self.warn(f"training teacher {spec['model']} ({teacher_key(spec)}); it is cached for later runs in {folder}")
        _, _, result = engine.prepare_and_train(lambda: self.prepare(spec, folder / "work"), f"teacher {spec['model']}",
                                                afresh="training the teacher")
        # every module as the best test saw it: the best-epoch snapshot (and post-hoc modules)
        states = result["best_state"]
        modules = {"model": states["student"]} | {name: state for name, state in states.items() if name != "student"}
        buffer = io.BytesIO()
        torch.save({"modules": modules}, buffer)
        store.write_bytes(folder / WEIGHTS, buffer.getvalue())
        meta = {
            "key": teacher_key(spec), "spec": spec, "sha256": sha256_file(folder / WEIGHTS),
            "trained_metrics": result["metrics"], "selection": result["selection"],
            "train_time_s": result["train_time_s"], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "torch": torch.__version__, "device": str(self.device),
        }
        store.write_json(folder / META, meta)
        shutil.rmtree(folder / "work", ignore_errors=True)
        return self.load_cached(spec, folder)

    def load_cached(self, spec, folder, shipped=False):
        weights, meta_path = folder / WEIGHTS, folder / META
        if not weights.exists() or not meta_path.exists():
            if shipped:
                raise CheckpointError(f"shipped teacher {folder} has no {WEIGHTS}; restore it (git checkout) or remove the folder")
            return None
        # only a failed checksum or deserialisation is corruption: the files go and the teacher is
        # retrained. Anything later (building the model, the data, memory, a plugin's bug) is
        # raised as it is and deletes nothing: a teacher may have cost hours.
        try:
            meta = json.loads(meta_path.read_bytes().decode("utf-8"))
            if sha256_file(weights) != meta["sha256"]:
                raise CheckpointError("checksum mismatch")
            modules = torch.load(weights, map_location="cpu", weights_only=True)["modules"]
        except (ValueError, KeyError, TypeError, EOFError, RuntimeError, pickle.UnpicklingError, CheckpointError) as exc:
            if shipped:  # never deleted or replaced: another teacher would silently change every result
                raise CheckpointError(f"shipped teacher {folder} is corrupt ({type(exc).__name__}: {exc}); restore it (git checkout)") from None
            self.warn(f"cached teacher {folder} is corrupt ({type(exc).__name__}: {exc}); retraining it")
            weights.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            return None
        eval_dir = self.root / "external" / meta["sha256"][:16] if shipped else folder / "eval"
        return self.restore(spec, modules, meta["sha256"], str(weights), eval_dir)

    def load_external(self, spec):
        path = Path(spec["path"]).expanduser()
        if not path.is_file():
            raise CheckpointError(f"--teacher {path}: no such file")
        return self.load_file(spec, path, sha256_file(path), f"--teacher {path}")

    def load_url(self, spec):
        """A teacher given by URL and SHA-256: downloaded once into the cache, verified on every load."""
        path = download(spec["url"], spec["sha256"], self.root / "downloads", self.warn)
        teacher = self.load_file(spec, path, spec["sha256"], f"teacher {spec['url']}")
        teacher.info.update(url=spec["url"], sha256=spec["sha256"])
        return teacher

    def load_file(self, spec, path, digest, label):
        """A checkpoint from outside the cache: a state_dict of the teacher model, or the cache's
        {"modules": ...} format; ``label`` names it in errors."""
        if digest not in self.loaded:
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"{label} is not a readable torch checkpoint ({type(exc).__name__}); pass a state_dict saved with torch.save") from None
            modules = saved["modules"] if isinstance(saved, dict) and "modules" in saved else {"model": saved}
            try:
                self.loaded[digest] = self.restore(spec, modules, digest, str(path), self.root / "external" / digest[:16])
            except RuntimeError as exc:
                raise CheckpointError(f"{label} does not fit teacher model {spec['model']!r}: {str(exc).splitlines()[0]}") from None
        return self.loaded[digest]

    def restore(self, spec, modules, digest, path, run_dir):
        """Rebuild the teacher (and its method's extra modules), load the weights, measure it."""
        method, ctx = self.prepare(spec, run_dir)
        try:
            ctx.student.load_state_dict(modules["model"])
            for name, module in ctx.modules.items():
                if name != "student":
                    module.load_state_dict(modules[name])
            metrics = engine.evaluate(method, ctx, engine.TEST_PHASES[-1])  # as the cache saved it: the best snapshot
        finally:
            engine.teardown(method, ctx)
        info = {
            "hash": digest[:16], "sha256": digest, "path": path, "model": spec["model"], "params": count_params(ctx.student),
            "metrics": metrics, "method": spec["method"],
        }
        return engine.Teacher(ctx.student, {n: m for n, m in ctx.modules.items() if n != "student"}, info)


def download(url, sha256, folder, warn=print):
    """The file at ``url`` whose SHA-256 is ``sha256``, downloaded once into ``folder``.

    It is fetched into a temporary file, verified, then renamed into place, so a failed
    download (no network, a server that dies mid-file) or a wrong hash keeps nothing.
    """
    import http.client
    import urllib.request

    dest = Path(folder) / f"{sha256}.pt"
    with store.file_lock(dest.with_suffix(".lock")):
        if dest.exists():
            if sha256_file(dest) == sha256:
                return dest
            warn(f"downloaded teacher {dest} no longer matches its sha256; downloading it again")
        warn(f"downloading teacher {url}")
        tmp = store.temp_path(dest)
        digest = hashlib.sha256()
        try:
            try:
                with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                    if getattr(response, "length", None):  # bytes the server announced but never sent
                        raise OSError(f"the connection closed with {response.length} bytes still to come")
            except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
                reason = getattr(exc, "reason", None) or exc
                reason = (str(reason).splitlines() or [type(exc).__name__])[0]
                raise CheckpointError(f"cannot download teacher {url}: {reason}; nothing was kept") from None
            if digest.hexdigest() != sha256:
                raise CheckpointError(f"teacher {url} has sha256 {digest.hexdigest()}, not the expected {sha256}; nothing was kept")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest
