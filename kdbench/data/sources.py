"""Dataset loaders: ``loader(cfg: DataConfig) -> RawData`` with the full train and test splits as uint8."""
import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdbench.errors import DatasetMissing

# Where the Debian package dataset-fashion-mnist puts its files (tests monkeypatch this).
FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclass
class RawData:
    name: str
    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple  # per channel, in [0, 1] units
    std: tuple
    class_names: list = None


def read_idx(path):
    """An IDX file (the MNIST format), gzipped or not, as a numpy array."""
    path = Path(path)
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(cfg):
    debian = Path(FASHION_MNIST_DEBIAN)
    if (debian / "train-images-idx3-ubyte.gz").exists():
        def part(name):
            return torch.from_numpy(read_idx(debian / f"{name}-ubyte.gz").copy())

        return RawData(
            name="fashion-mnist",
            train_x=part("train-images-idx3").unsqueeze(1),
            train_y=part("train-labels-idx1").long(),
            test_x=part("t10k-images-idx3").unsqueeze(1),
            test_y=part("t10k-labels-idx1").long(),
            num_classes=10, mean=(0.2860,), std=(0.3530,), class_names=FASHION_MNIST_CLASSES,
        )
    from torchvision.datasets import FashionMNIST

    root = os.path.expanduser(cfg.root)
    missing = (
        f"Fashion-MNIST not found in {debian} or {root}/FashionMNIST/raw; install it with "
        "`apt-get install dataset-fashion-mnist`, or pass --set data.download=true (needs internet)"
    )
    return from_torchvision(FashionMNIST, "fashion-mnist", cfg, 10, (0.2860,), (0.3530,), missing)


def load_mnist(cfg):
    from torchvision.datasets import MNIST

    root = os.path.expanduser(cfg.root)
    missing = (
        f"MNIST not found in {root}/MNIST/raw; pass --set data.download=true (needs internet), "
        "or point data.root at a folder that holds it"
    )
    return from_torchvision(MNIST, "mnist", cfg, 10, (0.1307,), (0.3081,), missing)


def load_cifar10(cfg):
    from torchvision.datasets import CIFAR10

    root = os.path.expanduser(cfg.root)
    missing = (
        f"CIFAR-10 not found in {root}/cifar-10-batches-py; pass --set data.download=true (needs internet), "
        "or point data.root at a folder that holds it"
    )
    return from_torchvision(CIFAR10, "cifar10", cfg, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), missing)


def load_cifar100(cfg):
    from torchvision.datasets import CIFAR100  # its targets are the fine labels

    root = os.path.expanduser(cfg.root)
    missing = (
        f"CIFAR-100 not found in {root}/cifar-100-python; pass --set data.download=true (needs internet), "
        "or point data.root at a folder that holds it"
    )
    return from_torchvision(CIFAR100, "cifar100", cfg, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), missing)


def from_torchvision(dataset_class, name, cfg, num_classes, mean, std, missing):
    """Both splits of a torchvision MNIST- or CIFAR-style dataset under cfg.root, as RawData;
    downloaded first when they are not there (or fail torchvision's checks) and cfg.download is set."""
    root = Path(os.path.expanduser(cfg.root))
    try:
        return read_torchvision(dataset_class, name, root, num_classes, mean, std)
    except (RuntimeError, OSError) as err:  # not there, or failing torchvision's integrity checks
        if not cfg.download:
            raise DatasetMissing(missing) from err
    download_torchvision(dataset_class, name, root)
    return read_torchvision(dataset_class, name, root, num_classes, mean, std)


def read_torchvision(dataset_class, name, root, num_classes, mean, std):
    train = dataset_class(str(root), train=True)
    test = dataset_class(str(root), train=False)
    train_y = torch.as_tensor(train.targets, dtype=torch.int64)
    test_y = torch.as_tensor(test.targets, dtype=torch.int64)
    labels = torch.cat([train_y, test_y])
    if len(train.classes) != num_classes or labels.min() < 0 or labels.max() >= num_classes:
        raise DatasetMissing(
            f"{name} in {root} is not the real dataset: {len(train.classes)} class names and labels "
            f"{int(labels.min())}..{int(labels.max())}, expected {num_classes} classes; delete it and download it again"
        )

    def images(data):
        data = torch.as_tensor(data)
        # MNIST-style data is [N, H, W]; CIFAR-style is [N, H, W, C]
        return data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2).contiguous()

    return RawData(
        name=name,
        train_x=images(train.data), train_y=train_y, test_x=images(test.data), test_y=test_y,
        num_classes=num_classes, mean=mean, std=std, class_names=list(train.classes),
    )


def download_torchvision(dataset_class, name, root):
    """Download with torchvision into a temporary folder inside ``root`` and move the dataset's
    folder into place only once both splits passed torchvision's checks (md5 of the archive,
    and for CIFAR of every extracted file). torchvision itself downloads and extracts in place,
    where a broken download or extraction could leave files that a later run would trust."""
    folder = getattr(dataset_class, "base_folder", dataset_class.__name__)  # cifar-10-batches-py, MNIST
    source = getattr(dataset_class, "url", None) or dataset_class.mirrors[0]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".download-{folder}-", dir=root) as tmp:
        try:
            for train in (True, False):
                dataset_class(tmp, train=train, download=True)
        except Exception as err:  # urllib, http.client, a checksum mismatch, a broken archive
            reason = " ".join(str(err).split())[:300] or type(err).__name__
            raise DatasetMissing(
                f"could not download {name} from {source} to {root} ({type(err).__name__}: {reason}); "
                "check the network, or place the files there by hand"
            ) from None
        target = root / folder
        if target.exists():  # an earlier copy that failed the checks: it goes with the temporary folder
            os.replace(target, Path(tmp) / "replaced")
        os.replace(Path(tmp) / folder, target)


def load_digits(cfg):
    """scikit-learn's bundled 8x8 digits; the last 20% (in sklearn's order) is the test split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(digits.target).long()
    n_train = int(0.8 * len(y))
    scaled = x[:n_train].double() / 255
    return RawData(
        name="digits",
        train_x=x[:n_train], train_y=y[:n_train], test_x=x[n_train:], test_y=y[n_train:],
        num_classes=10, mean=(scaled.mean().item(),), std=(scaled.std().item(),),
        class_names=[str(i) for i in range(10)],
    )


def load_synthetic(cfg, num_train=4000, num_test=1000, num_classes=10, size=16):
    """Learnable toy data seeded by cfg.split_seed: each class is a smooth random 1xHxW template;
    an image is its class template at a random contrast plus pixel noise (a small MLP or CNN
    reaches ~93-96% test accuracy in 2-3 epochs of Adam; the noise keeps it short of 100%)."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    coarse = torch.rand(num_classes, 1, size // 4, size // 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def draw(n):
        y = torch.randint(num_classes, (n,), generator=g)
        contrast = 0.4 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
        x = templates[y] * contrast + 0.4 * torch.randn(n, 1, size, size, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    train_x, train_y = draw(num_train)
    test_x, test_y = draw(num_test)
    scaled = train_x.double() / 255
    return RawData(
        name="synthetic",
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        num_classes=num_classes, mean=(scaled.mean().item(),), std=(scaled.std().item(),),
        class_names=[f"class{i}" for i in range(num_classes)],
    )


DATASETS = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "digits": load_digits,
    "synthetic": load_synthetic,
}
