"""The train/val/test splits held on the device as uint8, batched, augmented and normalised there."""
import torch
import torch.nn.functional as F

from kdbench.errors import ConfigError

SPLITS = ("train", "val", "test")
NORMALIZATIONS = ("standard", "symmetric", "unit")
AUGMENTATIONS = ("crop", "hflip", "vflip")


def random_crop(x, padding, generator):
    """Per-sample random crop of uint8 images padded with zeros (black pixels, as torchvision's
    RandomCrop(size, padding) does before normalisation)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy, dx = random_ints(2 * padding + 1, (2, b), generator, x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]


def random_flip(x, dim, generator):
    """Flip each image along ``dim`` with probability 1/2."""
    flip = random_ints(2, (x.shape[0],), generator, x.device).bool().view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(dim), x)


def random_ints(high, shape, generator, device):
    """Random integers drawn on the generator's device (CPU or CUDA), moved to ``device``."""
    rng_device = generator.device if generator is not None else device
    return torch.randint(high, shape, generator=generator, device=rng_device).to(device)


def check_sizes(raw, cfg, train_subset=None):
    """The split sizes of ``cfg`` fit the dataset ``raw`` (a one-line ConfigError otherwise)."""
    train_subset = cfg.train_subset if train_subset is None else train_subset
    n_train, n_test = len(raw.train_y), len(raw.test_y)
    if not 0 <= cfg.val_size < n_train:
        raise ConfigError(
            f"data.val_size={cfg.val_size} must be >= 0 and leave training images of the {n_train} "
            f"in {raw.name!r}; set --set data.val_size=N"
        )
    if not 0 <= train_subset <= n_train - cfg.val_size:
        raise ConfigError(
            f"data.train_subset={train_subset} exceeds the {n_train - cfg.val_size} training images of "
            f"{raw.name!r} left after data.val_size={cfg.val_size} (0: all of them)"
        )
    if not 0 <= cfg.test_subset <= n_test:
        raise ConfigError(f"data.test_subset={cfg.test_subset} exceeds the {n_test} test images of {raw.name!r}")


class DataBundle:
    """The splits of one dataset on one device.

    ``splits`` maps "train"/"val"/"test" to (uint8 images [N, C, H, W], int64 labels [N]).

    What a method may use (``ctx.data``); the rest is the engine's:

        info                  {"num_classes", "in_channels", "image_size", "train_size"}
        size(split)           the number of samples of "train", "val" or "test"
        batches(split, batch_size, shuffle=False, augment=False, generator=None, indices=False)
                              normalised (images, labels[, indices]) batches over a split once;
                              evaluation passes use the defaults. Training batches come from the
                              engine (train_step's argument, ctx.next_batch()), never from here:
                              they are the same for every arm of a seed
        tensors(split)        (normalised images, labels) of a whole split
        normalize(x), denormalize(x)
                              uint8 images -> the configured normalisation; normalised -> [0, 1]
        num_classes, name     as in info; the dataset's registered name
    """

    def __init__(self, name, splits, num_classes, mean, std, cfg, device):
        self.name = name
        self.splits = splits
        self.num_classes = num_classes
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.cfg = cfg
        self.device = torch.device(device)
        channels = splits["train"][0].shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ConfigError(f"dataset {name!r} has {channels} channels but mean/std {self.mean}/{self.std}")
        # normalised = uint8 * scale + shift, per channel
        if cfg.normalize == "standard":
            scale = [1 / (255 * s) for s in self.std]
            shift = [-m / s for m, s in zip(self.mean, self.std)]
        elif cfg.normalize == "symmetric":
            scale, shift = [1 / 127.5] * channels, [-1.0] * channels
        elif cfg.normalize == "unit":
            scale, shift = [1 / 255] * channels, [0.0] * channels
        else:
            raise ConfigError(f"unknown data.normalize {cfg.normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
        self.scale = torch.tensor(scale, device=self.device).view(1, channels, 1, 1)
        self.shift = torch.tensor(shift, device=self.device).view(1, channels, 1, 1)
        unknown = [op for op in cfg.augment if op not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"unknown data.augment {unknown[0]!r}; valid: {', '.join(AUGMENTATIONS)}")
        if cfg.crop_padding < 0:
            raise ConfigError(f"data.crop_padding must be >= 0, got {cfg.crop_padding}")

    @classmethod
    def build(cls, raw, cfg, device, train_subset=None):
        """Carve validation and subsets from ``raw`` (seeded by cfg.split_seed only) onto ``device``.

        ``train_subset`` overrides ``cfg.train_subset`` when given (0: all that remains after validation).
        """
        train_subset = cfg.train_subset if train_subset is None else train_subset
        check_sizes(raw, cfg, train_subset)
        n_train, n_test = len(raw.train_y), len(raw.test_y)

        # One permutation per split, so a smaller subset is a prefix of a larger one.
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.split_seed))
        val_idx = order[: cfg.val_size]
        train_idx = order[cfg.val_size:]
        if train_subset:
            train_idx = train_idx[:train_subset]
        if cfg.test_subset:
            test_order = torch.randperm(n_test, generator=torch.Generator().manual_seed(cfg.split_seed))
            test_idx = test_order[: cfg.test_subset]
        else:
            test_idx = torch.arange(n_test)

        def take(x, y, idx):
            return x[idx].to(device, torch.uint8), y[idx].to(device, torch.int64)

        splits = {
            "train": take(raw.train_x, raw.train_y, train_idx),
            "val": take(raw.train_x, raw.train_y, val_idx),
            "test": take(raw.test_x, raw.test_y, test_idx),
        }
        return cls(raw.name, splits, raw.num_classes, raw.mean, raw.std, cfg, device)

    @property
    def info(self):
        x = self.splits["train"][0]
        return {
            "num_classes": self.num_classes,
            "in_channels": x.shape[1],
            "image_size": x.shape[2],
            "train_size": x.shape[0],
        }

    def size(self, split):
        return len(self.split(split)[1])

    def split(self, split):
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return self.splits[split]

    def normalize(self, x):
        """uint8 images -> float32 in the configured normalisation."""
        return x.float() * self.scale + self.shift

    def denormalize(self, x):
        """Normalised images -> float images in [0, 1] (for saving sample grids)."""
        return ((x - self.shift) / (self.scale * 255)).clamp(0, 1)

    def augment(self, x, generator=None):
        """Apply cfg.augment in order to a uint8 batch, each image drawing its own randomness."""
        for op in self.cfg.augment:
            if op == "crop":
                x = random_crop(x, self.cfg.crop_padding, generator)
            elif op == "hflip":
                x = random_flip(x, 3, generator)
            elif op == "vflip":
                x = random_flip(x, 2, generator)
        return x

    def batches(self, split, batch_size, shuffle=False, augment=False, generator=None, indices=False):
        """Iterate (x float32 normalised, y int64) on the device over the whole split once, the last
        partial batch included. ``generator`` (CPU or on the data's device) drives shuffle and augment.
        ``indices``: yield (x, y, i) instead, i (int64) the samples' positions in the split, in
        0 .. size(split) - 1; the order and the random draws are the same either way."""
        x, y = self.split(split)
        n = len(y)
        if shuffle:
            rng_device = generator.device if generator is not None else self.device
            order = torch.randperm(n, generator=generator, device=rng_device).to(self.device)
        for start in range(0, n, batch_size):
            idx = order[start: start + batch_size] if shuffle else slice(start, start + batch_size)
            xb, yb = x[idx], y[idx]
            if augment:
                xb = self.augment(xb, generator)
            if not indices:
                yield self.normalize(xb), yb
            else:
                yield self.normalize(xb), yb, idx if shuffle else torch.arange(start, start + len(yb), device=self.device)

    def tensors(self, split):
        """(x float32 normalised, y) for a whole split."""
        x, y = self.split(split)
        return self.normalize(x), y
