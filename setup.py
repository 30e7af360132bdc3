from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec((Path(__file__).parent / "vlprompt" / "__init__.py").read_text(), version)

setup(
    name="vlprompt",
    version=version["__version__"],
    description="Prompt learning on frozen CLIP models: CoOp, CoCoOp, MaPLe, BMIP, HiCroPL on one open_clip backend",
    packages=find_packages(include=["vlprompt", "vlprompt.*"]),
    package_data={"vlprompt": ["clip/model_configs/*.json"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "open_clip_torch>=2.24",
        "yacs>=0.1.8",
        "tqdm",
        "tensorboard",
        "scipy",
        "numpy",
        "Pillow",
    ],
    extras_require={"test": ["pytest", "pytest-xdist"], "sweep": ["submitit"], "plot": ["matplotlib"]},
    entry_points={"console_scripts": ["vlprompt-train=vlprompt.cli:main", "vlprompt-predict=vlprompt.predict:main"]},
)
