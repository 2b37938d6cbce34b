"""Fine-tuning and distillation of converted models; runs unchanged under ``torchrun``.

:func:`finetune` trains a (converted) model in place with cross-entropy on labels, knowledge
distillation from the original model, feature distillation on the converted layers, or a mix,
with AMP, checkpoints that resume exactly, a progress bar, and DistributedDataParallel when the
process was started by ``torchrun``.

Conventions:

* accuracy is top-1, as a fraction in [0, 1]; losses are means per sample;
* a *step* is one optimizer update (one batch per rank); ``epoch`` numbers in the history are
  1-based; learning-rate schedules are per step;
* distillation loss is ``KL(teacher || student)`` on temperature-softened logits times ``T**2``
  (Hinton et al.), averaged over the batch; feature distillation is the mean squared error
  between each converted layer's output and the original conv's output, summed over layers.

Layout: :mod:`.api` (``finetune``), :mod:`.loop` (the training loop), :mod:`.losses`,
:mod:`.optim` (optimizer, schedule, AMP), :mod:`.checkpoints` (format, RNG states),
:mod:`.data` (batches and sharding), :mod:`.distributed` (process group), :mod:`.results`.
"""

from .api import finetune
from .checkpoints import CHECKPOINT_FORMAT
from .results import EpochStats, FinetuneResult, StepStats

__all__ = ["finetune", "FinetuneResult", "EpochStats", "StepStats", "CHECKPOINT_FORMAT"]
