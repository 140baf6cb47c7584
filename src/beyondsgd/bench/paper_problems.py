"""Problems of the papers' own experiments (``beyondsgd reproduce``): MNIST and CIFAR-10 at the
papers' settings, and their Fashion-MNIST adaptations for 2-core machines. Registered into
:data:`beyondsgd.bench.problems.PROBLEMS` when ``problems`` is imported.
"""

from __future__ import annotations

# ---- ProxProp, BPGrad problems ----


# ---- DessiLBI, GDSolver, PHT problems ----
