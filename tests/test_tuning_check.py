"""The tuning check in the claims (issue 24, "Fair tuning"): study 0's verdict beside the verdict
with the pairs re-tuned at twice the draws, on hand-made stores."""

from beyondsgd.bench.analysis import claims as C
from beyondsgd.bench.protocol import FINAL_TAG, TUNING_CHECK_TAG
from beyondsgd.bench.store import Store, trial_key

CLF = "digits_mlp"


def add(st: Store, method: str, seed: int, acc: float, tag: str, lr: float = 0.1) -> None:
    """A finished trial at the problem's full budget whose validation/test accuracy rises to
    ``acc`` and whose training loss falls (so it neither collapses nor diverges)."""
    epochs = 20
    vals = [0.1, 0.5 * acc, acc]
    evals = [{"epoch": e, "step": 10 * e, "train_seconds": float(e), "train_loss": 2.0 / (e + 1),
              "val_loss": 0.0, "val_metric": v, "test_loss": 0.0, "test_metric": v}
             for e, v in enumerate(vals)]
    hp = {"lr": lr}
    key = trial_key(CLF, method, hp, seed, epochs, 1.0, tag)
    last = evals[-1]
    st.record_trial(key, CLF, method, hp, seed, epochs, 1.0, tag, {}, "finished", evals, [],
                    {"final_train_loss": last["train_loss"], "final_val_metric": acc,
                     "final_test_metric": acc})


def test_a_verdict_that_flips_with_twice_the_draws_says_so_and_one_that_holds_survives():
    with Store(":memory:") as st:
        for s, j in zip((1, 2, 3), (0.0, 0.002, 0.004)):
            add(st, "adam", s, 0.90 + j, FINAL_TAG)
            add(st, "proxprop", s, 0.95 + j, FINAL_TAG)        # study 0: matches Adam
            add(st, "proxprop", s, 0.70 + j, TUNING_CHECK_TAG, lr=0.5)  # re-tuned: far worse
        (v,) = [r for r in C.evaluate_store(st) if r.claim.id == "proxprop_test"]
        assert v.verdict == "supported"
        assert v.tuning_check == "not supported (flips)"
    with Store(":memory:") as st:
        for s, j in zip((1, 2, 3), (0.0, 0.002, 0.004)):
            add(st, "adam", s, 0.90 + j, FINAL_TAG)
            add(st, "proxprop", s, 0.95 + j, FINAL_TAG)
            add(st, "adam", s, 0.91 + j, TUNING_CHECK_TAG, lr=0.01)  # Adam re-tuned, a bit better
        (v,) = [r for r in C.evaluate_store(st) if r.claim.id == "proxprop_test"]
        assert v.verdict == "supported" and v.tuning_check == "survives"


def test_no_check_in_the_store_means_no_check_text():
    with Store(":memory:") as st:
        for s in (1, 2, 3):
            add(st, "adam", s, 0.90 + 0.001 * s, FINAL_TAG)
            add(st, "proxprop", s, 0.95 + 0.001 * s, FINAL_TAG)
        (v,) = [r for r in C.evaluate_store(st) if r.claim.id == "proxprop_test"]
        assert v.tuning_check is None


def test_the_matrix_shows_the_check():
    from beyondsgd.bench.report.matrix import matrix_markdown

    with Store(":memory:") as st:
        for s, j in zip((1, 2, 3), (0.0, 0.002, 0.004)):
            add(st, "adam", s, 0.90 + j, FINAL_TAG)
            add(st, "proxprop", s, 0.95 + j, FINAL_TAG)
            add(st, "proxprop", s, 0.70 + j, TUNING_CHECK_TAG, lr=0.5)
        assert "2× tuning: not supported (flips)" in matrix_markdown(st)
