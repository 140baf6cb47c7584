"""What the stored trials say: ``metrics.py`` (time to target, performance profiles),
``intervals.py`` (confidence intervals) and ``claims.py`` (each paper's claims, defined in
:mod:`beyondsgd.bench.protocol.claims`, evaluated into verdicts).
"""
