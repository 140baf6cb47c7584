"""Adapters for training frameworks users already run: PyTorch Lightning
(:mod:`beyondsgd.integrations.lightning`, extra ``lightning``) and DeepOBS
(:mod:`beyondsgd.integrations.deepobs`, extra ``deepobs``). Nothing here is imported by
``beyondsgd`` itself, so the core package never needs either framework.
"""
