"""Running one trial: ``runner.py`` (the training loop, evaluation, checkpoints, the store),
``trial.py`` (a trial's identity, minibatch order and summary), ``checkpoint.py``, ``batch.py``
(many trials, as ``bench`` runs them), ``arguments.py`` and ``validate.py`` (inputs checked
before any work).
"""
