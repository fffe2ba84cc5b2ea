"""Configuration from environment variables. One table, documented in README's Configuration section."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, asdict
from pathlib import Path

from vlm.voting import VoteSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE_MODEL = "llava-hf/llava-onevision-qwen2-7b-ov-hf"


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _ollama_url(env: dict) -> str:
    raw = env.get("OLLAMA_URL") or env.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
    raw = raw.strip().rstrip("/")
    if "://" not in raw:
        raw = "http://" + raw
    # OLLAMA_HOST may be host only ("0.0.0.0"); Ollama's own default port then applies.
    host_part = raw.split("://", 1)[1]
    if ":" not in host_part.split("/", 1)[0]:
        scheme, rest = raw.split("://", 1)
        host, _, path = rest.partition("/")
        raw = f"{scheme}://{host}:11434" + (f"/{path}" if path else "")
    return raw


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 5160
    threads: int = 16  # THREADS: waitress worker threads
    # Idle sockets cost waitress no thread, only a slot under this limit: past it, nobody else is accepted until
    # CHANNEL_TIMEOUT closes idle ones. So: many slots, and idle ones closed after seconds, not waitress' 120 s.
    connection_limit: int = 1000  # CONNECTION_LIMIT
    channel_timeout_s: int = 30  # CHANNEL_TIMEOUT: seconds a connection may sit idle (no request running)
    data_dir: Path = REPO_ROOT / "data"
    runs_dir: Path = REPO_ROOT / "runs"
    # OPTIM_MODELS_DIR: extra user CAD model folders (os.pathsep-separated, each searched recursively)
    models_dir: Path | list[Path] | None = None
    backend: str = "finetuned"  # finetuned | ollama | openai
    finetuned_model_path: Path = REPO_ROOT / "runs" / "onevision_lora_small"
    vlm_base_model: str | None = None  # None: the base named in adapter_config.json, else DEFAULT_BASE_MODEL
    vlm_dtype: str = "auto"  # auto: fp16 on CUDA, fp32 on CPU; or float16 / bfloat16 / float32
    vlm_device_map: str = "auto"
    preload_model: bool = False
    prewarm: bool = False  # VLM_PREWARM: start the worker and import torch & co at start, without weights
    keep_alive_s: float = 300.0
    load_timeout_s: float = 900.0
    generate_timeout_s: float = 300.0
    ollama_url: str = "http://127.0.0.1:11434"
    ollama_model: str = "llava:latest"
    ollama_num_ctx: int = 8192  # OLLAMA_NUM_CTX: context sent with every chat (Ollama's default cuts images off)
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_model: str = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    openai_api_key: str | None = None
    http_connect_timeout_s: float = 3.0
    http_read_timeout_s: float = 120.0  # VLM_READ_TIMEOUT: the longest silence between two chunks of an answer
    vlm_max_queue: int = 8  # VLM_MAX_QUEUE: generations that may wait; past that, 503 busy at once
    vlm_parallel: int = 1  # VLM_PARALLEL: generations a remote engine runs at once (the fine-tuned worker: 1)
    # VLM_VOTES: answers sampled per ask and merged by vote (vlm.voting); 1: one answer, as asked
    vlm_votes: int = 1
    vlm_vote_temperature: float = 0.7  # VLM_VOTE_TEMPERATURE: the samples' temperature (unless the ask sets one)
    vlm_vote_share: float = 0.5  # VLM_VOTE_SHARE: a change needs more than this share of the samples
    max_upload_mb: float = 16.0
    max_image_pixels: int = 40_000_000
    cad_warmup: bool = True
    dataset_dir: Path | None = None  # OPTIM_DATASET_DIR: training examples; None = <data_dir>/dataset
    record_dataset: bool = True  # OPTIM_RECORD_DATASET=0 stops logging applied/rejected proposals
    cache_mb: float = 512.0  # CAD_CACHE_MB: the disk cache of built artifacts is pruned (least recently used) past this
    build_timeout_s: float = 60.0  # CAD_BUILD_TIMEOUT: a model script running longer is killed (cad.worker)
    allowed_hosts: list[str] = field(default_factory=list)
    token: str | None = None
    testing: bool = False

    def voting(self, asked_temperature: float) -> VoteSettings:
        """How an ask is answered: one generation, or VLM_VOTES samples (at the ask's own temperature when it
        sets one) merged by vote."""
        return VoteSettings(votes=self.vlm_votes, min_share=self.vlm_vote_share,
                            temperature=asked_temperature or self.vlm_vote_temperature)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Config":
        env = dict(os.environ if env is None else env)
        c = cls()
        c.host = env.get("HOST", c.host)
        c.port = int(env.get("PORT", c.port))
        c.threads = int(env.get("THREADS", c.threads))
        c.connection_limit = int(env.get("CONNECTION_LIMIT", c.connection_limit))
        c.channel_timeout_s = int(env.get("CHANNEL_TIMEOUT", c.channel_timeout_s))
        if env.get("OPTIM_DATA_DIR"):
            c.data_dir = Path(env["OPTIM_DATA_DIR"])
        if env.get("OPTIM_RUNS_DIR"):
            c.runs_dir = Path(env["OPTIM_RUNS_DIR"])
        if env.get("OPTIM_MODELS_DIR"):
            c.models_dir = [Path(d) for d in env["OPTIM_MODELS_DIR"].split(os.pathsep) if d.strip()]
        backend = env.get("VLM_BACKEND", "").strip().lower()
        if not backend:
            backend = "finetuned" if _bool(env.get("USE_FINETUNED_MODEL"), True) else "ollama"
        c.backend = backend
        if env.get("FINETUNED_MODEL_PATH"):
            c.finetuned_model_path = Path(env["FINETUNED_MODEL_PATH"])
        c.vlm_base_model = env.get("VLM_BASE_MODEL") or None
        c.vlm_dtype = env.get("VLM_DTYPE", c.vlm_dtype)
        c.vlm_device_map = env.get("VLM_DEVICE_MAP", c.vlm_device_map)
        c.preload_model = _bool(env.get("PRELOAD_MODEL"), False)
        c.prewarm = _bool(env.get("VLM_PREWARM"), False)
        c.keep_alive_s = float(env.get("VLM_KEEP_ALIVE", c.keep_alive_s))
        c.load_timeout_s = float(env.get("VLM_LOAD_TIMEOUT", c.load_timeout_s))
        c.generate_timeout_s = float(env.get("VLM_GENERATE_TIMEOUT", c.generate_timeout_s))
        c.ollama_url = _ollama_url(env)
        c.ollama_model = env.get("OLLAMA_MODEL", c.ollama_model)
        c.ollama_num_ctx = int(env.get("OLLAMA_NUM_CTX", c.ollama_num_ctx))
        c.openai_base_url = env.get("OPENAI_BASE_URL", c.openai_base_url).rstrip("/")
        c.openai_model = env.get("OPENAI_MODEL", c.openai_model)
        c.openai_api_key = env.get("OPENAI_API_KEY") or None
        c.http_connect_timeout_s = float(env.get("VLM_CONNECT_TIMEOUT", c.http_connect_timeout_s))
        c.http_read_timeout_s = float(env.get("VLM_READ_TIMEOUT", c.http_read_timeout_s))
        c.vlm_max_queue = int(env.get("VLM_MAX_QUEUE", c.vlm_max_queue))
        c.vlm_parallel = int(env.get("VLM_PARALLEL", c.vlm_parallel))
        c.vlm_votes = int(env.get("VLM_VOTES", c.vlm_votes))
        c.vlm_vote_temperature = float(env.get("VLM_VOTE_TEMPERATURE", c.vlm_vote_temperature))
        c.vlm_vote_share = float(env.get("VLM_VOTE_SHARE", c.vlm_vote_share))
        c.max_upload_mb = float(env.get("MAX_UPLOAD_MB", c.max_upload_mb))
        c.cad_warmup = _bool(env.get("CAD_WARMUP"), True)
        if env.get("OPTIM_DATASET_DIR"):
            c.dataset_dir = Path(env["OPTIM_DATASET_DIR"])
        c.record_dataset = _bool(env.get("OPTIM_RECORD_DATASET"), True)
        c.build_timeout_s = float(env.get("CAD_BUILD_TIMEOUT", c.build_timeout_s))
        c.cache_mb = float(env.get("CAD_CACHE_MB", c.cache_mb))
        c.allowed_hosts = [h.strip().lower() for h in env.get("OPTIM_ALLOWED_HOSTS", "").split(",") if h.strip()]
        c.token = env.get("OPTIM_TOKEN") or None
        return c

    def validate(self) -> None:
        if self.backend not in {"finetuned", "ollama", "openai"}:
            raise ValueError(f"VLM_BACKEND must be finetuned, ollama or openai, not {self.backend!r}")
        if not (0 < self.port < 65536):
            raise ValueError(f"PORT must be 1..65535, not {self.port}")
        if self.vlm_max_queue < 0:
            raise ValueError(f"VLM_MAX_QUEUE must be 0 or more, not {self.vlm_max_queue}")
        if self.ollama_num_ctx < 512:
            raise ValueError(f"OLLAMA_NUM_CTX must be at least 512, not {self.ollama_num_ctx}")
        if self.vlm_parallel < 1:
            raise ValueError(f"VLM_PARALLEL must be at least 1, not {self.vlm_parallel}")
        try:
            self.voting(0.0)
        except ValueError as exc:
            raise ValueError(f"VLM_VOTES / VLM_VOTE_TEMPERATURE / VLM_VOTE_SHARE: {exc}") from None
        if self.threads < 1 or self.connection_limit < 1 or self.channel_timeout_s < 1:
            raise ValueError("THREADS, CONNECTION_LIMIT and CHANNEL_TIMEOUT must be at least 1")
        if self.cache_mb < 1:
            raise ValueError(f"CAD_CACHE_MB must be at least 1, not {self.cache_mb:g}")

    def public(self) -> dict:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        d.pop("token", None)
        d.pop("openai_api_key", None)
        return d
