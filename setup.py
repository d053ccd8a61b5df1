"""Install kdbench and build its fused-loss extension (kdbench_ext) when sources are present."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
CSRC = HERE / "kdbench_ext" / "csrc"


def extension_build():
    """Return (ext_modules, cmdclass) for the compiled loss op; empty while there are no sources."""
    sources = sorted(str(p.relative_to(HERE)) for p in CSRC.glob("*.cpp"))
    if not sources:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext = CppExtension("kdbench_ext._C", sources, extra_compile_args=["-O3"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_build()

setup(
    name="kdbench",
    version="0.1.0",
    description="A plugin-based benchmark harness for knowledge distillation",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["kdbench", "kdbench.*", "kdbench_ext", "kdbench_ext.*"]),
    package_data={"kdbench_ext": ["csrc/*"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "pluggy>=1.3",
        "pandas>=1.5",
        "tabulate>=0.9",
        "tqdm>=4.60",
        "numpy>=1.23",
        "ninja",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "scikit-learn>=1.2", "matplotlib>=3.5"],
        "plot": ["matplotlib>=3.5"],
        "ray": ["ray"],
    },
    entry_points={"console_scripts": ["kdbench=kdbench.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
