"""Your problem: the benchmark on your own model and data.

A :class:`Problem` fixes everything but the training method: a model factory (seed ->
``nn.Module``), the data, the loss, the metric, the batch size and the epoch budget::

    import beyondsgd as bs
    from torch import nn

    def model(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    problem = bs.Problem("my_mlp", model, train=(x_tr, y_tr), val=(x_va, y_va),
                         test=(x_te, y_te), loss="cross_entropy", batch_size=64, epochs=20)

and ``beyondsgd bench --problem my_file.py:problem`` (or ``my.module:problem``) runs it, as do
``train``, ``suite --problems`` and :func:`beyondsgd.bench.compare`.

**Data.** Each split is a pair of tensors ``(x, y)`` (held in memory, like the built-in problems)
or a ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs (streamed through a
``DataLoader``: :mod:`beyondsgd.data.streamed`, which also says how the methods that need more
than a minibatch get their data). Classification labels are integer class indices in
``[0, num_classes)``, ``num_classes`` being the model's output width; regression targets are
float vectors (or scalars) of the model's output width.

**Loss and metric.** ``loss``: ``"cross_entropy"`` (classification), ``"mse"`` (regression) or a
callable ``loss(out, y)`` returning the batch *mean* as a scalar tensor (then ``task`` is
needed). ``metric``: ``"accuracy"``, ``"mse"`` or a callable ``metric(out, y)`` returning the
batch mean (a number or scalar tensor) with ``higher_is_better`` saying its direction; it is
averaged over samples.

**Target.** ``target`` is a value of the validation/test metric for time to target; ``None``
(default): the suite sets it from the tuned baselines, as for the built-in problems.

**Search spaces.** ``search_space={"adam": {"lr": (1e-5, 1e-2)}, "pht_alt": {"tau": [0.0, 0.1]}}``
replaces a method's tuned range (a ``(low, high)`` pair keeps the method's log/linear scale; a
list is a set of choices) on this problem only.

**Identity.** A problem loaded from a file records the file's SHA-256 with every trial (a
problem object without a file records a fingerprint of its name, sizes, model and first
batch). A store holding trials of a problem of the same name with another hash is refused
before any work (:func:`check_store`): results of a changed problem never mix with old ones.

Every check here runs before any training (:func:`check_problem`); what is wrong is said in one
line naming the problem.
"""

from __future__ import annotations

from .checks import check_problem
from .refs import (
    check_store,
    ensure,
    is_ref,
    job_source,
    load_ref,
    register_stored,
    sha256_file,
)
from .registration import fingerprint, register, to_registered
from .spec import (
    LOSSES,
    METRICS,
    TASKS,
    Problem,
    ProblemError,
    loss_and_metric,
    metric_info,
)

__all__ = ["LOSSES", "METRICS", "TASKS", "Problem", "ProblemError", "check_problem",
           "check_store", "ensure", "fingerprint", "is_ref", "job_source", "load_ref",
           "loss_and_metric", "metric_info", "register", "register_stored", "sha256_file",
           "to_registered"]
