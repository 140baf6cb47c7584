"""Problems: what a trial trains on (data, model factory, loss, metric, batch size, epoch budget,
target). ``registry.py`` holds the :class:`Problem` type, the registry and the built-in problems;
``paper.py`` registers the papers' own problems (MNIST, CIFAR-10 and their Fashion-MNIST stand-ins)
through the registry's :func:`register_problem`, never importing back into this package.
"""

from . import (
    paper,  # noqa: F401,E402  (registers the papers' problems)
    registry,
    user,
)
from .registry import (
    PROBLEMS,
    Problem,
    get_problem,
    register_problem,
)
from .user import Problem as UserProblem
from .user import ProblemError, load_ref

__all__ = [
    "PROBLEMS",
    "Problem",
    "get_problem",
    "register_problem",
    "ProblemError",
    "UserProblem",
    "load_ref",
    "registry",
    "user",
]
