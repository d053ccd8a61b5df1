"""The CIFAR-10, CIFAR-100 and MNIST loaders on files in the exact formats torchvision reads
(tests/datasets_on_disk.py), with torchvision's integrity checks on, and ``data.download=true``
against a local HTTP server: a good archive, a corrupt one, one cut off mid-file, and no server."""
import http.server
import socket
import threading

import pytest
import torch
from torchvision import datasets

import datasets_on_disk as disk
from kdbench.config import DataConfig
from kdbench.data import DATASETS, DataBundle
from kdbench.errors import DatasetMissing

PUBLISHED = {  # per-channel mean and std of the training images, and the class counts
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100),
    "mnist": ((0.1307,), (0.3081,), 10),
}


def load(name, root, download=False):
    return DATASETS[name](DataConfig(name=name, root=str(root), download=download))


def unpickle(path):
    import pickle

    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


# ------------------------------------------------------------------------------------------------
# Reading copies that are already on disk


def test_cifar10_reads_all_five_batches_in_channel_planes(monkeypatch, tmp_path):
    folder = disk.install_cifar(monkeypatch, tmp_path, "cifar10", per_batch=20, n_test=30)
    raw = load("cifar10", tmp_path)
    assert raw.train_x.shape == (100, 3, 32, 32) and raw.test_x.shape == (30, 3, 32, 32)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    batch3 = unpickle(folder / "data_batch_3")
    # the third batch's first image, its 3072 bytes as R, G, B planes of 32 x 32
    assert torch.equal(raw.train_x[40], torch.from_numpy(batch3["data"][0].reshape(3, 32, 32)))
    assert raw.train_y[40:60].tolist() == batch3["labels"]
    assert raw.test_y.tolist() == unpickle(folder / "test_batch")["labels"]
    assert raw.class_names[:2] == ["airplane", "automobile"]


def test_cifar100_uses_the_fine_labels(monkeypatch, tmp_path):
    folder = disk.install_cifar(monkeypatch, tmp_path, "cifar100", n_train=200, n_test=100)
    raw = load("cifar100", tmp_path)
    train = unpickle(folder / "train")
    assert raw.train_x.shape == (200, 3, 32, 32) and raw.test_x.shape == (100, 3, 32, 32)
    assert raw.train_y.tolist() == train["fine_labels"] != train["coarse_labels"]
    assert sorted(set(raw.train_y.tolist())) == list(range(100))
    assert len(raw.class_names) == 100


def test_mnist_reads_the_idx_files_under_mnist_raw(tmp_path):
    disk.write_mnist(tmp_path, n_train=100, n_test=50)
    raw = load("mnist", tmp_path)
    arrays = disk.mnist_arrays(100, 50)
    assert raw.train_x.shape == (100, 1, 28, 28) and raw.test_x.shape == (50, 1, 28, 28)
    assert torch.equal(raw.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert raw.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist"])
def test_normalisation_constants_and_class_counts(name, monkeypatch, tmp_path):
    if name == "mnist":
        disk.write_mnist(tmp_path)
    else:
        disk.install_cifar(monkeypatch, tmp_path, name)
    raw = load(name, tmp_path)
    mean, std, classes = PUBLISHED[name]
    assert (raw.mean, raw.std, raw.num_classes) == (mean, std, classes)
    # the bundle standardises with them: a pixel at the mean is 0, one std above it is 1
    bundle = DataBundle.build(raw, DataConfig(val_size=10), "cpu")
    pixels = torch.tensor([[m * 255 for m in mean], [(m + s) * 255 for m, s in zip(mean, std)]])
    out = bundle.normalize(pixels.T.reshape(1, len(mean), 1, 2)).reshape(len(mean), 2)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0]] * len(mean)), atol=1e-5)
    assert bundle.info["num_classes"] == classes


def test_a_cifar_file_that_fails_its_checksum_is_missing_not_trusted(monkeypatch, tmp_path):
    folder = disk.install_cifar(monkeypatch, tmp_path, "cifar10")
    data = bytearray((folder / "data_batch_3").read_bytes())
    data[-100] ^= 0xFF
    (folder / "data_batch_3").write_bytes(bytes(data))
    with pytest.raises(DatasetMissing, match="CIFAR-10 not found") as err:
        load("cifar10", tmp_path)
    assert "\n" not in str(err.value)


def test_a_copy_with_the_wrong_class_count_is_rejected(monkeypatch, tmp_path):
    folder = disk.install_cifar(monkeypatch, tmp_path, "cifar100")
    disk.write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(20)], "coarse_label_names": []})
    monkeypatch.setattr(datasets.CIFAR100, "meta", disk.checksums(folder, "cifar100")["meta"])
    with pytest.raises(DatasetMissing, match="expected 100 classes"):
        load("cifar100", tmp_path)


# ------------------------------------------------------------------------------------------------
# data.download=true against a local HTTP server


class Server:
    """Serves ``files`` (name -> bytes) under /good/, /corrupt/ (one byte flipped) and /cut/ (the
    full Content-Length announced, half the bytes sent, then the connection closed)."""

    def __init__(self):
        self.files = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mode, _, name = self.path.lstrip("/").partition("/")
                if name not in server.files:
                    self.send_error(404)
                    return
                data = bytearray(server.files[name])
                if mode == "corrupt":
                    data[len(data) // 2] ^= 0xFF
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(bytes(data[: len(data) // 2] if mode == "cut" else data))
                except OSError:  # the client may hang up first
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def serve(name, server, monkeypatch, tmp_path, mode, base_url=None):
    """Put the fixture archive(s) of ``name`` on the server and point torchvision at ``mode``."""
    base = f"{base_url or server.url}/{mode}/"
    if name == "mnist":
        resources = disk.mnist_archives(tmp_path / "mirror")
        server.files = {f: (tmp_path / "mirror" / f).read_bytes() for f, _ in resources}
        monkeypatch.setattr(datasets.MNIST, "mirrors", [base])
        monkeypatch.setattr(datasets.MNIST, "resources", resources)
        return
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = disk.install_cifar(monkeypatch, tmp_path / "source", name)
    archive = tmp_path / cls.filename
    monkeypatch.setattr(cls, "tgz_md5", disk.cifar_archive(folder, archive))
    monkeypatch.setattr(cls, "url", base + cls.filename)
    server.files = {cls.filename: archive.read_bytes()}


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist"])
def test_download_extracts_verifies_and_is_not_repeated(name, server, monkeypatch, tmp_path):
    serve(name, server, monkeypatch, tmp_path, "good")
    root = tmp_path / "data"
    raw = load(name, root, download=True)
    assert raw.num_classes == PUBLISHED[name][2] and len(raw.train_y) > 0
    folder = {"cifar10": disk.CIFAR10_FOLDER, "cifar100": disk.CIFAR100_FOLDER, "mnist": "MNIST"}[name]
    assert [p.name for p in root.iterdir()] == [folder]  # in place; the temporary folder is gone
    server.files = {}  # a second run reads the copy on disk, downloads nothing
    again = load(name, root, download=True)
    assert torch.equal(again.train_x, raw.train_x) and torch.equal(again.test_y, raw.test_y)


@pytest.mark.parametrize("mode", ["corrupt", "cut", "offline"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist"])
def test_a_failed_download_is_one_line_and_leaves_nothing_behind(name, mode, server, monkeypatch, tmp_path):
    serve(name, server, monkeypatch, tmp_path, mode, base_url=closed_port_url() if mode == "offline" else None)
    root = tmp_path / "data"
    with pytest.raises(DatasetMissing) as err:
        load(name, root, download=True)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"could not download {name} from http://127.0.0.1:")
    assert list(root.iterdir()) == []  # no archive, no half-extracted folder
    with pytest.raises(DatasetMissing, match="not found"):  # nothing that a later run would trust
        load(name, root)
    # and a later run with a working server downloads it
    monkeypatch.undo()
    serve(name, server, monkeypatch, tmp_path / "retry", "good")
    assert len(load(name, root, download=True).test_y) > 0


def test_a_copy_that_fails_its_checks_is_replaced_by_the_download(server, monkeypatch, tmp_path):
    serve("cifar10", server, monkeypatch, tmp_path, "good")
    root = tmp_path / "data"
    broken = root / disk.CIFAR10_FOLDER
    broken.mkdir(parents=True)
    (broken / "data_batch_1").write_bytes(b"half a file")
    raw = load("cifar10", root, download=True)
    assert raw.train_x.shape == (100, 3, 32, 32)
    assert sorted(p.name for p in root.iterdir()) == [disk.CIFAR10_FOLDER]
    assert (broken / "data_batch_1").stat().st_size > 1000
