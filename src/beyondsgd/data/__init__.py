"""Datasets as in-memory tensors with fixed, seeded train/validation/test splits."""

from .datasets import (
    Dataset,
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_fashion_mnist,
    load_friedman1,
    load_mnist,
    load_mnist1d,
    load_toy_regression,
)
from .idx import DataFileError, read_idx, write_idx

__all__ = [
    "DataFileError",
    "Dataset",
    "load_breast_cancer",
    "load_diabetes",
    "load_digits",
    "load_fashion_mnist",
    "load_friedman1",
    "load_mnist",
    "load_mnist1d",
    "load_toy_regression",
    "read_idx",
    "write_idx",
]
