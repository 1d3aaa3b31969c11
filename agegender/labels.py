"""Label vocabularies shared by data, training and prediction.

Kept in one module so that the order of the age buckets (which is the order of the
network's age logits and of every CSV/metric column) is defined exactly once.
"""

from __future__ import annotations

#: Age buckets in logit order, as printed in predictions.csv.
AGE_BUCKETS: tuple[str, ...] = (
    "0-2",
    "4-6",
    "8-12",
    "15-20",
    "25-32",
    "38-43",
    "48-53",
    "60-100",
)

#: The same buckets as the Adience fold files spell them (the only strings strict mode accepts).
ADIENCE_AGE_STRINGS: tuple[str, ...] = (
    "(0, 2)",
    "(4, 6)",
    "(8, 12)",
    "(15, 20)",
    "(25, 32)",
    "(38, 43)",
    "(48, 53)",
    "(60, 100)",
)

#: Gender classes in logit order (index 0 = male, as in the original gender net).
GENDERS: tuple[str, ...] = ("male", "female")

#: Label value meaning "unknown for this task": the loss and metrics of that head skip it.
IGNORE_INDEX: int = -1

NUM_AGE_CLASSES: int = len(AGE_BUCKETS)
NUM_GENDER_CLASSES: int = len(GENDERS)

TASK_NUM_CLASSES: dict[str, int] = {"age": NUM_AGE_CLASSES, "gender": NUM_GENDER_CLASSES}
