"""Datasets as in-memory tensors with fixed, seeded train/validation/test splits."""

from .cifar import UnsafePickleError, cifar10_status, load_cifar10
from .datasets import (
    Dataset,
    fashion_mnist_status,
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_fashion_mnist,
    load_friedman1,
    load_mnist,
    load_mnist1d,
    load_toy_regression,
    mnist_status,
)
from .idx import DataFileError, read_idx, write_idx

__all__ = [
    "DataFileError",
    "Dataset",
    "UnsafePickleError",
    "cifar10_status",
    "fashion_mnist_status",
    "load_breast_cancer",
    "load_cifar10",
    "load_diabetes",
    "load_digits",
    "load_fashion_mnist",
    "load_friedman1",
    "load_mnist",
    "load_mnist1d",
    "load_toy_regression",
    "mnist_status",
    "read_idx",
    "write_idx",
]
