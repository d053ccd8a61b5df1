import os

import numpy as np
import pytest
import torch

from kdbench.config import DataConfig
from kdbench.data import DATASETS, DataBundle, RawData
from kdbench.data import sources
from kdbench.errors import ConfigError, DatasetMissing


def indexed_raw(n_train=1000, n_test=300, channels=1, size=4):
    """Images that encode their own index (pixel 0 = index % 256, pixel 1 = index // 256)."""

    def images(n):
        x = torch.zeros(n, channels, size, size, dtype=torch.uint8)
        idx = torch.arange(n)
        x[:, 0, 0, 0] = (idx % 256).to(torch.uint8)
        x[:, 0, 0, 1] = (idx // 256).to(torch.uint8)
        return x

    return RawData(
        name="indexed",
        train_x=images(n_train), train_y=torch.arange(n_train) % 10,
        test_x=images(n_test), test_y=torch.arange(n_test) % 10,
        num_classes=10, mean=(0.5,) * channels, std=(0.25,) * channels,
    )


def indices(x):
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


def build(raw=None, **cfg):
    return DataBundle.build(raw or indexed_raw(), DataConfig(**{"val_size": 100, **cfg}), "cpu")


def test_splits_are_disjoint_and_sized():
    bundle = build(train_subset=500, test_subset=200)
    train, val, test = (indices(bundle.splits[s][0]) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (500, 100, 200)
    assert not set(train) & set(val)
    assert len(set(train)) == 500 and len(set(test)) == 200
    assert bundle.info == {"num_classes": 10, "in_channels": 1, "image_size": 4, "train_size": 500}
    # labels travel with their images
    assert bundle.splits["train"][1].tolist() == [i % 10 for i in train]


def test_all_remaining_images_train_when_no_subset():
    bundle = build()
    train, val = indices(bundle.splits["train"][0]), indices(bundle.splits["val"][0])
    assert sorted(train + val) == list(range(1000))
    assert indices(bundle.splits["test"][0]) == list(range(300))


def test_splits_depend_on_split_seed_only():
    torch.manual_seed(1)
    a = build(train_subset=300)
    torch.manual_seed(2)
    b = build(train_subset=300)
    c = build(train_subset=300, split_seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(a.splits[split][0], b.splits[split][0])
    assert not torch.equal(a.splits["val"][0], c.splits["val"][0])


def test_small_subset_is_prefix_of_larger():
    small, large = build(train_subset=200, test_subset=50), build(train_subset=600, test_subset=150)
    assert indices(large.splits["train"][0])[:200] == indices(small.splits["train"][0])
    assert indices(large.splits["test"][0])[:50] == indices(small.splits["test"][0])
    assert torch.equal(small.splits["val"][0], large.splits["val"][0])


@pytest.mark.parametrize(
    "cfg",
    [{"val_size": 1000}, {"val_size": -1}, {"train_subset": 901}, {"test_subset": 301}, {"normalize": "zscore"},
     {"augment": ["rotate"]}],
)
def test_bad_config_is_a_config_error(cfg):
    with pytest.raises(ConfigError):
        build(**cfg)


def test_unknown_augment_lists_valid_ones():
    with pytest.raises(ConfigError, match="crop, hflip, vflip"):
        build(augment=["crop", "jitter"])


def test_normalizations():
    raw = indexed_raw()
    raw.train_x[:, 0] = 51  # 0.2 in [0, 1] units
    expected = {"standard": (0.2 - 0.5) / 0.25, "symmetric": 51 / 127.5 - 1, "unit": 0.2}
    for mode, value in expected.items():
        bundle = build(raw, normalize=mode)
        x, _ = bundle.tensors("train")
        assert x.dtype == torch.float32
        assert torch.allclose(x, torch.full_like(x, value), atol=1e-6)
        assert torch.allclose(bundle.denormalize(x), torch.full_like(x, 0.2), atol=1e-6)


def test_standard_normalization_per_channel():
    raw = indexed_raw(channels=3)
    raw.mean, raw.std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    raw.train_x[:] = 255
    x, _ = build(raw).tensors("train")
    expected = torch.tensor([(1 - 0.1) / 0.5, (1 - 0.2) / 0.25, (1 - 0.3) / 0.125])
    assert torch.allclose(x[:, :, 2, 2], expected.expand(len(x), 3))


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_split_once_with_last_partial_batch(shuffle):
    bundle = build(train_subset=250)
    seen, sizes = [], []
    gen = torch.Generator().manual_seed(0)
    for x, y in bundle.batches("train", 64, shuffle=shuffle, generator=gen):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        sizes.append(len(y))
        seen += indices(bundle.denormalize(x).mul(255).round().to(torch.uint8))
    assert sizes == [64, 64, 64, 58]
    assert sorted(seen) == sorted(indices(bundle.splits["train"][0]))
    assert (seen == indices(bundle.splits["train"][0])) != shuffle


def test_shuffle_is_reproducible_with_generator():
    bundle = build(train_subset=250)

    def order(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in bundle.batches("train", 32, shuffle=True, augment=True, generator=gen)])

    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))


def augment_bundle(ops):
    raw = DATASETS["synthetic"](DataConfig())
    return DataBundle.build(raw, DataConfig(val_size=0, train_subset=256, augment=ops), "cpu")


@pytest.mark.parametrize("op", ["crop", "hflip", "vflip"])
def test_augment_changes_images_keeps_shape_and_labels(op):
    bundle = augment_bundle([op])
    gen = torch.Generator().manual_seed(0)
    (plain, y_plain), = bundle.batches("train", 256)
    (aug, y_aug), = bundle.batches("train", 256, augment=True, generator=gen)
    assert aug.shape == plain.shape and torch.equal(y_aug, y_plain)
    changed = (aug != plain).flatten(1).any(1).float().mean().item()
    assert 0.2 < changed < 1.0  # per-sample randomness: some images change, some stay (flip p=1/2, 1/81 crops identity)


def test_flips_are_flips_and_crop_pads_with_black():
    x = torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4)
    bundle = augment_bundle([])
    gen = torch.Generator().manual_seed(0)
    for op, dim in (("hflip", 3), ("vflip", 2)):
        bundle.cfg.augment = [op]
        out = bundle.augment(x.repeat(32, 1, 1, 1), gen)
        for img, src in zip(out, x.repeat(32, 1, 1, 1)):
            assert torch.equal(img, src) or torch.equal(img, src.flip(dim - 1))
    bundle.cfg.augment, bundle.cfg.crop_padding = ["crop"], 2
    out = bundle.augment(torch.full((64, 1, 4, 4), 255, dtype=torch.uint8), gen)
    assert out.shape == (64, 1, 4, 4)
    assert set(out.unique().tolist()) == {0, 255}


def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.mark.skipif(
    not os.path.isdir(sources.FASHION_MNIST_DEBIAN),
    reason=f"{sources.FASHION_MNIST_DEBIAN} missing: apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist_from_debian_package(tmp_path):
    raw = DATASETS["fashion-mnist"](DataConfig(name="fashion-mnist", root=str(tmp_path)))
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    assert raw.train_y.bincount().tolist() == [6000] * 10
    assert raw.num_classes == 10 and raw.mean == (0.2860,) and raw.std == (0.3530,)
    assert abs(raw.train_x.float().mean().item() / 255 - 0.2860) < 1e-3


def test_fashion_mnist_from_torchvision_root(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN", str(tmp_path / "no-debian"))
    raw_dir = tmp_path / "FashionMNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for prefix, n in (("train", 20), ("t10k", 5)):
        write_idx(raw_dir / f"{prefix}-images-idx3-ubyte", np.full((n, 28, 28), 7))
        write_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    raw = DATASETS["fashion-mnist"](DataConfig(root=str(tmp_path)))
    assert raw.train_x.shape == (20, 1, 28, 28) and raw.test_y.tolist() == [0, 1, 2, 3, 4]
    assert raw.train_x.dtype == torch.uint8 and int(raw.train_x.max()) == 7


def test_read_idx_gzipped(tmp_path):
    import gzip

    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.arange(24).reshape(2, 3, 4))
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(path.read_bytes()))
    assert sources.read_idx(tmp_path / "x-idx3-ubyte.gz").tolist() == np.arange(24).reshape(2, 3, 4).tolist()


def test_missing_fashion_mnist_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN", str(tmp_path / "no-debian"))
    with pytest.raises(DatasetMissing) as err:
        DATASETS["fashion-mnist"](DataConfig(root=str(tmp_path / "empty")))
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_missing_torchvision_dataset_says_how_to_get_it(name, tmp_path):
    with pytest.raises(DatasetMissing, match="data.download=true") as err:
        DATASETS[name](DataConfig(root=str(tmp_path)))
    assert "\n" not in str(err.value)


def test_digits():
    raw = DATASETS["digits"](DataConfig(name="digits"))
    assert raw.train_x.shape == (1437, 1, 8, 8) and raw.test_x.shape == (360, 1, 8, 8)
    assert raw.train_x.dtype == torch.uint8 and int(raw.train_x.max()) == 255
    assert raw.num_classes == 10 and len(raw.mean) == 1
    again = DATASETS["digits"](DataConfig(name="digits"))
    assert torch.equal(raw.train_x, again.train_x) and torch.equal(raw.test_y, again.test_y)


def test_synthetic_shapes_and_determinism():
    raw = DATASETS["synthetic"](DataConfig())
    assert raw.train_x.shape == (4000, 1, 16, 16) and raw.test_x.shape == (1000, 1, 16, 16)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    assert sorted(raw.train_y.unique().tolist()) == list(range(10))
    torch.manual_seed(123)
    again = DATASETS["synthetic"](DataConfig())
    other = DATASETS["synthetic"](DataConfig(split_seed=1))
    assert torch.equal(raw.train_x, again.train_x) and torch.equal(raw.test_y, again.test_y)
    assert not torch.equal(raw.train_x, other.train_x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
def test_batches_on_cuda(gen_device):
    raw = DATASETS["synthetic"](DataConfig())
    bundle = DataBundle.build(raw, DataConfig(val_size=100, augment=["crop", "hflip", "vflip"]), "cuda")
    gen = torch.Generator(device=gen_device).manual_seed(0)
    ys = [y for x, y in bundle.batches("train", 512, shuffle=True, augment=True, generator=gen)]
    assert all(y.is_cuda for y in ys)
    assert sorted(torch.cat(ys).tolist()) == sorted(bundle.splits["train"][1].tolist())
