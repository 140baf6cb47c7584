"""Datasets as in-memory tensors with fixed, seeded train/validation/test splits."""

from .cifar import UnsafePickleError, cifar10_status, load_cifar10
from .datasets import (
    Dataset,
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_friedman1,
    load_mnist1d,
    load_toy_regression,
)
from .idx import DataFileError, read_idx, write_idx
from .mnist import fashion_mnist_status, load_fashion_mnist, load_mnist, mnist_status

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
