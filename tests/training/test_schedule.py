"""The paper's schedule with Keras 2.2.4's rules: LR x0.1 after 6 flat epochs, stop after 12."""

from __future__ import annotations

import math

from napari_allbag.training.schedule import PlateauSchedule


def test_learning_rate_drops_after_six_epochs_without_improvement_and_stops_after_twelve():
    schedule = PlateauSchedule(lr=1e-3)
    assert schedule.step(1, 1.0)
    rates, stopped_at = [], None
    for epoch in range(2, 30):
        assert not schedule.step(epoch, 1.0 + epoch * 1e-3)  # never better again
        rates.append(schedule.lr)
        if schedule.stopped:
            stopped_at = epoch
            break
    assert rates[:5] == [1e-3] * 5  # epochs 2..6: waiting
    assert math.isclose(rates[5], 1e-4)  # after epoch 7, the 6th flat epoch
    assert math.isclose(rates[11], 1e-5)  # six more
    assert stopped_at == 13  # the 12th epoch without improvement
    assert schedule.best_epoch == 1 and schedule.best_loss == 1.0


def test_tiny_improvements_keep_training_but_do_not_keep_the_learning_rate():
    schedule = PlateauSchedule(lr=1.0, patience_lr=2, patience_stop=3)
    losses = [1.0, 0.99999, 0.99998, 0.99997]  # better, but by less than Keras' 1e-4 min_delta
    for epoch, loss in enumerate(losses, 1):
        assert schedule.step(epoch, loss)
    assert not schedule.stopped
    assert math.isclose(schedule.lr, 0.1)


def test_state_survives_json():
    schedule = PlateauSchedule(lr=1e-3)
    restored = PlateauSchedule.from_dict(schedule.to_dict())
    assert restored == schedule
    schedule.step(1, 0.5)
    restored = PlateauSchedule.from_dict(schedule.to_dict())
    assert restored == schedule
