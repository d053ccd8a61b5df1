"""Teachers by URL: downloaded once into the cache, verified against their SHA-256 before use,
loaded with weights_only=True; a wrong hash, a dying server or no network stop before training
and keep nothing. Served from a local HTTP server on 127.0.0.1."""
import hashlib
import http.server
import json
import socket
import threading

import pytest
import torch

from kdbench.zoo import MODELS

GRID = ("--grid", "method=soft-kd", "--seeds", "0", "--set", "train.epochs=1")


class Evil:  # weights_only=True refuses arbitrary pickled objects
    pass


@pytest.fixture
def server():
    """Serves ``files`` (name -> bytes); names starting with "dies" send half and hang up."""
    files, requests = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.lstrip("/")
            requests.append(name)
            if name not in files:
                self.send_error(404)
                return
            body = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if name.startswith("dies") else body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.files, httpd.requests = files, requests
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def checkpoint_bytes(obj, tmp_path):
    path = tmp_path / "served.pt"
    torch.save(obj, path)
    return path.read_bytes()


def small_cnn():
    return MODELS["small-cnn"](num_classes=10, in_channels=1, image_size=16, c1=8, c2=16, hidden=32)


def downloads(tmp_path):
    folder = tmp_path / "cache" / "teachers" / "downloads"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def test_teacher_by_url_is_downloaded_once_verified_used_and_recorded(plugin_dir, cli, server, tmp_path):
    model = small_cnn()
    body = checkpoint_bytes(model.state_dict(), tmp_path)
    sha = hashlib.sha256(body).hexdigest()
    server.files["teacher.pt"] = body
    url = server.url + "teacher.pt"
    code, _, err = cli("run", str(plugin_dir), *GRID, "--teacher", f"{url}#sha256={sha}")
    assert code == 0, err
    assert f"downloading teacher {url}" in err and "training teacher" not in err
    assert downloads(tmp_path) == [f"{sha}.pt"]
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("record.json")]
    assert record["teacher"]["url"] == url and record["teacher"]["sha256"] == sha
    assert record["config"]["teacher"]["url"] == url
    assert 0 <= record["teacher"]["metrics"]["top1"] <= 100  # measured like any teacher

    # the same teacher from the experiment file: found in the cache, not downloaded again
    toml = plugin_dir / "kdbench.toml"
    toml.write_text(toml.read_text().replace('[teacher]\n', f'[teacher]\nurl = "{url}"\nsha256 = "{sha}"\n', 1))
    code, _, err = cli("run", str(plugin_dir), *GRID, "--force")
    assert code == 0, err
    assert server.requests == ["teacher.pt"] and "downloading" not in err
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("record.json")]
    assert record["teacher"]["sha256"] == sha


def test_wrong_hash_stops_before_training_and_keeps_nothing(plugin_dir, cli, server, tmp_path):
    server.files["teacher.pt"] = checkpoint_bytes(small_cnn().state_dict(), tmp_path)
    code, out, err = cli("run", str(plugin_dir), *GRID, "--teacher", f"{server.url}teacher.pt#sha256={'0' * 64}")
    assert code == 2
    [line] = [l for l in err.splitlines() if l.startswith("kdbench: error:")]
    assert "has sha256" in line and "0" * 64 in line and "nothing was kept" in line
    assert downloads(tmp_path) == [] and not (tmp_path / "runs").exists()


def test_server_dying_mid_download_or_no_server_keeps_nothing(plugin_dir, cli, server, tmp_path):
    body = checkpoint_bytes(small_cnn().state_dict(), tmp_path)
    server.files["dies.pt"] = body
    sha = hashlib.sha256(body).hexdigest()
    code, _, err = cli("run", str(plugin_dir), *GRID, "--teacher", f"{server.url}dies.pt#sha256={sha}")
    assert code == 2 and f"cannot download teacher {server.url}dies.pt" in err and "nothing was kept" in err
    assert downloads(tmp_path) == [] and not (tmp_path / "runs").exists()

    with socket.socket() as s:  # a port nobody listens on: as when offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/teacher.pt"
    code, _, err = cli("run", str(plugin_dir), *GRID, "--teacher", f"{url}#sha256={sha}")
    [line] = [l for l in err.splitlines() if l.startswith("kdbench: error:")]
    assert code == 2 and f"cannot download teacher {url}" in line


def test_a_download_that_is_no_loadable_checkpoint_stops_the_grid_before_any_arm_trains(plugin_dir, cli, server, tmp_path):
    body = checkpoint_bytes({"model": Evil()}, tmp_path)  # verifies against its hash; weights_only=True refuses it
    server.files["evil.pt"] = body
    code, _, err = cli("run", str(plugin_dir), "--seeds", "0", "--set", "train.epochs=1",
                       "--teacher", f"{server.url}evil.pt#sha256={hashlib.sha256(body).hexdigest()}")
    [line] = [l for l in err.splitlines() if l.startswith("kdbench: error:")]
    assert code == 2 and "is not a readable torch checkpoint" in line
    assert not list((tmp_path / "runs").rglob("record.json"))  # not even scratch, which needs no teacher, trained
    code, _, dry_err = cli("run", str(plugin_dir), "--seeds", "0", "--dry-run",
                           "--teacher", f"{server.url}evil.pt#sha256={hashlib.sha256(body).hexdigest()}")
    assert code == 2 and line in dry_err.splitlines()  # the dry run checks the downloaded file as run does


@pytest.mark.parametrize("args, message", [
    (("--teacher", "http://127.0.0.1:9/t.pt"), "a teacher URL needs its hash"),
    (("--teacher", "http://127.0.0.1:9/t.pt#sha256=abc"), "is not a SHA-256"),
    (("--set", "teacher.url=http://127.0.0.1:9/t.pt"), "needs teacher.sha256"),
    (("--set", f"teacher.sha256={'a' * 64}"), "teacher.url is not"),
    (("--set", "teacher.url=ftp://x/t.pt", "--set", f"teacher.sha256={'a' * 64}"), "is not an http://"),
])
def test_malformed_teacher_urls_are_one_line_errors(plugin_dir, cli, args, message):
    code, _, err = cli("run", str(plugin_dir), *GRID, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
