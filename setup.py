from setuptools import find_packages, setup

setup(
    name="ndarts",
    version="0.1.0",
    description="NoisyDARTS: differentiable architecture search with noisy skip connections, with fused Triton kernels",
    python_requires=">=3.10",
    # The Triton kernels live in the top-level folder kernels/ and install as `ndarts_kernels`:
    # the unrelated PyPI package `kernels` owns the bare name.
    packages=find_packages(include=["ndarts", "ndarts.*"]) + ["ndarts_kernels"],
    package_dir={"ndarts_kernels": "kernels"},
    package_data={"ndarts.genotype": ["zoo.json"]},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "scikit-learn",  # ships the embedded default dataset (8x8 handwritten digits)
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "pytest-benchmark", "hypothesis", "tensorboard"],
        "tensorboard": ["tensorboard"],
    },
)
