"""Run records: one folder per (cell, seed), one JSON record written atomically (temp file +
rename), safe when many processes share a file system. No torch here.

Nothing is read or written through a symbolic link that leaves the folder a command was given
(``--out``, a leaderboard's folders): ``walk`` follows the links that stay inside and stops at
the first that does not with a one-line error.

A record carries a "sha256" of its canonical JSON body (every other key, sorted, compact), checked
on read: a record that is not valid UTF-8 or JSON, lacks a key the leaderboard needs, or fails its
checksum is unreadable, so ``run`` redoes it and ``leaderboard`` names it. A record without a
"sha256" (written before records had one) is trusted as it stands.
"""
import fcntl
import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

from kdbench.errors import ConfigError

RECORD = "record.json"
CONFIG = "config.json"
LOCK = "run.lock"  # held by the process running the folder's (cell, seed)
REQUIRED = ("experiment", "cell_id", "method", "seed", "status", "labels", "config")
REQUIRED_OK = ("metrics", "selection", "student")  # what a finished run must also report


class UnreadableRecord(Exception):
    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def run_dir(out, cell, seed):
    return Path(out) / cell.experiment / cell.name / f"seed{seed}"


@contextmanager
def file_lock(path, wait=True):
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs; yields True.
    With wait=False it yields False at once when another process holds the lock. The lock goes
    with the process (also on kill -9); the file stays, deleting it would race."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def temp_path(path):
    """A temporary name beside ``path`` that no other process or thread picks (pid + random)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, payload):
    write_bytes(path, json.dumps(payload, indent=2, default=str).encode())


def record_digest(body):
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_record(folder, record):
    """Write ``record`` to ``folder`` with the checksum of its body (as JSON will read it back)."""
    body = json.loads(json.dumps({k: v for k, v in record.items() if k != "sha256"}, default=str))
    write_json(Path(folder) / RECORD, body | {"sha256": record_digest(body)})


def load_record(folder):
    """The record in ``folder``, None when there is none; raises UnreadableRecord saying why."""
    path = Path(folder) / RECORD
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnreadableRecord(path, exc.strerror or type(exc).__name__) from None
    except UnicodeDecodeError:
        raise UnreadableRecord(path, "not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise UnreadableRecord(path, f"not valid JSON, truncated? ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(record, dict):
        raise UnreadableRecord(path, "not a JSON object")
    digest = record.pop("sha256", None)
    if digest is not None and digest != record_digest(record):
        raise UnreadableRecord(path, "fails its sha256 checksum (edited or damaged)")
    missing = [k for k in REQUIRED + (REQUIRED_OK if record.get("status") == "ok" else ()) if k not in record]
    if missing:
        raise UnreadableRecord(path, f"lacks {', '.join(missing)}")
    return record


def read_json(path):
    """The JSON object in ``path``, or None when there is none or it is unreadable."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def read_record(folder):
    """The record in ``folder``, or None when there is none or it is unreadable."""
    try:
        return load_record(folder)
    except UnreadableRecord:
        return None


def is_finished(folder):
    record = read_record(folder)
    return record is not None and record.get("status") == "ok"


def walk(folder, root=None):
    """Every file under ``folder`` (sorted; ``folder`` may not exist yet), following the symbolic
    links that stay inside ``root`` (default ``folder``) and each real folder once; ConfigError at
    the first link, or ``folder`` itself, that leads outside ``root``."""
    root = Path(root or folder).resolve()
    seen = set()

    def visit(path):
        real = path.resolve()
        if not real.is_relative_to(root):
            link = next((p for p in [path, *path.parents] if p.is_symlink()), path)
            raise ConfigError(f"{link} is a symbolic link to {link.resolve()}, outside {root}: kdbench reads and writes run "
                              f"folders only inside the folder it is given; replace the link by the folder or name its target instead")
        if path.is_dir():
            if real not in seen:
                seen.add(real)
                for child in sorted(path.iterdir()):
                    yield from visit(child)
        elif path.is_file():
            yield path

    yield from visit(Path(folder))


def check_inside(folder, root):
    """ConfigError when ``folder`` or anything in it is reached through a symbolic link that leaves
    ``root`` (before a run writes there)."""
    for _ in walk(folder, root):
        pass


def iter_records(folders, unreadable=None):
    """Every readable record under ``folders`` (searched recursively, see ``walk``); the unreadable
    ones are appended to the list ``unreadable`` (as UnreadableRecord, with .path and .reason) if
    given."""
    for folder in folders:
        for path in walk(folder):
            if path.name != RECORD:
                continue
            try:
                record = load_record(path.parent)
            except UnreadableRecord as exc:
                if unreadable is not None:
                    unreadable.append(exc)
                continue
            if record is not None:
                record.setdefault("run_dir", str(path.parent))
                yield record
