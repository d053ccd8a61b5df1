"""Tiny CIFAR-10, CIFAR-100 and MNIST copies written in the exact on-disk formats torchvision
reads (the pickles of ``cifar-10-batches-py`` and ``cifar-100-python``, MNIST's IDX files under
``MNIST/raw``), and the archives that ``data.download=true`` fetches.

torchvision checks a real copy against md5 sums it has built in. A fixture copy satisfies the same
checks the same way: ``checksums`` computes the md5 of each fixture file, and the test points the
dataset class's checksum attributes at them with monkeypatch (the checks themselves stay on).
"""
import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def labels(n, num_classes, seed):
    """Every class present (when n allows), in a shuffled order."""
    return np.random.default_rng(seed).permutation(np.arange(n) % num_classes).tolist()


def cifar_rows(n, seed):
    """n images as CIFAR stores them: uint8 rows of 3072 values, the R plane, then G, then B."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real files are Python 2 pickles


def write_cifar10(root, per_batch=20, n_test=20, seed=0):
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta."""
    folder = Path(root) / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    parts = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    for i, (name, n) in enumerate(parts):
        write_pickle(folder / name, {
            "batch_label": f"{name} of 6", "labels": labels(n, 10, seed + i), "data": cifar_rows(n, seed + i),
            "filenames": [f"img_{i}_{j}.png" for j in range(n)],
        })
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_pickle(folder / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072})
    return folder


def write_cifar100(root, n_train=200, n_test=100, seed=0):
    """``root/cifar-100-python`` with train, test and meta; the coarse labels differ from the fine."""
    folder = Path(root) / CIFAR100_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, n) in enumerate((("train", n_train), ("test", n_test))):
        fine = labels(n, 100, seed + i)
        write_pickle(folder / name, {
            "filenames": [f"img_{j}.png" for j in range(n)], "batch_label": f"{name} batch 1 of 1",
            "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": cifar_rows(n, seed + i),
        })
    write_pickle(folder / "meta", {"fine_label_names": [f"fine{i:02d}" for i in range(100)],
                                   "coarse_label_names": [f"coarse{i:02d}" for i in range(20)]})
    return folder


def idx_bytes(array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def mnist_arrays(n_train=100, n_test=50, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array(labels(n_train, 10, seed), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array(labels(n_test, 10, seed + 1), dtype=np.uint8),
    }


def write_mnist(root, n_train=100, n_test=50, seed=0):
    """``root/MNIST/raw`` with the four uncompressed IDX files torchvision reads."""
    folder = Path(root) / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in mnist_arrays(n_train, n_test, seed).items():
        (folder / name).write_bytes(idx_bytes(array))
    return folder


def checksums(folder, kind):
    """The md5 attributes of torchvision's CIFAR10/CIFAR100 class, for the files in ``folder``."""
    train, test, meta = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta"),
                         "cifar100": (["train"], "test", "meta")}[kind]
    return {
        "train_list": [[name, md5(folder / name)] for name in train],
        "test_list": [[test, md5(folder / test)]],
        "meta": {"filename": meta, "key": "label_names" if kind == "cifar10" else "fine_label_names", "md5": md5(folder / meta)},
    }


def install_cifar(monkeypatch, root, kind, **sizes):
    """Write a fixture CIFAR-10/100 under ``root`` and point torchvision's checks at its files."""
    from torchvision import datasets

    folder = (write_cifar10 if kind == "cifar10" else write_cifar100)(root, **sizes)
    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    for attr, value in checksums(folder, kind).items():
        monkeypatch.setattr(cls, attr, value)
    return folder


def cifar_archive(folder, path):
    """The .tar.gz torchvision downloads: the dataset folder at the archive's top level."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=Path(folder).name)
    return md5(path)


def mnist_archives(out, n_train=100, n_test=50, seed=0):
    """The four .gz files of MNIST's mirrors in ``out``; returns torchvision's ``resources`` for them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resources = []
    for name, array in mnist_arrays(n_train, n_test, seed).items():
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as f:
            f.write(idx_bytes(array))
        (out / f"{name}.gz").write_bytes(buffer.getvalue())
        resources.append((f"{name}.gz", md5(out / f"{name}.gz")))
    return resources
