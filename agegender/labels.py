"""Label vocabularies shared by data, training and prediction, and label sets.

Kept in one module so that the order of the age buckets (which is the order of the
network's age logits and of every CSV/metric column) is defined exactly once.

A :class:`LabelSet` is the age vocabulary of one run: ordered class names, the years each
class covers, how the eight Adience buckets map onto it, and the raw spellings a dataset
writes (``20대``, ``남``/``여``). Built in: ``adience8`` (the paper's buckets, the default),
``coarse3`` (child, teen, adult), ``coarse2`` (child, adult) and ``decades``; any other set
comes from a YAML file with the same keys (:func:`load_label_set`). Parsing, the class
counts of the networks' age heads, 1-off accuracy (one class away in the set's order),
confusion matrices and predictions all read the set, and checkpoints store it
(:meth:`LabelSet.to_config`), so a model always reports the names it was trained with.
Gender stays ``male``/``female`` in every set; aliases only add raw spellings of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agegender.errors import AgeGenderError

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


#: Inclusive year bounds of the Adience buckets, in logit order.
ADIENCE_RANGES: tuple[tuple[int, int], ...] = tuple(
    (int(a), int(b)) for a, b in (s.split("-") for s in AGE_BUCKETS)
)
#: How an Adience bucket that straddles a class boundary of a set is mapped (``straddle``):
#: ``majority`` (the class holding most of its whole years; ties: the lower class),
#: ``lower`` (the class of its first year), ``upper`` (of its last year), ``unknown`` (its
#: rows get no age label: the age loss and metrics skip them).
STRADDLE_RULES: tuple[str, ...] = ("majority", "lower", "upper", "unknown")
#: Parsing policies (see :mod:`agegender.data.folds`).
POLICIES: tuple[str, ...] = ("strict", "remap")
_GENDER_STRICT = {"m": 0, "f": 1}
_GENDER_REMAP = {"m": 0, "f": 1, "male": 0, "female": 1}
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_RANGE = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)$|^(\d+)\s*-\s*(\d+)$")


class LabelSetError(AgeGenderError, ValueError):
    """A label-set definition that cannot be used; the message says which key and why."""


def nearest_bucket(age: float) -> int:
    """Index of the Adience bucket nearest to an age in years (ties go to the lower bucket)."""
    best, best_dist = 0, float("inf")
    for i, (lo, hi) in enumerate(ADIENCE_RANGES):
        dist = 0.0 if lo <= age <= hi else min(abs(age - lo), abs(age - hi))
        if dist < best_dist:
            best, best_dist = i, dist
    return best


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class LabelSet:
    """One age vocabulary (see the module doc). Build it with :func:`load_label_set`.

    - ``age``: class names in logit order (= the order 1-off accuracy measures distance in);
    - ``boundaries``: the first year of each class, strictly increasing; class ``i`` holds
      ages ``boundaries[i] <= years < boundaries[i + 1]``, the last is open-ended and an age
      below ``boundaries[0]`` has no class (unknown). ``None`` for ``adience8``, whose buckets
      have gaps (3, 7, 13-14 ...): there an age goes to the nearest bucket, as before;
    - ``adience``: the class of each Adience bucket (``IGNORE_INDEX``: unknown), from the
      ``straddle`` rule unless given per bucket;
    - ``aliases`` / ``gender_aliases``: raw cell text -> class index (exact text, then
      case-folded), accepted under both parsing policies;
    - ``midpoints``: years each class stands for in the expected age (an estimate):
      by default the middle of its years, the last class ending at ``max_age``.
    """

    name: str
    age: tuple[str, ...]
    boundaries: tuple[float, ...] | None
    adience: tuple[int, ...]
    midpoints: tuple[float, ...]
    max_age: float = 100.0
    straddle: str = "majority"
    aliases: Mapping[str, int] = field(default_factory=dict)
    gender_aliases: Mapping[str, int] = field(default_factory=dict)
    genders: tuple[str, ...] = GENDERS

    # -- sizes and names -------------------------------------------------------------------
    @property
    def num_classes(self) -> dict[str, int]:
        """Outputs per task head: ``{"age": len(age), "gender": 2}``."""
        return {"age": len(self.age), "gender": len(self.genders)}

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        return {"age": self.age, "gender": self.genders}

    @property
    def is_adience8(self) -> bool:
        return self.boundaries is None

    # -- years -----------------------------------------------------------------------------
    def year_class(self, years: float) -> int:
        """The class of an age in years (IGNORE_INDEX below the first boundary)."""
        if self.boundaries is None:
            return nearest_bucket(years)
        index = IGNORE_INDEX
        for i, lower in enumerate(self.boundaries):
            if years >= lower:
                index = i
        return index

    def class_years(self, index: int) -> tuple[float, float]:
        """The half-open years ``[lo, hi)`` class ``index`` covers.

        What decides whether a class is wholly under an age (a minor) or wholly at or above
        it (an adult), so that a rate such as "minors called adults" only counts classes that
        say so. adience8: the bucket's inclusive range plus one (``15-20`` -> ``(15, 21)``),
        which leaves the gaps between buckets (3, 7, 13-14 ...) in no class; a set with
        boundaries: ``(boundaries[i], boundaries[i + 1])``, the last class ending at
        ``max_age``."""
        if not 0 <= index < len(self.age):
            raise IndexError(
                f"label set {self.name!r} has classes 0..{len(self.age) - 1}, not {index}"
            )
        if self.boundaries is None:
            lo, hi = ADIENCE_RANGES[index]
            return float(lo), float(hi + 1)
        ends = (*self.boundaries[1:], self.max_age)
        return float(self.boundaries[index]), float(ends[index])

    # -- parsing ---------------------------------------------------------------------------
    def parse_age(self, value: object, policy: str = "strict") -> int:
        """Class index of one age cell, IGNORE_INDEX when unknown.

        Accepted: an alias, a class name, an Adience spelling (``(25, 32)`` or ``25-32``,
        mapped by ``adience``); under ``remap`` also a number of years (:meth:`year_class`)
        and an odd range, which goes by its first number (``(8, 23)`` -> 8 years).
        """
        check_policy(policy)
        if _is_missing(value):
            return IGNORE_INDEX
        text = str(value).strip()
        found = self._lookup(text, self.aliases)
        if found is not None:
            return found
        if text in self.age:
            return self.age.index(text)
        if text in ADIENCE_AGE_STRINGS:
            return self.adience[ADIENCE_AGE_STRINGS.index(text)]
        if text in AGE_BUCKETS:
            return self.adience[AGE_BUCKETS.index(text)]
        if policy == "strict":
            return IGNORE_INDEX
        if _NUMBER.match(text):
            return self.year_class(float(text))
        m = _RANGE.match(text)
        if m:
            return self.year_class(float(m.group(1) or m.group(3)))
        return IGNORE_INDEX

    def parse_gender(self, value: object, policy: str = "strict") -> int:
        """0 = male, 1 = female, IGNORE_INDEX when unknown ('u', empty, anything else)."""
        check_policy(policy)
        if _is_missing(value):
            return IGNORE_INDEX
        text = str(value).strip()
        found = self._lookup(text, self.gender_aliases)
        if found is not None:
            return found
        table = _GENDER_STRICT if policy == "strict" else _GENDER_REMAP
        return table.get(text.lower(), IGNORE_INDEX)

    @staticmethod
    def _lookup(text: str, table: Mapping[str, int]) -> int | None:
        if not table:
            return None
        if text in table:
            return table[text]
        folded = text.casefold()
        for key, index in table.items():
            if key.casefold() == folded:
                return index
        return None

    # -- converting a model's probabilities ------------------------------------------------
    def adience_matrix(self) -> list[list[float]]:
        """8 x len(age) 0/1 matrix: Adience bucket probabilities @ it = this set's class
        probabilities (each bucket's probability goes to its class: a sum, not a new model).
        An Adience bucket without a class here makes the conversion impossible."""
        missing = [AGE_BUCKETS[i] for i, c in enumerate(self.adience) if c == IGNORE_INDEX]
        if missing:
            raise LabelSetError(
                f"label set {self.name!r} gives the Adience bucket(s) {', '.join(missing)} no "
                "class, so probabilities over the eight buckets cannot be summed into it; set "
                "its straddle rule or an explicit adience mapping"
            )
        rows = [[0.0] * len(self.age) for _ in AGE_BUCKETS]
        for bucket, cls in enumerate(self.adience):
            rows[bucket][cls] = 1.0
        return rows

    # -- storage ---------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """Plain data that :func:`load_label_set` turns back into this set (what checkpoints
        store); every mapping is explicit, so a reload never depends on defaults."""
        if self.is_adience8:
            return {"name": ADIENCE8_NAME}
        return {
            "name": self.name,
            "age": list(self.age),
            "boundaries": list(self.boundaries or ()),
            "max_age": self.max_age,
            "straddle": self.straddle,
            "adience": {
                b: (None if c == IGNORE_INDEX else self.age[c])
                for b, c in zip(AGE_BUCKETS, self.adience, strict=True)
            },
            "midpoints": list(self.midpoints),
            "aliases": {k: self.age[v] for k, v in self.aliases.items()},
            "gender_aliases": {k: self.genders[v] for k, v in self.gender_aliases.items()},
        }

    def describe(self) -> str:
        """One line for logs and tables: ``coarse3 (child, teen, adult)``."""
        return f"{self.name} ({', '.join(self.age)})"


def reporting_matrix(model_labels: LabelSet, labels: LabelSet) -> list[list[float]] | None:
    """The matrix that turns a network's age probabilities (over ``model_labels``) into those
    of ``labels`` (``probs @ matrix``), or None when they are the same set. Only adience8
    networks can report another set, by summing bucket probabilities per class: the same
    network read at a coarser grain, not a model trained on that set."""
    if labels == model_labels:
        return None
    if not model_labels.is_adience8:
        raise LabelSetError(
            f"this network predicts label set {model_labels.describe()}; only adience8 "
            "networks can report another set (by summing bucket probabilities): predict with "
            "the set it was trained on"
        )
    return labels.adience_matrix()


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown label policy {policy!r}; expected one of {POLICIES}")


ADIENCE8_NAME = "adience8"

#: The paper's eight buckets: what every run used before label sets existed.
ADIENCE8 = LabelSet(
    name=ADIENCE8_NAME,
    age=AGE_BUCKETS,
    boundaries=None,
    adience=tuple(range(len(AGE_BUCKETS))),
    midpoints=tuple((lo + hi + 1) / 2 for lo, hi in ADIENCE_RANGES),
    max_age=100.0,
)

#: Built-in sets besides adience8 as YAML-style definitions (conf/labels/ selects them).
#: coarse3: child = under 13, teen = 13-19, adult = 20 and over; Adience's 15-20 holds five
#: teen years and one adult year, so ``majority`` (the default) makes it teen
#: (``straddle=upper`` or ``adience: {15-20: adult}`` to change that). coarse2: the same
#: child class, everyone from 13 on is adult (no Adience bucket straddles 13).
BUILTIN: dict[str, dict[str, Any]] = {
    "coarse3": {"age": ["child", "teen", "adult"], "boundaries": [0, 13, 20], "max_age": 80},
    "coarse2": {"age": ["child", "adult"], "boundaries": [0, 13], "max_age": 80},
    "decades": {
        "age": [f"{d}-{d + 9}" for d in range(0, 70, 10)] + ["70+"],
        "boundaries": list(range(0, 80, 10)),
        "max_age": 90,
    },
}
_KEYS = {
    "name",
    "path",
    "age",
    "boundaries",
    "max_age",
    "straddle",
    "adience",
    "midpoints",
    "aliases",
    "gender_aliases",
}


def _adience_map(
    age: Sequence[str], boundaries: Sequence[float], straddle: str, explicit: Mapping[str, Any]
) -> tuple[int, ...]:
    def cls(years: int) -> int:
        index = IGNORE_INDEX
        for i, lower in enumerate(boundaries):
            if years >= lower:
                index = i
        return index

    unknown = set(explicit) - set(AGE_BUCKETS) - set(ADIENCE_AGE_STRINGS)
    if unknown:
        raise LabelSetError(
            f"adience: {sorted(unknown)} are not Adience buckets ({', '.join(AGE_BUCKETS)})"
        )
    out = []
    for bucket, spelled, (lo, hi) in zip(
        AGE_BUCKETS, ADIENCE_AGE_STRINGS, ADIENCE_RANGES, strict=True
    ):
        if bucket in explicit or spelled in explicit:
            target = explicit.get(bucket, explicit.get(spelled))
            if target is None:
                out.append(IGNORE_INDEX)
            elif target in age:
                out.append(list(age).index(target))
            else:
                raise LabelSetError(f"adience: {bucket} -> {target!r} is not one of {list(age)}")
            continue
        years = [cls(y) for y in range(lo, hi + 1)]
        if len(set(years)) == 1 or straddle == "lower":
            out.append(years[0])
        elif straddle == "upper":
            out.append(years[-1])
        elif straddle == "unknown":
            out.append(IGNORE_INDEX)
        else:  # majority; ties to the lower class (sorted by class, max keeps the first)
            counts = {c: years.count(c) for c in sorted(set(years))}
            out.append(max(counts, key=counts.__getitem__))
    return tuple(out)


def _index_map(table: Any, names: Sequence[str], key: str) -> dict[str, int]:
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise LabelSetError(f"{key} must map raw values to class names, got {table!r}")
    out = {}
    for raw, target in table.items():
        if str(target) not in names:
            raise LabelSetError(
                f"{key}: {raw!r} -> {target!r} is not one of the classes {list(names)}"
            )
        out[str(raw).strip()] = list(names).index(str(target))
    return out


def label_set_from_config(config: Mapping[str, Any]) -> LabelSet:
    """A :class:`LabelSet` from its definition (see :func:`load_label_set` for the keys)."""
    config = dict(config)
    unknown = set(config) - _KEYS
    if unknown:
        raise LabelSetError(f"label set: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    if config.get("path"):
        path = Path(str(config.pop("path"))).expanduser()
        if not path.is_file():
            raise LabelSetError(f"label-set file not found: {path}")
        import yaml

        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise LabelSetError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, Mapping):
            raise LabelSetError(f"{path}: a label set is a mapping (name, age, boundaries ...)")
        overrides = {k: v for k, v in config.items() if v is not None and k != "name"}
        config = {"name": path.stem, **dict(loaded), **overrides}
        try:
            return label_set_from_config(config)
        except LabelSetError as exc:
            raise LabelSetError(f"{path}: {exc}") from None
    config.pop("path", None)
    name = str(config.get("name") or "")
    if name == ADIENCE8_NAME:
        extra = {k for k, v in config.items() if k != "name" and v is not None}
        if extra:
            raise LabelSetError(f"adience8 is fixed (the paper's buckets); remove {sorted(extra)}")
        return ADIENCE8
    if "age" not in config and name in BUILTIN:
        config = {**BUILTIN[name], **{k: v for k, v in config.items() if v is not None}}
    if not name:
        raise LabelSetError("a label set needs a name")
    age = config.get("age")
    if not age or isinstance(age, str) or not all(isinstance(a, str) and a for a in age):
        known = ", ".join([ADIENCE8_NAME, *BUILTIN])
        raise LabelSetError(
            f"label set {name!r}: 'age' must list the class names in order (built-in sets: {known})"
        )
    age = tuple(str(a) for a in age)
    if len(set(age)) != len(age):
        raise LabelSetError(f"label set {name!r}: duplicate class names in {list(age)}")
    if len(age) < 2:
        raise LabelSetError(f"label set {name!r}: needs at least two age classes")
    boundaries = config.get("boundaries")
    if boundaries is None or isinstance(boundaries, str) or len(boundaries) != len(age):
        raise LabelSetError(
            f"label set {name!r}: 'boundaries' must give the first year of each of the "
            f"{len(age)} classes, got {boundaries!r}"
        )
    try:
        bounds = tuple(float(b) for b in boundaries)
    except (TypeError, ValueError):
        raise LabelSetError(f"label set {name!r}: boundaries must be numbers") from None
    if not all(math.isfinite(b) for b in bounds):  # NaN compares false to everything
        raise LabelSetError(
            f"label set {name!r}: boundaries must be finite, got {list(boundaries)}"
        )
    if any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)) or bounds[0] < 0:
        raise LabelSetError(
            f"label set {name!r}: boundaries must be >= 0 and strictly increasing, got "
            f"{list(boundaries)}"
        )
    max_age = float(config.get("max_age") or max(100.0, bounds[-1] + 10))
    if not math.isfinite(max_age) or max_age <= bounds[-1]:
        raise LabelSetError(
            f"label set {name!r}: max_age {max_age:g} must be above the last boundary "
            f"{bounds[-1]:g}"
        )
    straddle = str(config.get("straddle") or "majority")
    if straddle not in STRADDLE_RULES:
        raise LabelSetError(f"label set {name!r}: straddle must be one of {STRADDLE_RULES}")
    explicit = config.get("adience") or {}
    if not isinstance(explicit, Mapping):
        raise LabelSetError(f"label set {name!r}: adience maps Adience buckets to classes")
    adience = _adience_map(age, bounds, straddle, {str(k): v for k, v in explicit.items()})
    ends = (*bounds[1:], max_age)
    midpoints = config.get("midpoints")
    if midpoints is None:
        midpoints = tuple((lo + hi) / 2 for lo, hi in zip(bounds, ends, strict=True))
    elif len(midpoints) != len(age):
        raise LabelSetError(f"label set {name!r}: one midpoint per class ({len(age)})")
    elif not all(isinstance(m, (int, float)) and math.isfinite(m) for m in midpoints):
        raise LabelSetError(f"label set {name!r}: midpoints must be finite numbers")
    return LabelSet(
        name=name,
        age=age,
        boundaries=bounds,
        adience=adience,
        midpoints=tuple(float(m) for m in midpoints),
        max_age=max_age,
        straddle=straddle,
        aliases=_index_map(config.get("aliases"), age, "aliases"),
        gender_aliases=_index_map(config.get("gender_aliases"), GENDERS, "gender_aliases"),
    )


def label_set_of_model(spec: Any) -> LabelSet:
    """The label set a model file (checkpoint or ONNX export) names: a built-in name or an
    inline definition. Never a file: a model file must not make the loader read paths on
    this machine (a ``path`` key, or a name that is a path, is refused)."""
    if isinstance(spec, str) and spec != ADIENCE8_NAME and spec not in BUILTIN:
        raise LabelSetError(f"a model file's label set must be built in or inline, got {spec!r}")
    if isinstance(spec, Mapping) and "path" in spec:
        raise LabelSetError("a model file's label set must not name a file (a 'path' key)")
    return load_label_set(spec)


def load_label_set(spec: LabelSet | str | Mapping[str, Any] | None) -> LabelSet:
    """The label set ``spec`` names.

    ``None`` (also an old checkpoint without one): adience8. A string: a built-in name
    (``adience8``, ``coarse3``, ``coarse2``, ``decades``) or a YAML file. A mapping (the
    ``labels`` node of the configs, a checkpoint's copy): ``name`` of a built-in with optional
    settings (``straddle``, ``adience``, ``aliases``, ...), a full definition (``name``,
    ``age``, ``boundaries`` and optionally ``max_age``, ``straddle``, ``adience``,
    ``midpoints``, ``aliases``, ``gender_aliases``), or ``path`` to a YAML file holding one.
    """
    if spec is None:
        return ADIENCE8
    if isinstance(spec, LabelSet):
        return spec
    if isinstance(spec, str):
        if spec == ADIENCE8_NAME or spec in BUILTIN:
            return label_set_from_config({"name": spec})
        if spec.endswith((".yaml", ".yml")) or "/" in spec:
            return label_set_from_config({"path": spec})
        raise LabelSetError(
            f"unknown label set {spec!r}: use {ADIENCE8_NAME}, {', '.join(BUILTIN)} or a YAML file"
        )
    if isinstance(spec, Mapping):
        from_omegaconf = getattr(spec, "_get_node", None) is not None
        if from_omegaconf:
            from omegaconf import OmegaConf

            spec = OmegaConf.to_container(spec, resolve=True)  # type: ignore[arg-type]
        return label_set_from_config(spec)
    raise LabelSetError(f"cannot read a label set from {type(spec).__name__}")
