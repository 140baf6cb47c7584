"""What the stored trials say: ``metrics.py`` (time to target, performance profiles),
``intervals.py`` (confidence intervals), ``claims.py`` (each paper's claims, defined in
:mod:`beyondsgd.bench.protocol.claims`, evaluated into verdicts) and ``judge.py`` (the tests
behind a verdict).
"""
