"""Run records: one folder per (cell, seed), one JSON record written atomically (temp file +
rename), safe when many processes share a file system. No torch here."""
import json
import os
from pathlib import Path

RECORD = "record.json"
CONFIG = "config.json"


def run_dir(out, cell, seed):
    return Path(out) / cell.experiment / cell.name / f"seed{seed}"


def write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def read_record(folder):
    """The record in ``folder``, or None when there is none or it is unreadable."""
    try:
        return json.loads((Path(folder) / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_finished(folder):
    record = read_record(folder)
    return record is not None and record.get("status") == "ok"


def iter_records(folders):
    """Every readable record under ``folders`` (searched recursively)."""
    for folder in folders:
        for path in sorted(Path(folder).rglob(RECORD)):
            record = read_record(path.parent)
            if record is not None:
                record.setdefault("run_dir", str(path.parent))
                yield record
