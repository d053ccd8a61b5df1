"""What each plugin's paper profile costs on this machine: ``run --profile paper --dry-run`` for
hinton, akd, gankd and vkd, and for plugins/classic's six CIFAR-100 pairs (``classic:PROFILE``),
on full-size stand-ins for CIFAR-10, CIFAR-100 and MNIST (the real on-disk formats and split
sizes, random pixels: a step costs the same on any pixels), so the estimate needs no download.
torchvision's checksums are pointed at the stand-in files in this process only, as the tests do.

    python benchmarks/paper_costs.py [--device cpu|cuda|auto] [--only hinton,classic:paper-vgg13-vgg8] [--grid method=scratch,kd]

Nothing is trained into a cache and no records are written; the data goes to a temporary folder.
"""
import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's kdbench, whatever is installed

# what to estimate: plugin or plugin:profile (default profile "paper") -> the dataset it needs
PLUGINS = {"hinton": "cifar10", "akd": "cifar100", "gankd": "mnist", "vkd": "cifar100"}
PLUGINS |= {f"classic:paper-{pair}": "cifar100" for pair in (
    "resnet32x4-resnet8x4", "wrn-40-2-wrn-40-1", "vgg13-vgg8", "resnet56-resnet20", "resnet32x4-shufflenetv2", "vgg13-mobilenetv2")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--only", default=",".join(PLUGINS), help="comma-separated plugins (or plugin:profile)")
    parser.add_argument("--grid", action="append", default=[], help="passed to run (e.g. method=scratch,kd)")
    args = parser.parse_args()

    import pytest
    import datasets_on_disk as disk
    from kdbench.cli import main as kdbench

    with tempfile.TemporaryDirectory(prefix="kdbench-paper-costs-") as tmp, pytest.MonkeyPatch.context() as patch:
        root = Path(tmp) / "data"
        disk.install_cifar(patch, root, "cifar10", per_batch=10_000, n_test=10_000)
        disk.install_cifar(patch, root, "cifar100", n_train=50_000, n_test=10_000)
        disk.write_mnist(root, n_train=60_000, n_test=10_000)
        for target in args.only.split(","):
            plugin, _, profile = target.partition(":")
            profile = profile or "paper"
            print(f"\n== {plugin} ({profile} profile, {PLUGINS[target]}) ==", flush=True)
            grid = [arg for g in args.grid for arg in ("--grid", g)]
            code = kdbench(["run", str(REPO / "plugins" / plugin), "--profile", profile, "--dry-run", "--device", args.device, *grid,
                            "--set", f"data.root={root}", "--out", f"{tmp}/runs", "--cache", f"{tmp}/cache"])
            if code:
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
