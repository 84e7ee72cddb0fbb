"""The paper's training schedule on validation loss, with Keras 2.2.4's exact rules.

Liu & Long (Sec. 2.5) used Keras callbacks: `ReduceLROnPlateau(factor=0.1, patience=6)`,
`EarlyStopping(patience=12)` and a best-model checkpoint, all on validation loss. Keras 2.2.4's
semantics are kept here:

- learning rate: an epoch improves when `val_loss < best - 1e-4` (Keras' `min_delta` for this
  callback); after `patience_lr` epochs without improvement the rate is multiplied by `factor`
  and the count starts again;
- early stop: an epoch improves when `val_loss < best` (`min_delta` 0); training stops after
  `patience_stop` epochs without improvement;
- best weights: those of the epoch with the lowest validation loss so far (strictly lower).

The whole state is a few numbers (`to_dict`/`from_dict`), so a checkpoint stores it as JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

#: Keras 2.2.4 ReduceLROnPlateau's default min_delta.
LR_MIN_DELTA = 1e-4


@dataclass
class PlateauSchedule:
    """Learning-rate reduction, early stopping and best-epoch tracking on validation loss."""

    lr: float
    factor: float = 0.1
    patience_lr: int = 6
    patience_stop: int = 12
    min_lr: float = 0.0
    lr_best: float = math.inf
    lr_wait: int = 0
    stop_best: float = math.inf
    stop_wait: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    stopped: bool = False

    def step(self, epoch: int, val_loss: float) -> bool:
        """Record epoch `epoch` (1-based) with `val_loss`; True when it is the best so far.

        Afterwards `lr` is the rate for the next epoch and `stopped` says whether to stop.
        """
        val_loss = float(val_loss)
        is_best = val_loss < self.best_loss
        if is_best:
            self.best_loss = val_loss
            self.best_epoch = int(epoch)

        if val_loss < self.lr_best - LR_MIN_DELTA:
            self.lr_best = val_loss
            self.lr_wait = 0
        else:
            self.lr_wait += 1
            if self.lr_wait >= self.patience_lr and self.lr > self.min_lr:
                self.lr = max(self.lr * self.factor, self.min_lr)
                self.lr_wait = 0

        if val_loss < self.stop_best:
            self.stop_best = val_loss
            self.stop_wait = 0
        else:
            self.stop_wait += 1
            if self.stop_wait >= self.patience_stop:
                self.stopped = True
        return is_best

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return {
            k: (None if isinstance(v, float) and math.isinf(v) else v)
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict) -> PlateauSchedule:
        values = {
            k: (math.inf if v is None and k.endswith(("best", "loss")) else v)
            for k, v in data.items()
        }
        return cls(**values)
