"""Train the teachers of the plugins' quick profiles afresh and ship them into teachers/.

    python scripts/ship_teachers.py plugins/hinton plugins/akd plugins/classic plugins/vkd plugins/gankd

Each teacher the default grid of a plugin folder uses is trained into an empty temporary cache
(never loaded from teachers/), together with any teacher its method loads itself (gankd's
Frechet-distance classifier); every cache entry is then copied to teachers/KEY/. The teachers
train on all CPU threads, as `run` trains them; commit the files with the machine they came from
(teachers/README.md).
"""
import shutil
import sys
import tempfile
from pathlib import Path

from kdbench import engine, experiment
from kdbench.plugins import load_registry
from kdbench.teachers import META, TeacherCache, teacher_key

SHIPPED = Path(__file__).resolve().parent.parent / "teachers"


def main(folders):
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            registry = load_registry([folder], strict=True)
            cells, _, _ = experiment.expand(folder, registry, plugin_dirs=[folder])
            cache = TeacherCache(tmp, registry, engine.resolve_device("cpu"))  # no stores: trained here
            specs = {teacher_key(c.config["teacher"]): c.config["teacher"] for c in cells if registry.get("methods", c.method).needs_teacher}
            for key, spec in specs.items():
                teacher = cache.get(spec)
                print(f"{folder}: teacher {key} ({spec['model']}), sha256 {teacher.info['sha256'][:16]}: {teacher.info['metrics']}")
        for meta in sorted((Path(tmp) / "teachers").glob(f"*/{META}")):
            target = SHIPPED / meta.parent.name
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for name in (META, "teacher.pt"):
                shutil.copy2(meta.parent / name, target / name)
            print(f"shipped {target}")


if __name__ == "__main__":
    main(sys.argv[1:] or sys.exit(__doc__))
