"""The synthetic preset's evaluator: a small segmentation net in place of DRN / DeepLab.

On real data the SPADE protocol segments generated images with a pretrained network and scores the
prediction against the label map the image was generated from (mIoU), and FID compares Inception
features. The procedural street scenes of :mod:`usis.data.synthetic` have no such pretrained
networks, so :class:`SyntheticEvaluator` trains its own once (400 steps of 8 photos with
the process's intra-op threads; timing in benchmarks/RESULTS.md) on the PAIRED synthetic stream -- photos with their own layouts,
never seen by USIS -- and caches the weights. Segmentation averages the logits of each image and its
mirror image (test-time flip).

* ``miou``: confusion matrix accumulated over the whole set, IoU per class, mean over the classes whose
  union is non-empty (the fyu/drn ``segment.py`` reference; see :mod:`usis.metrics.miou`); pixels whose
  label is don't-care (id 0) are not scored and id 0 is never predicted.
* ``miou_ceiling``: the same on held-out REAL photos (``SyntheticPaired(split="val")``) against their own
  layouts -- the best a generator can hope for; generated-image mIoU reads relative to it.
* ``sfid``: Frechet distance between the evaluator's pooled bottleneck features (128 dims) of two image
  sets, computed by :func:`usis.metrics.fid.compute_fid` (the code behind FID: torchmetrics' Frechet
  distance in float64) with this net as the feature extractor.

Cache: ``<cache_dir>/synthetic_eval_<hash>.pt`` (a plain state dict plus metadata, loadable with
``torch.load(..., weights_only=True)``, written atomically), where the hash covers the image size,
:data:`usis.data.synthetic.DATA_VERSION` and :data:`ARCH_VERSION`; ceilings sit next to it in
``synthetic_eval_<hash>.ceiling.json``. ``cache_dir`` defaults to ``$USIS_CACHE`` or ``~/.cache/usis``.

The code is split in three: :mod:`~usis.metrics.synthetic_eval.net` (the network and its features),
:mod:`~usis.metrics.synthetic_eval.fit` (fitting it, the weights cache) and
:mod:`~usis.metrics.synthetic_eval.evaluator` (:class:`SyntheticEvaluator`: the metrics); this package
exports their public names.
"""

from usis.metrics.synthetic_eval.evaluator import CEILING_N, SyntheticEvaluator
from usis.metrics.synthetic_eval.fit import EVAL_SEED, TRAIN_STEPS, cache_key, cache_path, train_evaluator
from usis.metrics.synthetic_eval.net import (
           ARCH_VERSION,
           WIDTHS,
           WORK_HEIGHT,
           EvalNet,
           PooledFeatures,
           work_size,
)

__all__ = ["ARCH_VERSION", "CEILING_N", "EVAL_SEED", "TRAIN_STEPS", "WIDTHS", "WORK_HEIGHT", "EvalNet", "PooledFeatures",
           "SyntheticEvaluator", "cache_key", "cache_path", "train_evaluator", "work_size"]
