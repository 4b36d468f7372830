"""The payload each tool puts in its evidence: one model per tool, the contract between the tool and its readers.

A tool writes its payload as a plain dict; the orchestrator checks it against the tool's model (`Tool.checked`)
and records the model's JSON dump, so result.json keeps exactly the keys the tool wrote. Code outside the tool
reads a payload typed: `RankPayload.of(item).differential`, never `item.payload["differential"]`.

Error evidence (error=True) carries an empty payload; `of` refuses it, so readers skip error items first.
A Tool that declares no model gets `NoPayload` (an empty payload only).
Numbers the tool rounds or counts are `Number` (int or float, kept as written: a float field would turn 1 into 1.0).
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from medagent.tools.contracts import Code, EvidenceDraft
from medagent.tools.errors import MedagentError

Number = int | float
M = TypeVar("M", bound=BaseModel)


class PayloadError(MedagentError):
    """An evidence payload that does not match its tool's model."""


def first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return f"{where}: {first['msg']}"


def payload_of(item: EvidenceDraft, model: type[M]) -> M:
    """The item's payload parsed as `model`; a PayloadError naming the first bad field when it does not match."""
    try:
        return model.model_validate(item.payload)
    except ValidationError as exc:
        tool = getattr(item, "tool", "evidence")
        raise PayloadError(f"{tool} payload is not a {model.__name__}: {first_error(exc)}") from exc


def dump(payload: BaseModel) -> dict:
    """What result.json and the trace keep: the keys the tool set, as JSON values."""
    return payload.model_dump(mode="json", exclude_unset=True, by_alias=True)


def fields_of(model: type[BaseModel]) -> list[str]:
    """The top-level keys a payload of `model` may have (every shape of a union)."""
    if issubclass(model, RootModel):
        names: list[str] = []
        for member in _members(model.model_fields["root"].annotation):
            names += [n for n in fields_of(member) if n not in names]
        return names
    return [field.alias or name for name, field in model.model_fields.items()]


def _members(annotation) -> list[type[BaseModel]]:  # noqa: ANN001 - a union or Annotated union of models
    found = []
    for arg in get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        elif get_args(arg):
            found += _members(arg)
    return found


def field_value(payload: BaseModel, key: str) -> object:
    """A top-level field of a parsed payload as a JSON value (None when this shape has no such field)."""
    shape = payload.root if isinstance(payload, RootModel) else payload
    name = next((n for n, f in type(shape).model_fields.items() if (f.alias or n) == key), None)
    if name is None or name not in shape.model_fields_set:
        return None
    return _jsonable(getattr(shape, name))


def _jsonable(value: object) -> object:
    if isinstance(value, BaseModel):
        return dump(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@functools.cache
def payload_models() -> dict[str, type[BaseModel]]:
    """Tool name -> payload model, for every tool of the adapter modules."""
    from medagent.tools.registry import all_tools

    return {tool.name: tool.payload for tool in all_tools()}


class Readable:
    @classmethod
    def of(cls: type[M], item: EvidenceDraft) -> M:
        """The item's payload parsed as this model (a PayloadError when it does not match)."""
        return payload_of(item, cls)


class Payload(Readable, BaseModel):
    """Base of the payload models: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Part(BaseModel):
    """Base of the models nested in payloads."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NoPayload(Payload):
    """A tool that puts nothing in its payload."""


# ------------------------------------------------------------------ imaging.describe


class Intensity(Part):
    min: Number
    max: Number
    mean: Number
    p1: Number
    median: Number
    p99: Number


AcquisitionValue = Number | str | list[Number | str]


class VolumeDescription(Part):
    kind: Literal["volume"]
    modality: str | None
    format: str
    shape: list[int]
    spacing_mm: list[Number]
    extent_mm: list[Number]
    orientation: str
    units: str
    intensity: Intensity
    acquisition: dict[str, AcquisitionValue] = Field(
        description="Safe DICOM acquisition tags (withheld_tags names any left out), or a NIfTI's slices and datatype"
    )


class ImageDescription(Part):
    kind: Literal["image"]
    modality: str | None
    format: str | None
    width: int
    height: int
    channels: int
    intensity: Intensity


Description = Annotated[VolumeDescription | ImageDescription, Field(discriminator="kind")]


class DescribePayload(Readable, RootModel[Description]):
    """imaging.describe: what a volume or a 2D image is."""


# ------------------------------------------------------------------ imaging.ct_quant


class Thresholds(Part):
    body: int
    lung_air: int
    bone: int
    fat: list[int]
    emphysema: int


class LungDensity(Part):
    mean_hu: Number
    perc15_hu: Number
    emphysema_index_pct: Number
    voxels: int


class CTVolumes(Part):
    """The first item: tissue volumes."""

    volumes_ml: dict[str, Number] = Field(description="body, lungs, bone, fat, ... in mL")
    spacing_mm: list[Number]
    shape: list[int]
    scanned_extent_mm: Number
    label_map: dict[str, str] = Field(description="label value -> structure in the labels NIfTI")
    png_slice_index_ras: int
    thresholds_hu: Thresholds
    limits: list[str]
    method: str
    dicom_seg: str | None = Field(default=None, description="whether the masks were also written as DICOM SEG, or why not")


class CTLungDensity(Part):
    """The second item: lung density, or None when no lung was found (then no lung_volume_ml)."""

    lung_density: LungDensity | None
    lung_volume_ml: Number | None = None
    scanned_extent_mm: Number


class CTQuantPayload(Readable, RootModel[CTVolumes | CTLungDensity]):
    """imaging.ct_quant: two items per call, the volumes and the lung density."""


# ------------------------------------------------------------------ imaging.segment


class BoundingBox(Part):
    voxel_min: list[int]
    voxel_max: list[int]
    ras_min_mm: list[Number]
    ras_max_mm: list[Number]


class SegmentationPayload(Payload):
    """imaging.segment: per-structure volumes of one MONAI bundle run."""

    bundle: str
    bundle_version: str
    volumes_ml: dict[str, Number]
    bounding_boxes: dict[str, BoundingBox] = Field(description="structures with at least one voxel")
    labels: dict[str, str] = Field(description="label value -> structure name")
    roi_size: list[int]
    sw_batch_size: int
    device: str
    seconds: Number
    dicom_seg: str | None = Field(default=None, description="whether the masks were also written as DICOM SEG, or why not")


# ------------------------------------------------------------------ imaging.segment_text


class SATSegmentPayload(Payload):
    """imaging.segment_text: one structure SAT segmented (one item per structure; the run's settings repeated)."""

    target: str = Field(description="the name the call gave")
    term: str = Field(description="SAT's class it resolved to (the text prompt)")
    region: str
    volume_ml: Number
    voxels: int = Field(description="voxels of the input grid in the mask")
    voxel_volume_ml: Number
    mask: str = Field(description="this structure's NIfTI mask, relative to the output folder")
    model: str
    modality: str = Field(description="SAT's modality code: ct, mri, us or pet")
    labels: dict[str, str] = Field(description="label-map value -> SAT term")
    window: list[int]
    overlap: Number
    sw_batch_size: int
    windows: int
    padded: bool = Field(description="the processed scan was smaller than one window and was zero-padded")
    processed_shape: list[int]
    processed_spacing_mm: list[Number]
    orientation: str
    normalisation: str
    input_shape: list[int]
    device: str
    dtype: str
    seconds: Number
    dicom_seg: str | None = None
    notes: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------ speech.transcribe


class Word(Part):
    start: Number
    end: Number
    text: str
    probability: Number


class Segment(Part):
    start: Number
    end: Number
    text: str
    confidence: Number
    words: list[Word] | None = Field(default=None, description="only when word timestamps were asked for")
    avg_logprob: Number | None = Field(default=None, description="Whisper's average token log-probability")
    no_speech_prob: Number | None = Field(default=None, description="Whisper's probability that the segment is not speech")


class TranscriptPayload(Payload):
    """speech.transcribe: the whole transcript and its time-stamped segments."""

    transcript: str
    segments: list[Segment]
    language: str | None
    language_probability: Number | None
    duration_s: Number
    silent_s: Number
    non_speech_s: Number = Field(default=0, description="seconds the voice-activity detector judged not speech")
    prompt: str | None = Field(default=None, description="the vocabulary prompt Whisper was given (never the history)")
    runtime: str
    model: str
    real_time_factor: Number
    notes: list[str]


# ------------------------------------------------------------------ pathology.classify


class RankedLabel(Part):
    label: str
    probability: Number


class Tile(Part):
    rank: int
    box: list[int] = Field(description="left, top, right, bottom in pixels")
    probability: Number = Field(description="of the winning label")
    tissue_fraction: Number
    artifact: str


class PathologyPayload(Payload):
    """pathology.classify: the labels ranked by probability and the tiles behind the winner."""

    model: str
    label_set: str
    ranked: list[RankedLabel]
    top_label: str
    image_size: list[int]
    tiled: bool
    grid_tiles: int
    tiles_scored: int
    top_tiles: list[Tile]


# ------------------------------------------------------------------ imaging.classify / imaging.similar (PMC-CLIP)


class ClassifyPayload(Payload):
    """imaging.classify: PMC-CLIP's zero-shot probabilities over the candidate labels."""

    model: str
    label_source: str = Field(description="arguments, question, or built-in set NAME")
    labels_given: int
    ranked: list[RankedLabel] = Field(description="the (at most ten) most probable labels, most probable first")
    top_label: str
    image_size: list[int] = Field(description="width, height in pixels")
    notes: list[str] = Field(description="what the call asked for that was changed: an empty list, a cut list")


class SimilarImage(Part):
    rank: int
    file: str = Field(description="path relative to the indexed folder")
    similarity: Number = Field(description="cosine of the PMC-CLIP image embeddings")
    caption: str | None = None
    label: str | None = None
    same_content: bool = Field(description="the file's bytes are those of the query image")


class SimilarPayload(Payload):
    """imaging.similar: the nearest images of an indexed folder."""

    model: str
    folder: str
    indexed: int
    index_note: str = Field(description="whether the index was reused, built or rebuilt, and why")
    hits: list[SimilarImage]


# ------------------------------------------------------------------ imaging.vqa


class VQAChoice(Part):
    letter: str
    text: str
    probability: Number = Field(description="next-token probability of the option's letter among the options")


class VQAPayload(Payload):
    """imaging.vqa: RadFM's or MedVInT-TD's answer to one question (`model` says which answered, `backend_reason` why)."""

    question: str
    answer: str = Field(description="the generated answer; for a multiple-choice question the chosen option's text")
    model: str
    input_shape: list[int]
    generated: str = Field(description="how the answer was produced: 'greedy', or next-token logits over the options")
    backend: Literal["radfm", "medvint"] | None = None
    backend_reason: str | None = None
    choices: list[VQAChoice] | None = Field(default=None, description="MedVInT-TD: the options, each with its probability")
    chosen: str | None = Field(default=None, description="MedVInT-TD: the letter of the chosen option")
    score: Number | None = Field(default=None, description="MedVInT-TD: the chosen option's probability among the options")
    generated_text: str | None = Field(default=None, description="MedVInT-TD: its free continuation after the prompt")
    similarity_choice: str | None = Field(
        default=None, description="the letter of the option the generated text is most similar to (difflib ratio)")
    similarity: Number | None = Field(default=None, description="that similarity, 0..1")


# ------------------------------------------------------------------ knowledge.link


class Mention(Part):
    id: str
    label: str
    span: list[int] = Field(description="start, end character offsets in the text")
    text: str
    method: str
    score: Number
    segment_confidence: Number | None = Field(
        default=None, description="for text from a transcript: the confidence of the segment the phrase was heard in")
    segment_avg_logprob: Number | None = Field(default=None, description="that segment's average token log-probability")
    segment_no_speech_prob: Number | None = Field(default=None, description="that segment's no-speech probability")


class DerivedPhenotype(Part):
    id: str
    label: str
    from_: str = Field(alias="from", description="the measurement it was derived from")
    reason: str


class LinkPayload(Payload):
    """knowledge.link: phenotypes found in a text, and those derived from the case's measurements."""

    source: str
    present: list[Mention]
    excluded: list[Mention]
    derived: list[DerivedPhenotype]
    present_ids: list[str]
    excluded_ids: list[str]
    doubtful: list[Mention] = Field(
        default_factory=list, description="negations heard in low-confidence transcript segments: reported, not used")
    against: list[DerivedPhenotype] = Field(
        default_factory=list, description="abnormalities a measurement argues against (a low haemoglobin: polycythaemia)")


# ------------------------------------------------------------------ knowledge.rank


class PhenotypeMatch(Part):
    term: str
    label: str
    matched: str
    matched_label: str
    kind: str
    frequency: Number
    contribution: Number


class RankedCandidate(Part):
    name: str
    codes: list[Code]
    score: Number | None
    rationale: str
    evidence: list[str]
    phenotypes: list[PhenotypeMatch]


class Ranking(Payload):
    """A payload with a differential: the reporter merges the differentials of every such tool."""

    differential: list[RankedCandidate]


# ------------------------------------------------------------------ imaging.diagnose


class Disorder(Part):
    rank: int
    disorder: str
    column: int = Field(description="the model's output column")
    icd10: str | None = Field(description="3-character ICD-10-CM category, None where the authors' map has none")
    probability: Number


class DiagnosedScan(Part):
    attachment: str
    modality: str
    modality_id: int = Field(description="early fusion's modality embedding row; 0 for late fusion")
    slices_used: int
    slices_total: int


class DiagnosePayload(Ranking):
    """imaging.diagnose: RadDiag's most probable disorders (multi-label sigmoid) with their ICD-10-CM codes. As a
    `Ranking` its `differential` (the same disorders, rationale "from imaging") joins the case's differential."""

    model: str
    fusion: str
    disorders: list[Disorder]
    icd10_codes: list[str] = Field(description="the listed disorders' codes, first seen first")
    scans: list[DiagnosedScan]
    left_out: list[str] = Field(description="attachments beyond the model's scan limit, not examined")
    combined: str = Field(description="how the scans' outputs became one")


class SourceRef(Part):
    source: str
    evidence: str


class Conflict(Part):
    term: str
    label: str
    present_term: str
    present_label: str
    present_in: list[SourceRef]
    denied_in: list[SourceRef]
    kept: Literal["present", "absent"]
    statement: str


class RankPayload(Ranking):
    """knowledge.rank: the ranked diseases and the phenotypes they were ranked for."""

    present: list[str]
    excluded: list[str]
    conflicts: list[Conflict]


# ------------------------------------------------------------------ knowledge.lookup


class NamedId(Part):
    id: str
    name: str


class Parent(Part):
    id: str
    label: str


class DiseaseLookup(Part):
    id: str
    name: str
    phenotypes: list[str]
    icd10cm: str | None


class ICDLookup(Part):
    id: str
    system: Literal["ICD-10-CM"]
    description: str
    parent: str | None


class TermLookup(Part):
    id: str
    label: str
    definition: str
    synonyms: list[str]
    parents: list[Parent]
    xrefs: list[str]
    icd10cm: str | None
    information_content: Number


class UserConceptLookup(Part):
    """A concept of the user's own ontologies (OBO, UMLS)."""

    id: str
    label: str
    definition: str
    synonyms: list[str]
    parents: list[Parent]
    xrefs: list[str]
    linked: list[NamedId] = Field(description="cross-references the packaged graph knows")
    source: str


class LookupPayload(Readable, RootModel[DiseaseLookup | ICDLookup | TermLookup | UserConceptLookup]):
    """knowledge.lookup: a disease, an ICD-10-CM code, an HPO term, or a concept of the user's ontologies."""
