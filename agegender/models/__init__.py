"""Plain nn.Modules (networks). The LightningModule that trains them lives in the training
package (``training/module.py``); nothing here imports training code.

Input convention for every network in this package (documented once, here):
a float tensor N x 3 x S x S holding **RGB pixel values in [0, 255]** (no scaling, no mean
subtraction). Each network owns its normalisation as its first layer (Caffe BGR mean
subtraction for Levi-Hassner, ImageNet statistics for ResNet, fixed standardisation for
InceptionResnetV1), so the shared preprocessing in :mod:`agegender.transforms` never changes
with the backbone and a checkpoint always carries the normalisation it was trained with.
Each network class declares the face it takes as ``face_spec`` (:mod:`agegender.spec`): face,
resize and crop sizes and the normalisation its first layer applies.
Outputs are a dict of logits, one entry per task (``"age"``: N x 8, ``"gender"``: N x 2).
"""

from agegender.models.levi_hassner import (
    CaffeInput,
    CaffeMeanImage,
    LeviHassnerNet,
    LeviHassnerTrunk,
)
from agegender.models.registry import DEFAULT_MODEL, MODEL_BUILDERS, build_model, face_spec

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_BUILDERS",
    "CaffeInput",
    "CaffeMeanImage",
    "LeviHassnerNet",
    "LeviHassnerTrunk",
    "build_model",
    "face_spec",
]
