"""FHIR R4 in and out, through `fhir.resources` (its R4B models: the package's top level is R5, which has no Media).

In: a Bundle becomes a case. Patient gives age and sex only (identifiers, names, addresses, contacts and the birth
date itself are dropped, said once); Observations with a value become findings (LOINC analytes under the names the
findings table knows, UCUM units spelt as it spells them; a unit it cannot convert is kept as text, said); HPO-coded
Observations and Conditions become phenotypes (refuted or negative ones excluded); other Conditions become a line of
history, as does a plain-text DocumentReference (a note); Media, other DocumentReferences and ImagingStudy (through its Endpoint's address) become attachments, their content
base64 in the bundle or a relative path to a file shipped beside it (absolute URLs and paths leaving the folder are
refused). Nothing from a bundle is trusted as a diagnosis: its Conditions are history, never the answer.

Out: a collection Bundle holding the Patient (sex only), one Observation per evidence item and per case finding, the
differential as provisional Conditions with their codes (ICD-10-CM, OMIM, ORPHA, HPO), each citing the Observations of
the evidence it rests on (`Condition.evidence.detail`), and a DiagnosticReport whose conclusion is the report.
Resource ids are the evidence ids (`E3`), `finding-N` and `dx-N`, so a reader can follow a citation back.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from medagent.tools.contracts import RESEARCH_NOTICE, Case, Result
from medagent.tools.errors import CaseError
from medagent.tools.safeio import Limits, current, decode_utf8, load_json, read_limited

HPO_SYSTEMS = ("http://purl.obolibrary.org/obo/hp.owl", "http://human-phenotype-ontology.org", "https://hpo.jax.org")
LOINC = "http://loinc.org"
# Code systems written out (HL7 terminology's canonical URLs where it has one).
SYSTEM_URLS = {
    "ICD-10-CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "OMIM": "https://www.omim.org",
    "ORPHA": "http://www.orpha.net",
    "HPO": "http://purl.obolibrary.org/obo/hp.owl",
}
SYSTEM_NAMES = {url: name for name, url in SYSTEM_URLS.items()}
EVIDENCE_EXTENSION = "https://medagent.dev/fhir/StructureDefinition/evidence"

# LOINC codes of the analytes specialists/knowledge/findings.py has reference ranges for -> its names.
LOINC_NAMES = {
    "718-7": "haemoglobin", "6690-2": "white blood cells", "26464-8": "white blood cells", "777-3": "platelets",
    "26515-7": "platelets", "2951-2": "sodium", "2947-0": "sodium", "2823-3": "potassium", "6298-4": "potassium",
    "2345-7": "glucose", "2339-0": "glucose", "2160-0": "creatinine", "8310-5": "body temperature",
    "8867-4": "heart rate", "9279-1": "respiratory rate", "8480-6": "systolic blood pressure",
    "59408-5": "oxygen saturation", "2708-6": "oxygen saturation",
}  # fmt: skip
# UCUM codes -> the spelling the findings table accepts.
UCUM_UNITS = {"10*9/L": "10^9/L", "10*3/uL": "10^3/uL", "Cel": "°C", "mm[Hg]": "mmHg", "/min": "/min", "{beats}/min": "/min",
              "{breaths}/min": "/min", "umol/L": "µmol/L", "mmol/L": "mmol/L", "mg/dL": "mg/dL", "g/dL": "g/dL",
              "g/L": "g/L", "%": "%", "meq/L": "meq/L", "mEq/L": "meq/L"}  # fmt: skip
CONTENT_KINDS = {
    "image/png": ("image", ".png"), "image/jpeg": ("image", ".jpg"), "image/tiff": ("image", ".tiff"),
    "application/dicom": ("image", ".dcm"), "application/x-nifti": ("volume", ".nii.gz"),
    "application/nifti": ("volume", ".nii.gz"), "audio/wav": ("audio", ".wav"), "audio/x-wav": ("audio", ".wav"),
    "audio/wave": ("audio", ".wav"), "audio/flac": ("audio", ".flac"), "text/plain": ("document", ".txt"),
    "application/pdf": ("document", ".pdf"),
}  # fmt: skip
PATIENT_IDENTIFYING = ("identifier", "name", "telecom", "address", "photo", "contact", "birthDate", "link",
                       "maritalStatus", "communication", "generalPractitioner", "managingOrganization")  # fmt: skip


@dataclass
class ConvertedBundle:
    """A case from a bundle: the case.json dict, what was dropped or kept as text, and the files it needs
    (case-folder relative name -> decoded bytes, or the shipped file or folder to copy)."""

    case: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    files: dict[str, bytes | Path] = field(default_factory=dict)


def is_bundle(raw: object) -> bool:
    return isinstance(raw, dict) and raw.get("resourceType") == "Bundle"


def _read_json(path: Path, limits: Limits) -> object:
    """The file as JSON within the case size limit; base64 content may make one string as long as the file."""
    data = read_limited(path, limits.case_bytes, "FHIR bundle")
    return load_json(decode_utf8(data, str(path)), str(path), replace(limits, text_chars=max(limits.case_bytes, limits.text_chars)))


def read_fhir(path: Path, limits: Limits | None = None) -> ConvertedBundle | None:
    """The case a FHIR file makes (read once), or None when it is not FHIR: not a regular file (a FIFO is never
    opened), or not a JSON object with a top-level `resourceType`. None leaves the file to case intake and its
    messages; a FHIR resource that is not a valid R4 Bundle is refused here in one line."""
    limits = limits or current()
    try:
        if not path.is_file():
            return None
        with path.open("rb") as handle:
            head = handle.read(4096)
        if b'"resourceType"' not in head or head.lstrip()[:1] != b"{":
            return None
        raw = _read_json(path, limits)
    except (OSError, CaseError):
        return None
    if not (isinstance(raw, dict) and "resourceType" in raw):
        return None
    return bundle_to_case(raw, str(path), path.parent)


def read_bundle(path: Path, limits: Limits | None = None) -> ConvertedBundle:
    """A FHIR bundle file -> a case."""
    return bundle_to_case(_read_json(path, limits or current()), str(path), path.parent)


def _validated(raw: dict, source: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    if not is_bundle(raw):
        kind = raw.get("resourceType") if isinstance(raw, dict) else type(raw).__name__
        raise CaseError(f"{source}: not a FHIR Bundle (resourceType {kind!r})")
    for index, entry in enumerate(raw.get("entry") or []):
        kind = (entry.get("resource") or {}).get("resourceType") if isinstance(entry, dict) else None
        try:
            get_fhir_model_class(str(kind))
        except (KeyError, ValueError):
            raise CaseError(f"{source}: entry.{index}: resource type {kind!r} is not FHIR R4 (medagent reads R4 bundles)") from None
    try:
        return Bundle.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise CaseError(f"{source}: not a valid FHIR R4 Bundle: {where}: {first['msg']}{more}") from None
    except (KeyError, ValueError) as exc:  # fhir.resources' own lookups (a nested resource of an unknown type)
        raise CaseError(f"{source}: not a valid FHIR R4 Bundle ({exc})") from None


def _text(concept: Any) -> str:
    """A CodeableConcept's words: its text, else its first coding's display, else its code."""
    if concept is None:
        return ""
    if concept.text:
        return concept.text
    for coding in concept.coding or []:
        if coding.display or coding.code:
            return coding.display or coding.code
    return ""


def _hpo_ids(concept: Any) -> list[str]:
    ids = []
    for coding in (concept.coding or []) if concept is not None else []:
        code = str(coding.code or "")
        if (coding.system or "").rstrip("/") in HPO_SYSTEMS or re.fullmatch(r"HP:\d{7}", code):
            ids += [code] if re.fullmatch(r"HP:\d{7}", code) else [f"HP:{code.zfill(7)}"] if code.isdigit() else []
    return ids


def _loinc(concept: Any) -> str | None:
    return next((c.code for c in (concept.coding or []) if c.system == LOINC and c.code), None) if concept else None


def _negative(resource: Any) -> bool:
    """A refuted Condition, or an Observation whose value is false or whose interpretation is negative/absent."""
    status = getattr(resource, "verificationStatus", None)
    if status is not None and any(c.code == "refuted" for c in status.coding or []):
        return True
    if getattr(resource, "valueBoolean", None) is False:
        return True
    for concept in getattr(resource, "interpretation", None) or []:
        if any(str(c.code).upper() in ("NEG", "ABSENT", "ND") for c in concept.coding or []):
            return True
    return False


def _quantity_text(quantity: Any) -> str:
    return f"{quantity.value}{' ' + (quantity.unit or quantity.code) if (quantity.unit or quantity.code) else ''}"


def _measurement(observation: Any, label: str, warnings: list[str]) -> dict[str, Any] | None:
    from medagent.specialists.knowledge.findings import TABLE

    quantity = observation.valueQuantity
    analyte = LOINC_NAMES.get(_loinc(observation.code) or "")
    name = analyte or _text(observation.code) or "observation"
    if quantity is not None and quantity.value is not None:
        unit = UCUM_UNITS.get(str(quantity.code or ""), quantity.unit or quantity.code)
        value: float | str = float(quantity.value)
        if analyte:
            units = next(entry.units for entry in TABLE if analyte in entry.names)
            if (unit or "").strip().lower().replace(" ", "") not in units:
                warnings.append(f"{label}: unit {unit!r} for {analyte} cannot be converted; kept as text, no phenotype is derived from it")
                value, unit = _quantity_text(quantity), None
    elif observation.valueString:
        value, unit = observation.valueString, None
    elif observation.valueCodeableConcept is not None:
        value, unit = _text(observation.valueCodeableConcept), None
    elif observation.valueInteger is not None:
        value, unit = float(observation.valueInteger), None
    else:
        return None
    finding: dict[str, Any] = {"name": name, "value": value}
    if unit:
        finding["unit"] = unit
    for reference in observation.referenceRange or []:
        if reference.text:
            finding["reference_range"] = reference.text
        elif reference.low is not None or reference.high is not None:
            low = reference.low.value if reference.low is not None else ""
            high = reference.high.value if reference.high is not None else ""
            bound = reference.low or reference.high
            ref_unit = UCUM_UNITS.get(str(bound.code or ""), bound.unit or bound.code or "")
            finding["reference_range"] = f"{low}-{high} {ref_unit}".strip()
        break
    return finding


def _attachment_file(content: Any, base: Path, name: str, source: str, where: str) -> tuple[str, bytes | Path, str | None]:
    """(case-folder path, bytes or shipped file, content type) for one FHIR Attachment."""
    content_type = (content.contentType or "").split(";")[0].strip().lower() or None
    if content.data is not None:
        try:
            data = base64.b64decode(content.data, validate=True) if isinstance(content.data, str) else bytes(content.data)
        except (binascii.Error, ValueError) as exc:
            raise CaseError(f"{source}: {where}: content.data is not valid base64 ({exc})") from None
        extension = CONTENT_KINDS.get(content_type or "", (None, ""))[1]
        title = Path(content.title or "").name
        filename = re.sub(r"[^A-Za-z0-9_.-]", "_", title) if Path(title).suffix else f"{name}{extension}"
        return f"files/{filename}", data, content_type
    url = str(content.url or "")
    if not url:
        raise CaseError(f"{source}: {where}: the attachment has neither data nor url")
    return _shipped(url, base, source, where), base / url, content_type


def _shipped(url: str, base: Path, source: str, where: str) -> str:
    """A relative URL to a file shipped with the bundle, checked: no scheme, not absolute, stays in the folder."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url) or url.startswith(("/", "\\")) or Path(url).is_absolute():
        raise CaseError(f"{source}: {where}: url {url!r} is absolute; medagent reads only files shipped beside the bundle (a relative path)")
    root = base.resolve()
    target = (base / url).resolve()
    if not target.is_relative_to(root):
        raise CaseError(f"{source}: {where}: url {url!r} leads outside the bundle's folder")
    if not target.exists():
        raise CaseError(f"{source}: {where}: url {url!r} names a file the bundle does not ship ({target} not found)")
    return url


def _kind(content_type: str | None, path: str, modality: str | None) -> str:
    lower = path.lower()
    if lower.endswith((".nii", ".nii.gz")):
        return "volume"
    kind = CONTENT_KINDS.get(content_type or "", (None, ""))[0]
    if kind is None:
        suffix = {".png": "image", ".jpg": "image", ".jpeg": "image", ".tif": "image", ".tiff": "image", ".dcm": "image",
                  ".wav": "audio", ".flac": "audio", ".txt": "document", ".pdf": "document"}  # fmt: skip
        kind = next((k for s, k in suffix.items() if lower.endswith(s)), None)
    if kind is None:
        raise CaseError(f"attachment {path!r}: content type {content_type!r} is not one medagent reads")
    if kind == "image" and (modality or "").upper() == "SM":  # slide microscopy
        return "pathology"
    return kind


def bundle_to_case(raw: dict, source: str, base: Path) -> ConvertedBundle:
    """Convert a parsed bundle (files it references are looked for under `base`). Raises CaseError, one line."""
    bundle = _validated(raw, source)
    resources = [entry.resource for entry in bundle.entry or [] if entry.resource is not None]
    by_reference = {f"{r.get_resource_type()}/{r.id}": r for r in resources if r.id}
    by_reference.update({e.fullUrl: e.resource for e in bundle.entry or [] if e.fullUrl and e.resource is not None})
    out = ConvertedBundle(case={"schema_version": 1, "id": "fhir-case", "patient": {"sex": "unknown"}, "history": "",
                                "findings": [], "phenotypes": {"present": [], "excluded": []}, "attachments": []})
    case, history = out.case, []
    patients = [r for r in resources if r.get_resource_type() == "Patient"]
    if len(patients) > 1:
        raise CaseError(f"{source}: the bundle holds {len(patients)} Patients; a case is about one patient")
    dates = [str(r.effectiveDateTime)[:10] for r in resources if getattr(r, "effectiveDateTime", None)]
    if patients:
        patient = patients[0]
        case["patient"]["sex"] = {"male": "male", "female": "female", "other": "other"}.get(str(patient.gender or ""), "unknown")
        if patient.birthDate:
            on = date.fromisoformat(max(dates)) if dates else date.today()
            born = patient.birthDate if isinstance(patient.birthDate, date) else date.fromisoformat(str(patient.birthDate)[:10])
            age = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
            if 0 <= age <= 130:
                case["patient"]["age_years"] = float(age)
        dropped = [name for name in PATIENT_IDENTIFYING if getattr(patient, name, None)]
        if dropped:
            out.warnings.append(f"Patient: {', '.join(dropped)} dropped; medagent keeps only age and sex")
        # The Patient's resource id may be a record number: it is never used, not even as the case id.
    if bundle.id and re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", bundle.id):
        case["id"] = bundle.id
    counts: dict[str, int] = {}
    for index, resource in enumerate(resources):
        kind = resource.get_resource_type()
        counts[kind] = counts.get(kind, 0) + 1
        label = f"{kind} {counts[kind]}" + (f" ({_text(getattr(resource, 'code', None))})" if getattr(resource, "code", None) else "")
        where = f"entry.{index} ({kind})"
        if kind == "Condition":
            hpo = _hpo_ids(resource.code)
            if hpo:
                case["phenotypes"]["excluded" if _negative(resource) else "present"] += hpo
            elif _text(resource.code):
                onset = f" (since {str(resource.onsetDateTime)[:10]})" if getattr(resource, "onsetDateTime", None) else ""
                history.append(f"{'No ' if _negative(resource) else 'Known condition: '}{_text(resource.code)}{onset}.")
        elif kind == "Observation":
            hpo = _hpo_ids(resource.code) + _hpo_ids(resource.valueCodeableConcept)
            if hpo:
                case["phenotypes"]["excluded" if _negative(resource) else "present"] += hpo
                continue
            finding = _measurement(resource, label, out.warnings)
            if finding is not None:
                case["findings"].append(finding)
        elif kind in ("Media", "DocumentReference"):
            contents = [resource.content] if kind == "Media" else [c.attachment for c in resource.content or []]
            modality = _text(resource.modality) if kind == "Media" and resource.modality else None
            for number, content in enumerate(contents, 1):
                name = f"{kind.lower()}{counts[kind]}" + (f"_{number}" if len(contents) > 1 else "")
                path, payload, content_type = _attachment_file(content, base, name, source, where)
                if kind == "DocumentReference" and content_type == "text/plain":  # a clinical note: it is history
                    raw_text = payload if isinstance(payload, bytes) else read_limited(payload, current().case_bytes, "note")
                    history.append(decode_utf8(raw_text, f"{source}: {where}").strip())
                    continue
                try:
                    attachment_kind = _kind(content_type, path, modality)
                except CaseError as exc:
                    raise CaseError(f"{source}: {where}: {exc}") from None
                out.files[path] = payload
                case["attachments"].append({"id": name, "kind": attachment_kind, "path": path,
                                            **({"modality": modality.upper()} if modality and attachment_kind != "pathology" else {}),
                                            **({"description": content.title} if content.title else {})})
        elif kind == "ImagingStudy":
            for number, series in enumerate(resource.series or [], 1):
                endpoints = [*(series.endpoint or []), *(resource.endpoint or [])]
                endpoint = next((by_reference.get(str(e.reference)) for e in endpoints if by_reference.get(str(e.reference))), None)
                if endpoint is None or not endpoint.address:
                    raise CaseError(f"{source}: {where}: series {number} has no Endpoint in the bundle giving the folder of its DICOM files")
                path = _shipped(str(endpoint.address), base, source, where)
                out.files[path] = base / path
                name = f"study{counts[kind]}_{number}"
                case["attachments"].append({"id": name, "kind": "volume", "path": path,
                                            **({"modality": series.modality.code} if series.modality and series.modality.code else {}),
                                            **({"series_uid": series.uid} if series.uid else {}),
                                            **({"description": series.description} if series.description else {})})
    case["history"] = " ".join(history)
    for key in ("present", "excluded"):
        case["phenotypes"][key] = list(dict.fromkeys(case["phenotypes"][key]))
    return out


def write_case_folder(converted: ConvertedBundle, folder: Path) -> Path:
    """case.json and the files it names into `folder` (which must not hold them yet); returns case.json's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for relative, payload in converted.files.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(payload, bytes):
            target.write_bytes(payload)
        elif payload.is_dir():
            shutil.copytree(payload, target, dirs_exist_ok=True)
        elif payload.resolve() != target.resolve():
            shutil.copy2(payload, target)
    case_file = folder / "case.json"
    case_file.write_text(json.dumps(converted.case, indent=2) + "\n", encoding="utf-8")
    return case_file


# ---------------------------------------------------------------- out


def _coding(code: Any) -> dict[str, Any]:
    system = SYSTEM_URLS.get(code.system, f"urn:medagent:code-system:{code.system}")
    return {"system": system, "code": code.id, **({"display": code.label} if code.label else {})}


def result_bundle(result: Result, case: Case) -> dict[str, Any]:
    """The FHIR R4 collection Bundle of a result (validated with fhir.resources before it is returned)."""
    from fhir.resources.R4B.bundle import Bundle

    patient = {"resourceType": "Patient", "id": "patient", "gender": case.patient.sex.value}
    subject = {"reference": "Patient/patient"}
    entries: list[dict[str, Any]] = [patient]
    for evidence in result.evidence:
        entries.append({
            "resourceType": "Observation", "id": evidence.id, "status": "amended" if evidence.error else "final",
            "code": {"text": evidence.tool}, "subject": subject, "valueString": evidence.summary,
            "identifier": [{"system": "urn:medagent:evidence", "value": evidence.id}],
            "note": [{"text": f"medagent evidence {evidence.id} from {evidence.tool} (call {evidence.call_id})"
                      + (f", attachment {evidence.attachment}" if evidence.attachment else "")
                      + ("; the tool reported an error" if evidence.error else "")
                      + ("; derived from other evidence" if evidence.derived else "")}],
        })  # fmt: skip
    for number, finding in enumerate(case.findings, 1):
        observation: dict[str, Any] = {"resourceType": "Observation", "id": f"finding-{number}", "status": "final",
                                       "code": {"text": finding.name}, "subject": subject}
        if isinstance(finding.value, float) and finding.unit:
            observation["valueQuantity"] = {"value": finding.value, "unit": finding.unit}
        else:
            observation["valueString"] = f"{finding.value}{' ' + finding.unit if finding.unit else ''}"
        if finding.reference_range:
            observation["referenceRange"] = [{"text": finding.reference_range}]
        entries.append(observation)
    cited = {e.id for e in result.evidence}
    for candidate in result.differential:
        entries.append({
            "resourceType": "Condition", "id": f"dx-{candidate.rank}", "subject": subject,
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                               "code": "provisional"}]},
            "code": {"text": candidate.name, **({"coding": [_coding(c) for c in candidate.codes]} if candidate.codes else {})},
            "evidence": [{"detail": [{"reference": f"Observation/{e}"} for e in candidate.evidence if e in cited]}]
            if any(e in cited for e in candidate.evidence) else [],
            "note": [{"text": f"rank {candidate.rank} of {len(result.differential)} in medagent's differential"
                      + (f" (score {candidate.score:.3f})" if candidate.score is not None else "")
                      + (f": {candidate.rationale}" if candidate.rationale else "")}],
            "extension": [{"url": EVIDENCE_EXTENSION, "valueString": ",".join(candidate.evidence)}] if candidate.evidence else [],
        })  # fmt: skip
    cites = sorted({c for s in result.report.sentences for c in s.citations if c in cited}, key=lambda e: int(e[1:]))
    report = {
        "resourceType": "DiagnosticReport", "id": "report", "status": "preliminary", "subject": subject,
        "code": {"text": f"medagent report for case {result.case_id}"},
        "conclusion": result.report.text or result.differential_note or "No conclusion.",
        "result": [{"reference": f"Observation/{e}"} for e in cites],
        "extension": [{"url": EVIDENCE_EXTENSION, "valueString": ",".join(cites)}] if cites else [],
        "presentedForm": [{"contentType": "text/plain", "title": "research-use notice",
                           "data": base64.b64encode(RESEARCH_NOTICE.encode()).decode()}],
    }  # fmt: skip
    entries.append(report)
    bundle = {"resourceType": "Bundle", "type": "collection", "id": re.sub(r"[^A-Za-z0-9.-]", "-", result.case_id)[:64],
              "entry": [{"fullUrl": f"urn:medagent:{e['resourceType']}/{e['id']}", "resource": _pruned(e)} for e in entries]}
    Bundle.model_validate(bundle)  # what we write is valid R4, or we fail here rather than hand out a bad file
    return bundle


def _pruned(resource: dict[str, Any]) -> dict[str, Any]:
    """FHIR forbids empty arrays and objects."""
    return {k: v for k, v in resource.items() if v not in ([], {}, None, "")}
