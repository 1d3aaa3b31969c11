"""The prediction server's request and answer bodies as pydantic models.

One definition serves three purposes: it reads a request (a JSON body is parsed and
validated by pydantic in one pass; a multipart form is turned into the same model), it is
what the inference workers receive, and it is the ``/openapi.json`` schema a client
generator reads. Box counts are checked before the boxes themselves are read, so a body of
a million boxes costs a count, not a million validations.
"""

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import from_json

from agegender.api import face_of_box

#: The validation context keys of the limits counted before anything is read.
MAX_BOXES_KEY = "max_boxes_per_image"
MAX_IMAGES_KEY = "max_batch_images"


def _too_many(value: Any, info: ValidationInfo, key: str, what: str) -> Any:
    """``value`` unchanged, or ValueError when it is a list longer than the context's limit
    (checked before its entries are read: the work of a request stays bounded)."""
    limit = (info.context or {}).get(key)
    if limit is not None and isinstance(value, list) and len(value) > limit:
        raise ValueError(f"too many {what}: {len(value)}{_IN[what]} (limit {key}={limit})")
    return value


_IN = {"boxes": " in one image", "images": ""}


def _box(value: Any) -> tuple[float, float, float, float]:
    """A caller's box by the API's own rule (:func:`~agegender.api.face_of_box`): four
    numbers, never text read digit by digit, finite, of pixel size, not empty."""
    x1, y1, x2, y2 = face_of_box(value).box
    return (x1, y1, x2, y2)


Box = Annotated[
    tuple[float, float, float, float],
    BeforeValidator(_box),
    WithJsonSchema(
        {
            "type": "array",
            "items": {"type": "number"},
            "minItems": 4,
            "maxItems": 4,
            "description": "x1, y1, x2, y2 in the image's pixels (x2 > x1, y2 > y1)",
        }
    ),
]


def _image(value: Any) -> str | bytes:
    if not isinstance(value, (str, bytes)):
        raise ValueError("'image' must be a file upload or base64 text")
    return value


#: An image as sent: base64 text in JSON (a ``data:`` URL too), the file's bytes in a form.
#: Decoded per image by the workers, so one bad image of a batch fails alone.
ImageData = Annotated[
    str | bytes,
    BeforeValidator(_image),
    WithJsonSchema({"type": "string", "description": "the image file, base64 (a data: URL too)"}),
]


class ImageRequest(BaseModel):
    """``POST /predict``: one image and, optionally, your own face boxes."""

    image: ImageData
    boxes: list[Box] | None = Field(
        None,
        description="your own face boxes in pixels: detection is skipped and these are "
        "classified (at most max_boxes_per_image)",
    )

    @field_validator("boxes", mode="before")
    @classmethod
    def _count_boxes(cls, value: Any, info: ValidationInfo) -> Any:
        return _too_many(value, info, MAX_BOXES_KEY, "boxes")


class BatchRequest(BaseModel):
    """``POST /predict/batch``: several images, each with optional boxes."""

    images: list[ImageRequest] = Field(
        min_length=1, description="at most max_batch_images, each read like /predict's body"
    )

    @field_validator("images", mode="before")
    @classmethod
    def _count_images(cls, value: Any, info: ValidationInfo) -> Any:
        return _too_many(value, info, MAX_IMAGES_KEY, "images")


class Face(BaseModel):
    """One face of an answer (the Python API's ``FaceResult.to_dict()``, pixels rounded to
    0.01 px and probabilities to 1e-6, plus ``age_range``)."""

    box: list[float] = Field(description="x1, y1, x2, y2 in the image's pixels (0.01 px)")
    score: float = Field(description="the detector's confidence (1 for your own boxes)")
    landmarks: list[list[float]] | None = Field(
        None,
        description="5 (x, y) points in the image's pixels (0.01 px), in this order: left "
        "eye, right eye, nose, mouth left, mouth right, left and right as seen in the image "
        "(the person's right eye is the left one); null when the detector gives none or "
        "you sent the boxes",
    )
    age: str | None = Field(None, description="the label set's class (null: abstained)")
    age_prob: float | None = Field(None, description="the age class's probability")
    age_range: list[float] | None = Field(
        None,
        description="the years [lo, hi) the age class covers, hi exclusive (15-20 is "
        "[15, 21]); null when abstained. Every class's years: GET /info, labels.age_years",
    )
    gender: str | None = Field(None, description="male or female (null: abstained)")
    gender_prob: float | None = Field(None, description="the gender's probability")
    age_probs: dict[str, float] = Field(description="every age class's probability, in order")
    gender_probs: dict[str, float] = Field(description="every gender's probability")
    abstained: list[str] = Field(description="tasks below the server's min_prob: no label")


class ImageAnswer(BaseModel):
    """One image's answer."""

    status: str = Field(description="ok, no_face, or error: <reason> (the CSV's status)")
    width: int | None = Field(None, description="the image's width in pixels (null: error)")
    height: int | None = Field(None, description="the image's height in pixels (null: error)")
    faces: list[Face]
    error: str | None = None


class BatchAnswer(BaseModel):
    """``POST /predict/batch``'s answer: one entry per image, in order."""

    images: list[ImageAnswer]


class Error(BaseModel):
    """Every refusal: why, as the CSV's status would say it, or the limit that was passed."""

    error: str = Field(description="why: the CSV status's reason, or the limit")


def request_model(many: bool) -> type[ImageRequest] | type[BatchRequest]:
    """The body of ``/predict/batch`` (``many``) or ``/predict``."""
    return BatchRequest if many else ImageRequest


def read_json(data: bytes, many: bool, context: dict[str, Any]) -> ImageRequest | BatchRequest:
    """A JSON body parsed and validated in one pass (pydantic-core's parser: a body nested
    deeper than its recursion limit is an error, never a crash). ValueError: why not."""
    try:
        return request_model(many).model_validate_json(data, context=context)
    except ValidationError as exc:
        raise ValueError(reason(exc, data)) from None


def read_form(
    images: list[Any], boxes: str | None, many: bool, context: dict[str, Any]
) -> ImageRequest | BatchRequest:
    """A multipart form's fields (file bytes, and the ``boxes`` field's JSON text) as the
    same model a JSON body gives. ValueError: why not."""
    if many and boxes:
        raise ValueError("boxes go in JSON requests to /predict/batch")
    try:
        parsed = None if not boxes else from_json(boxes)
    except ValueError as exc:
        raise ValueError(f"'boxes' is not valid JSON ({_short(str(exc))})") from None
    entries = [{"image": image, "boxes": parsed} for image in images]
    body: dict[str, Any] = {"images": entries} if many else (entries[0] if entries else {})
    try:
        return request_model(many).model_validate(body, context=context)
    except ValidationError as exc:
        raise ValueError(reason(exc, b"{}")) from None


def count_boxes(payload: ImageRequest | BatchRequest) -> int:
    """Boxes in a request, all images together (``max_boxes_per_request``)."""
    entries = payload.images if isinstance(payload, BatchRequest) else [payload]
    return sum(len(entry.boxes or ()) for entry in entries)


def reason(error: ValidationError, data: bytes) -> str:
    """The first problem of a refused body in a client's terms: the field (``images[2].boxes
    [0]``) and what is wrong with it; never the value sent (it may be megabytes)."""
    problems = error.errors(include_url=False, include_input=False)
    first = problems[0]
    kind, where = first["type"], _where(first["loc"])
    message = str(first.get("msg", kind)).removeprefix("Value error, ")
    if kind == "json_invalid":
        detail = str((first.get("ctx") or {}).get("error", message))
        if "recursion limit" in detail:
            return "malformed JSON (nested too deeply)"
        return f"malformed JSON ({_short(detail)})" if data.strip() else "empty body: send an image"
    if kind in ("model_type", "model_attributes_type", "dict_type") and not where:
        return "expected a JSON object"
    if message.startswith("too many"):
        return message
    if kind == "missing":
        field = str(first["loc"][-1])
        owner = _where(first["loc"][:-1])
        return f"no '{field}' in {owner or 'the request'}"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"bad '{where}': {_short(message)}{more}"


def _where(loc: tuple[int | str, ...]) -> str:
    """A validation location as a client writes it: ``images[2].boxes[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(text: str, limit: int = 200) -> str:
    """One line, at most ``limit`` characters (a message quoting a huge input stays small)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def schemas() -> dict[str, Any]:
    """Every body above as a JSON schema by name, for ``/openapi.json``'s components."""
    models: list[Callable[..., Any]] = [
        ImageRequest,
        BatchRequest,
        Face,
        ImageAnswer,
        BatchAnswer,
        Error,
    ]
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    return top["$defs"]
