"""The teacher cache: trained once and shared, verified on load, corrupt files retrained,
bring-your-own checkpoints, weights_only loading."""
import json
import shutil

import pytest

import torch

from conftest import read_records
from kdbench.zoo import MODELS

GRID = ("--grid", "method=soft-kd", "--grid", "temperature=2,4", "--seeds", "0", "--set", "train.epochs=1")


class Evil:  # weights_only=True refuses arbitrary pickled objects
    pass


def cached_files(tmp_path):
    return sorted((tmp_path / "cache" / "teachers").glob("*/teacher.pt"))


def records(tmp_path):
    return read_records(tmp_path / "runs")


@pytest.mark.slow
def test_teacher_is_trained_once_and_reused(plugin_dir, cli, tmp_path):
    code, _, err = cli("run", str(plugin_dir), *GRID)
    assert code == 0, err
    assert err.count("training teacher small-cnn") == 1
    [weights] = cached_files(tmp_path)
    rows = records(tmp_path)
    assert len(rows) == 2 and len({r["teacher"]["hash"] for r in rows}) == 1
    assert all(r["teacher"]["metrics"]["top1"] > 50 for r in rows)

    code, _, err = cli("run", str(plugin_dir), *GRID, "--force")
    assert code == 0 and "training teacher" not in err  # from the cache
    code, out, _ = cli("teachers", "--cache", str(tmp_path / "cache"))
    assert code == 0 and weights.parent.name in out and "small-cnn" in out and "synthetic" in out

    # anything that shapes the teacher gives another key
    code, _, err = cli("run", str(plugin_dir), *GRID, "--set", "teacher.train.lr=0.001")
    assert code == 0 and "training teacher" in err and len(cached_files(tmp_path)) == 2


@pytest.mark.slow
def test_corrupt_or_truncated_teacher_is_reported_and_retrained(plugin_dir, cli, tmp_path):
    assert cli("run", str(plugin_dir), *GRID)[0] == 0
    [weights] = cached_files(tmp_path)
    original = json.loads((weights.parent / "meta.json").read_text())["trained_metrics"]
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:100] + bytes(50) + b[150:]):
        weights.write_bytes(damage(weights.read_bytes()))
        code, _, err = cli("run", str(plugin_dir), *GRID, "--force")
        assert code == 0
        assert "is corrupt (CheckpointError: checksum mismatch); retraining it" in err and "training teacher" in err
        retrained = json.loads((weights.parent / "meta.json").read_text())["trained_metrics"]
        assert retrained == original  # same key, same seed: the same teacher again


def test_bring_your_own_teacher(plugin_dir, cli, tmp_path):
    model = MODELS["small-cnn"](num_classes=10, in_channels=1, image_size=16, c1=8, c2=16, hidden=32)
    path = tmp_path / "mine.pt"
    torch.save(model.state_dict(), path)
    code, _, err = cli("run", str(plugin_dir), *GRID, "--teacher", str(path))
    assert code == 0, err
    assert "training teacher" not in err and not cached_files(tmp_path)
    rows = records(tmp_path)
    assert all(r["teacher"]["path"] == str(path) for r in rows)
    assert all(r["teacher"]["metrics"]["top1"] < 40 for r in rows)  # an untrained teacher, measured as such


def test_bad_external_teachers_stop_the_grid_with_one_line(plugin_dir, cli, tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save(MODELS["mlp"](num_classes=10, in_channels=1, image_size=16).state_dict(), wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, evil)
    for path, message in [(wrong, "does not fit teacher model 'small-cnn'"), (garbage, "is not a readable torch checkpoint"),
                          (evil, "is not a readable torch checkpoint"), (tmp_path / "absent.pt", "no such file")]:
        code, out, err = cli("run", str(plugin_dir), *GRID, "--teacher", str(path), "--force")
        # the driver checks the file before any cell trains (run identity needs its hash)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
        assert not list((tmp_path / "runs").rglob("record.json"))
        assert cli("run", str(plugin_dir), *GRID, "--teacher", str(path), "--dry-run")[::2] == (2, err)  # the dry run: the same line


def test_getting_a_teacher_leaves_the_random_streams_alone(plugin_dir, tmp_path):
    from kdbench.engine import seed_everything
    from kdbench.experiment import expand
    from kdbench.plugins import load_registry
    from kdbench.teachers import TeacherCache

    registry = load_registry([plugin_dir])
    [cell] = expand(plugin_dir, registry, grid=["method=soft-kd"], sets=["teacher.train.epochs=1"])[0]
    cache = TeacherCache(tmp_path / "cache", registry, torch.device("cpu"))
    for _ in range(2):  # trained, then loaded from the cache
        seed_everything(7)
        expected = torch.rand(3)
        seed_everything(7)
        cache.loaded.clear()
        cache.get(cell.config["teacher"])
        assert torch.equal(torch.rand(3), expected)


def ship_teachers(plugin_dir, cli, tmp_path):
    """Train the experiment's teacher into the cache, then ship it: move it into a folder the
    plugin's kdbench.toml names in [experiment] teachers (and forget the runs)."""
    assert cli("run", str(plugin_dir), *GRID)[0] == 0
    shutil.rmtree(tmp_path / "runs")
    [weights] = cached_files(tmp_path)
    store = plugin_dir / "shipped"
    store.mkdir()
    weights.parent.rename(store / weights.parent.name)
    toml = plugin_dir / "kdbench.toml"
    toml.write_text(toml.read_text().replace("[experiment]\n", "[experiment]\nteachers = \"shipped\"\n", 1))
    return store / weights.parent.name


@pytest.mark.slow
def test_a_shipped_teacher_is_loaded_instead_of_trained(plugin_dir, cli, tmp_path):
    shipped = ship_teachers(plugin_dir, cli, tmp_path)
    digest = json.loads((shipped / "meta.json").read_text())["sha256"]
    code, _, err = cli("run", str(plugin_dir), *GRID)
    assert code == 0 and "training teacher" not in err, err
    assert not cached_files(tmp_path)  # nothing trained into, or copied to, the user's cache
    assert {r["teacher"]["sha256"] for r in records(tmp_path)} == {digest}
    code, out, _ = cli("run", str(plugin_dir), *GRID, "--dry-run")
    assert code == 0 and "shipped" in out

    # a teacher setting the shipped file was not trained with: another teacher, trained as usual
    code, _, err = cli("run", str(plugin_dir), *GRID, "--set", "teacher.train.lr=0.001")
    assert code == 0 and "training teacher" in err and len(cached_files(tmp_path)) == 1


@pytest.mark.slow
def test_a_damaged_shipped_teacher_stops_the_grid_and_is_kept(plugin_dir, cli, tmp_path):
    shipped = ship_teachers(plugin_dir, cli, tmp_path)
    weights = shipped / "teacher.pt"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, out, err = cli("run", str(plugin_dir), *GRID)
    assert code == 2 and "training teacher" not in err and "[1/" not in out
    [line] = err.strip().splitlines()
    assert f"shipped teacher {shipped} is corrupt (CheckpointError: checksum mismatch); restore it (git checkout)" in line
    assert weights.exists() and not cached_files(tmp_path)
    assert cli("run", str(plugin_dir), *GRID, "--dry-run")[::2] == (2, err)  # the dry run stops with the same line


def test_a_missing_teacher_folder_is_one_line_before_training(plugin_dir, cli, tmp_path):
    toml = plugin_dir / "kdbench.toml"
    toml.write_text(toml.read_text().replace("[experiment]\n", "[experiment]\nteachers = \"nowhere\"\n", 1))
    code, _, err = cli("run", str(plugin_dir), *GRID)
    assert code == 2 and err.strip() == f"kdbench: error: experiment.teachers: 'nowhere' is not a folder (looked for {(plugin_dir / 'nowhere').resolve()})"


def test_a_shipped_teachers_hash_comes_from_its_meta_file(plugin_dir, cli, tmp_path, monkeypatch):
    """The driver learns a shipped teacher's identity from its file's hash (checked against
    meta.json), without restoring or evaluating it: that happens once, where a run trains."""
    from kdbench import experiment
    from kdbench.session import Session, SessionSpec
    from kdbench.teachers import TeacherCache

    shipped = ship_teachers(plugin_dir, cli, tmp_path)
    session = Session(SessionSpec((str(plugin_dir),), cache=str(tmp_path / "cache"), device="cpu"))
    cells, _, _ = experiment.expand(plugin_dir, session.registry, grid=["method=soft-kd"], sets=["train.epochs=1"], plugin_dirs=[plugin_dir])
    monkeypatch.setattr(TeacherCache, "restore", lambda *args: pytest.fail("restored to learn its hash"))
    cache = session.teacher_cache(cells[0].teacher_stores)
    assert cache.checksum(cells[0].config["teacher"]) == json.loads((shipped / "meta.json").read_text())["sha256"]


def test_teachers_lists_the_cache_the_downloads_and_the_shipped_teachers(tmp_path, cli, monkeypatch):
    from conftest import THIRD_PARTY_TOML, write_plugin

    def meta(folder, key, model):
        folder.mkdir(parents=True)
        spec = {"model": model, "data": {"name": "synthetic"}, "method": "scratch"}
        (folder / "meta.json").write_text(json.dumps({"key": key, "spec": spec, "trained_metrics": {"top1_best": 91.25}}))

    plugin = write_plugin(tmp_path / "plugins" / "softkd",
                          toml=THIRD_PARTY_TOML.replace("[experiment]\n", '[experiment]\nteachers = "shipped"\n', 1))
    meta(plugin / "shipped" / "aaaa000011112222", "aaaa000011112222", "small-cnn")
    meta(tmp_path / "cache" / "teachers" / "bbbb000011112222", "bbbb000011112222", "mlp")
    (tmp_path / "cache" / "teachers" / "downloads").mkdir()
    (tmp_path / "cache" / "teachers" / "downloads" / f"{'c' * 64}.pt").write_bytes(b"weights")
    code, out, _ = cli("teachers", "--cache", str(tmp_path / "cache"), "--plugin", str(tmp_path / "plugins"))
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "key" not in line}
    assert code == 0 and sorted(rows) == ["aaaa000011112222", "bbbb000011112222", "c" * 16]
    assert "shipped" in rows["aaaa000011112222"] and "small-cnn" in rows["aaaa000011112222"] and "top1_best=91.25" in rows["aaaa000011112222"]
    assert "| cache " in rows["bbbb000011112222"] and "downloaded" in rows["c" * 16]
    monkeypatch.chdir(tmp_path)  # by default, the teachers the plugin folders in ./plugins ship
    code, out, _ = cli("teachers", "--cache", str(tmp_path / "cache"))
    assert code == 0 and "aaaa000011112222" in out and "shipped (plugins/softkd/shipped)" in out
