"""The long-lived objects one app owns: model registry, builder, sessions, the model manager and its scheduler.

All of them are cheap to construct: nothing here imports cadquery or loads a model.
"""
from __future__ import annotations

import logging
import threading

from flask import current_app

from cad.build import Builder
from cad.registry import ModelRegistry
from cad.session import SessionStore
from vlm.backend import Backend
from vlm.cache import ResponseCache
from vlm.dataset import DatasetLog
from vlm.lifecycle import ModelManager
from vlm.proposals import ProposalStore
from vlm.scheduler import Scheduler
from vlm.train_jobs import TrainingJobs

from .config import DEFAULT_BASE_MODEL, Config
from .housekeeping import remove_leftover_temporaries

log = logging.getLogger(__name__)


def make_backend(config: Config) -> Backend:
    if config.backend == "ollama":
        from vlm.ollama import OllamaBackend

        return OllamaBackend(config.ollama_url, model=config.ollama_model, keep_alive_s=config.keep_alive_s,
                             connect_timeout_s=config.http_connect_timeout_s, read_timeout_s=config.http_read_timeout_s,
                             max_parallel=config.vlm_parallel, num_ctx=config.ollama_num_ctx)
    if config.backend == "openai":
        from vlm.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(config.openai_base_url, model=config.openai_model, api_key=config.openai_api_key,
                                   connect_timeout_s=config.http_connect_timeout_s,
                                   read_timeout_s=config.http_read_timeout_s, max_parallel=config.vlm_parallel)
    from vlm.finetuned import FinetunedBackend

    if config.vlm_parallel > 1:
        log.info("VLM_PARALLEL=%s ignored: the fine-tuned worker runs one generation at a time", config.vlm_parallel)
    return FinetunedBackend(adapter_path=config.finetuned_model_path, base_model=config.vlm_base_model,
                            dtype=config.vlm_dtype, device_map=config.vlm_device_map,
                            default_base_model=DEFAULT_BASE_MODEL,
                            load_timings_path=config.data_dir / "vlm_load_timings.json")


class Services:
    def __init__(self, config: Config):
        self.config = config
        # Before any store is used: a temporary of this process is never mistaken for a leftover.
        remove_leftover_temporaries(config.data_dir, self.dataset_dir)
        dirs = config.models_dir
        extra = list(dirs) if isinstance(dirs, (list, tuple)) else [dirs] if dirs else []
        self.registry = ModelRegistry(extra_dirs=extra)
        self.builder = Builder(config.data_dir / "cache", timeout_s=config.build_timeout_s,
                               disk_limit_bytes=int(config.cache_mb * 1024 * 1024))
        self.sessions = SessionStore(config.data_dir, self.registry)
        self.manager = ModelManager(make_backend(config), keep_alive_s=config.keep_alive_s,
                                    load_timeout_s=config.load_timeout_s, rewarm_after_idle=config.prewarm)
        self.scheduler = Scheduler(self.manager, max_queue=config.vlm_max_queue)
        self.proposals = ProposalStore()
        self.responses = ResponseCache()
        self.training = TrainingJobs(config.runs_dir, self.dataset_dir)
        self._warmup_started = False
        self.shutdown_hooks: list = []  # called first on shutdown, e.g. to cancel running optimisations
        self.shut_down = False

    @property
    def dataset_dir(self):
        return self.config.dataset_dir or self.config.data_dir / "dataset"

    def record_decision(self, ps, outcome: str, **fields) -> None:
        """Log a decision on a proposal set as a training example (`vlm.dataset`). The user's action has already
        succeeded: a logging failure is only logged."""
        if not self.config.record_dataset:
            return
        try:
            DatasetLog(self.dataset_dir).record_decision(ps, outcome, **fields)
        except Exception:  # noqa: BLE001
            log.exception("could not record proposal set %s in the training dataset", ps.id)

    def start_background_work(self) -> None:
        """Called once the server listens: CAD warm-up and the optional model preload."""
        if self._warmup_started:
            return
        self._warmup_started = True
        if self.config.cad_warmup:
            # A short delay lets the server answer its first requests before cadquery's import takes the GIL.
            timer = threading.Timer(1.0, self._warm_cad)
            timer.name, timer.daemon = "cad-warmup", True
            timer.start()
        if self.config.preload_model:
            self.manager.start_load()
        elif self.config.prewarm and callable(getattr(self.manager.backend, "prewarm", None)):
            try:
                self.manager.backend.prewarm()
            except Exception:  # noqa: BLE001 - an optimisation: the first load imports by itself then
                log.exception("VLM pre-warm failed")

    def _warm_cad(self) -> None:
        try:
            self.builder.warm_up(self.registry.get(self.registry.default_name))
        except Exception:  # warm-up is an optimisation; a failure shows up again on the first real request
            if self.shut_down:  # the shutdown stopped the build worker under it: expected, not worth a traceback
                log.info("CAD warm-up stopped by the shutdown")
            else:
                log.exception("CAD warm-up failed")

    def shutdown(self) -> None:
        """Stop background work: running optimisations, the VLM, the CAD build worker. Safe to call twice
        (optim.py calls it from its signal handler and again on the way out)."""
        if self.shut_down:
            return
        self.shut_down = True
        for hook in self.shutdown_hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001 - one failing hook must not keep the rest running
                log.exception("shutdown hook %r failed", hook)
        from cad import worker

        try:
            self.training.shutdown()
            self.scheduler.close()
            self.manager.shutdown()
        finally:
            # The worker is shared by every Builder in this process; a later build simply starts a new one.
            worker.shutdown()
            self.sessions.close()  # a write after this (there should be none) reopens the database


def services() -> Services:
    return current_app.extensions["optim"]
