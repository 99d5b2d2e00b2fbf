"""``raycontrast eval`` says whether and why it differs from the run's own mIoU."""

from raycontrast.config import load_config
from raycontrast.eval.agreement import explain, setting_differences


def _cfg(*overrides):
    return load_config("experiments/synthetic.yaml", list(overrides))


def test_same_settings_agree_or_name_floating_point():
    run = _cfg()
    state = {"iteration": 400, "metrics": {"mIoU": 0.1450}}
    assert explain(state, run, _cfg(), 0.1450).endswith("they agree (same data and eval settings)")
    line = explain(state, run, _cfg(), 0.1448)
    assert "mIoU 14.50 at iteration 400; this evaluation 14.48" in line
    assert "same data and eval settings, 0.02 points apart (floating point" in line
    assert "unexpected" in explain(state, run, _cfg(), 0.10)


def test_other_settings_are_named_by_key():
    run = _cfg("data.synthetic.num_val=16")
    now = _cfg("eval.flip=true")
    assert setting_differences(run, now) == [
        f"data.synthetic: {run.data.synthetic.__dict__!r} -> {now.data.synthetic.__dict__!r}",
        "eval.flip: False -> True",
    ]
    line = explain({"iteration": 4, "metrics": {"mIoU": 0.2}}, run, now, 0.25)
    assert "other settings than the run's (data.synthetic" in line and "config.yaml" in line
