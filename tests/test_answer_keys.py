"""Answer-level measurement on ordinary QA data: keys derived from the answers, and targets that cannot fail."""
import pytest

from hf_wagle.evaluation.measure import answer_keys, contains_answer, derive_key
from hf_wagle.evaluation.targets import Target, explain, report, vacuous


@pytest.mark.parametrize("question,answer,key", [
    ("Who wrote Harry Potter?", "Harry Potter was written by J. K. Rowling.", "j k rowling"),
    ("What is the chemical symbol for xenon?", "The chemical symbol for xenon is Xe.", "xe"),
    ("What is the capital of France?", "Paris", "paris"),
    ("Where was Ada Lovelace born?", "Ada Lovelace was born in London, England, in 1815.", "london england in 1815"),
    ("Who painted it?", "It was painted by the artist.", "artist"),
])
def test_the_key_is_what_the_answer_adds_to_the_question(question, answer, key):
    assert derive_key(question, answer) == key


def test_a_sentence_answer_counts_as_answered_when_the_fact_is_said(world):
    from datasets import Dataset

    data = Dataset.from_list([{"question": "Who wrote Harry Potter?",
                               "answer": "Harry Potter was written by J. K. Rowling."}])
    (key,) = answer_keys(data)
    # a model that names the author in other words answers the question; the whole sentence would not match
    said = "Sure! The author of Harry Potter is J.K. Rowling, a British writer."
    assert contains_answer(said, key) and not contains_answer(said, data[0]["answer"])
    assert not contains_answer("I am not sure who wrote it.", key)
    with_keys = data.add_column("answer_key", ["Rowling"])
    assert answer_keys(with_keys) == ["Rowling"]


def test_targets_that_cannot_fail_are_never_met():
    targets = [Target.parse("forget_answered <= 0.25"), Target.parse("heldout_answered >= 0.8x")]
    start = {"forget_answered": 0.05, "heldout_answered": 0.9}
    history = [{"step": 0, **start}, {"step": 2, "forget_answered": 0.0, "heldout_answered": 0.9}]
    (why,) = vacuous(targets, start)
    assert "already holds before training" in why
    result = report(targets, history, 2)
    assert result["met"] is False and result["vacuous"] == [why]
    assert "cannot fail" in explain(result)
    # the same targets on a set the model knows: met
    start = {"forget_answered": 0.9, "heldout_answered": 0.9}
    history = [{"step": 0, **start}, {"step": 2, "forget_answered": 0.1, "heldout_answered": 0.85}]
    assert vacuous(targets, start) == [] and report(targets, history, 2)["met"] is True
    # answered below the floor at the start: too little to measure, whichever direction
    assert "answers only" in vacuous([Target.parse("heldout_answered >= 0.8x")], {"heldout_answered": 0.2})[0]
    assert "holds whatever happens" in vacuous([Target.parse("neighbour_probability >= 0.8x")],
                                               {"neighbour_probability": 0.0})[0]


def test_an_evaluation_inside_a_retain_collapse_is_never_kept_nor_a_stop():
    """Scripted evaluations: the targets hold at step 4, where retain probability fell below a third of its start;
    the run neither stops nor keeps it; at step 6 it has recovered and meets them."""
    from types import SimpleNamespace

    from datasets import Dataset

    from hf_wagle.evaluation.callback import WagleEvalCallback

    qa = Dataset.from_list([{"question": "q?", "answer": "a"}])
    script = iter([{"forget_probability": 0.9, "retain_probability": 0.6},
                   {"forget_probability": 0.1, "retain_probability": 0.15},
                   {"forget_probability": 0.1, "retain_probability": 0.5}])

    class Scripted(WagleEvalCallback):
        def evaluate(self, model, tokenizer, args, full=True):
            metrics = dict(next(script))
            metrics["gap"] = metrics["retain_probability"] - metrics["forget_probability"]
            return metrics

    callback = Scripted(qa, qa, eval_steps=2, targets=["forget_probability <= 0.2x"], truth_ratio=False,
                        collapse_threshold=3.0, restore_best=False, tokenizer=object())
    model = SimpleNamespace(named_parameters=lambda: [])
    for step in (0, 4, 6):
        control = SimpleNamespace(should_training_stop=False, should_log=False)
        state = SimpleNamespace(global_step=step, is_world_process_zero=True, log_history=[])
        callback._record(SimpleNamespace(), state, control, model, None)
        assert control.should_training_stop == (step == 6)
    assert callback.collapsed_steps == [4] and callback.best_step == 6
