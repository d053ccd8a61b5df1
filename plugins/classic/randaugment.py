"""MLKD's strong view: the FixMatch RandAugment of its reference code (Jin-Ying/Multi-Level-Logit-
Distillation at 5ee473f, mdistiller/dataset/cifar100.py: RandAugment(2, 10)) on whole batches on
the device: per image, two operations drawn with replacement from the fourteen below, each at a
magnitude drawn uniformly from its range, then a Cutout square of side U(0, 1/2) of the width.

Each operation follows the PIL function the reference calls, on uint8 values held as floats:
blends truncate as PIL's ImagingBlend does, geometric operations sample the nearest pixel at
PIL's pixel centres (black outside), equalize and autocontrast build PIL's lookup tables per
image and channel. The draws come from a torch.Generator (the method checkpoints its state), not
from Python's ``random`` as in the reference.
"""
import math

import torch
import torch.nn.functional as F

# (name, low, high): the reference's augment_list(), in its order
OPERATIONS = (
    ("autocontrast", 0.0, 1.0),
    ("brightness", 0.05, 0.95),
    ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95),
    ("equalize", 0.0, 1.0),
    ("identity", 0.0, 1.0),
    ("posterize", 4.0, 8.0),
    ("rotate", -30.0, 30.0),
    ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("solarize", 0.0, 256.0),
    ("translate_x", -0.3, 0.3),
    ("translate_y", -0.3, 0.3),
)


def per_image(v):
    return v.view(-1, 1, 1, 1)


def blend(degenerate, x, v):
    """PIL Image.blend(degenerate, x, v) for 0 <= v <= 1: truncated towards zero."""
    return (degenerate + per_image(v) * (x - degenerate)).clamp(0, 255).floor()


def grayscale(x):
    """PIL's convert("L") in its integer arithmetic: (19595 R + 38470 G + 7471 B + 2^15) >> 16 (about
    0.299 R + 0.587 G + 0.114 B, rounded); one channel is its own gray."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([19595, 38470, 7471], device=x.device).view(1, 3, 1, 1)
    return (((x.long() * weights).sum(1, keepdim=True) + 2**15) >> 16).to(x.dtype)


def autocontrast(x, v):
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    scale = 255.0 / (hi - lo).clamp(min=1)
    stretched = ((x - lo) * scale).clamp(0, 255).floor()
    return torch.where(hi > lo, stretched, x)


def brightness(x, v):
    return blend(torch.zeros_like(x), x, v)


def color(x, v):
    return blend(grayscale(x).expand_as(x), x, v)


def contrast(x, v):
    mean = (grayscale(x).mean((1, 2, 3), keepdim=True) + 0.5).floor()
    return blend(mean.expand_as(x), x, v)


def equalize(x, v):
    """PIL ImageOps.equalize per image and channel: lut[i] = (step // 2 + #pixels below i) // step,
    step = (#pixels - #pixels of the brightest value present) // 255; unchanged when step is 0."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, device=x.device, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    brightest = 255 - (hist.flip(1) > 0).long().argmax(1)
    step = (h * w - hist.gather(1, brightest[:, None]).squeeze(1)) // 255
    below = hist.cumsum(1) - hist
    lut = ((step[:, None] // 2 + below) // step.clamp(min=1)[:, None]).clamp(max=255)
    equalized = lut.gather(1, flat).to(x.dtype)
    return torch.where((step > 0)[:, None], equalized, flat.to(x.dtype)).view(n, c, h, w)


def identity(x, v):
    return x


def posterize(x, v):
    bits = v.long().clamp(min=1)
    mask = (255 - (2 ** (8 - bits) - 1)).view(-1, 1, 1, 1)
    return (x.long() & mask).to(x.dtype)


def sharpness(x, v):
    """Blend with PIL's SMOOTH filter (3x3 kernel, centre 5, the rest 1, / 13); borders kept."""
    n, c, h, w = x.shape
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13).expand(c, 1, 3, 3)
    smooth = F.conv2d(x, kernel, groups=c).round()
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return blend(degenerate, x, v)


def solarize(x, v):
    return torch.where(x >= per_image(v), 255 - x, x)


def affine_nearest(x, matrices):
    """PIL Image.transform(size, AFFINE, (a, b, c, d, e, f), NEAREST): output pixel (i, j) takes
    the input at (floor(a X + b Y + c), floor(d X + e Y + f)), X = i + 1/2, Y = j + 1/2; black
    where that falls outside. ``matrices`` (N, 2, 3)."""
    n, c, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float64) + 0.5,
                            torch.arange(w, device=x.device, dtype=torch.float64) + 0.5, indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)]).view(3, -1)  # (3, H*W)
    source = (matrices.double() @ points).floor().long()  # (N, 2, H*W), in double as PIL
    col, row = source[:, 0], source[:, 1]
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    index = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1))[:, None, :].expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, index)
    return torch.where(inside[:, None, :], out, torch.zeros_like(out)).view(n, c, h, w)


def shear_translate(x, v, slot):
    """The reference's ShearX/ShearY/TranslateX/TranslateY: (1, v, 0, 0, 1, 0), (1, 0, 0, v, 1, 0),
    (1, 0, v W, 0, 1, 0), (1, 0, 0, 0, 1, v H)."""
    m = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=x.device, dtype=torch.float64).repeat(len(v), 1, 1)
    scale = {(0, 2): x.shape[3], (1, 2): x.shape[2]}.get(slot, 1)
    m[:, slot[0], slot[1]] = v.double() * scale
    return affine_nearest(x, m)


def rotate(x, v):
    """PIL Image.rotate(v): counter-clockwise by v degrees about (W / 2, H / 2), nearest, black fill."""
    h, w = x.shape[2:]
    a = -v.double() * math.pi / 180
    cos, sin = a.cos(), a.sin()
    cx, cy = w / 2, h / 2
    m = torch.stack([torch.stack([cos, sin, cx - cos * cx - sin * cy], 1),
                     torch.stack([-sin, cos, cy + sin * cx - cos * cy], 1)], 1)
    return affine_nearest(x, m)


FUNCTIONS = {
    "autocontrast": autocontrast, "brightness": brightness, "color": color, "contrast": contrast,
    "equalize": equalize, "identity": identity, "posterize": posterize, "rotate": rotate,
    "sharpness": sharpness, "solarize": solarize,
    "shear_x": lambda x, v: shear_translate(x, v, (0, 1)), "shear_y": lambda x, v: shear_translate(x, v, (1, 0)),
    "translate_x": lambda x, v: shear_translate(x, v, (0, 2)), "translate_y": lambda x, v: shear_translate(x, v, (1, 2)),
}


def cutout(x, side, corner, fill):
    """The reference's Cutout(v): a square of side v W (v = side in [0, 1/2]) at a uniform centre,
    clipped to the image, filled with ``fill`` (per channel); none when v is 0."""
    n, c, h, w = x.shape
    size = side * w
    x0 = (corner[:, 0] * w - size / 2).clamp(min=0).floor()
    y0 = (corner[:, 1] * h - size / 2).clamp(min=0).floor()
    x1, y1 = (x0 + size).clamp(max=w), (y0 + size).clamp(max=h)
    cols = torch.arange(w, device=x.device, dtype=x.dtype)
    rows = torch.arange(h, device=x.device, dtype=x.dtype)
    inside_x = (cols >= x0[:, None]) & (cols <= x1[:, None])
    inside_y = (rows >= y0[:, None]) & (rows <= y1[:, None])
    box = (inside_y[:, :, None] & inside_x[:, None, :] & (size > 0)[:, None, None])[:, None]
    return torch.where(box, fill.view(1, c, 1, 1).to(x.dtype), x)


def rand_augment(images, generator, fill, n_ops=2):
    """The strong view of a uint8 batch (N, C, H, W): n_ops random operations per image, then
    Cutout filled with ``fill`` (C values in 0-255). Draws come from ``generator`` (on the CPU)."""
    n = images.shape[0]
    choice = torch.randint(len(OPERATIONS), (n, n_ops), generator=generator).to(images.device)
    level = torch.rand((n, n_ops), generator=generator, dtype=torch.float64).to(images.device)
    side = torch.rand(n, generator=generator, dtype=torch.float64).to(images.device) * 0.5
    corner = torch.rand((n, 2), generator=generator, dtype=torch.float64).to(images.device)
    x = images.float()
    for slot in range(n_ops):
        for index, (name, low, high) in enumerate(OPERATIONS):
            chosen = choice[:, slot] == index
            if chosen.any():
                value = (low + (high - low) * level[chosen, slot]).float()
                x[chosen] = FUNCTIONS[name](x[chosen], value)
    x = cutout(x, side.float(), corner.float(), torch.as_tensor(fill, device=x.device))
    return x.to(torch.uint8)
