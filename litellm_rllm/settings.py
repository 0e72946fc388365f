"""Plugin settings: `callback_settings.litellm_rllm` in the proxy YAML, validated by pydantic.

LiteLLM copies the YAML's top-level `callback_settings:` block to `litellm.callback_settings`
before it imports the `callbacks:` entries, so the settings can be read when our callbacks
module is imported. Environment variables win over the file (`RLLM_STORE_URL`, ...), so one
config can serve several deployments. A bad value stops the start with a `SettingsError` that
names the key and the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SETTINGS_KEY = "litellm_rllm"
DEFAULT_STORE_URL = "sqlite:///rllm_traces.db"

# env var -> settings field. Env wins over the YAML.
ENV_OVERRIDES: dict[str, str] = {
    "RLLM_STORE_URL": "store",
    "RLLM_POLICIES_FILE": "policies_file",
    "RLLM_SLUG_SECRET": "slug_secret",
    "RLLM_REQUIRE_SIGNED_SLUGS": "require_signed_slugs",
    "RLLM_SPOOL_DIR": "spool_dir",
}


class SettingsError(Exception):
    """A setting is invalid; the message names the key and the file it came from."""


class Settings(BaseModel):
    """Every key of `callback_settings.litellm_rllm` (all optional)."""

    model_config = ConfigDict(extra="forbid")

    store: str = DEFAULT_STORE_URL
    policies_file: Optional[str] = None
    slug_header: str = "x-rllm-slug"
    slug_max_bytes: int = Field(8192, ge=64, le=1 << 20)
    slug_max_depth: int = Field(8, ge=1, le=64)
    slug_max_keys: int = Field(256, ge=1, le=100_000)
    slug_secret: Optional[str] = None
    slug_secrets_previous: list[str] = Field(default_factory=list)
    require_signed_slugs: bool = False
    writer_batch_size: int = Field(256, ge=1, le=100_000)
    writer_max_queue: int = Field(100_000, ge=1)
    # Group commit: the writer starts a batch at most this often (a call after a quieter spell is
    # written at once). Fewer, larger transactions at moderate rates: a transaction per call
    # cost the store about as much CPU as building the trace (issue 19, docs/benchmarks.md).
    # A flush never waits for it; the change feed shows a call up to this much later; the
    # traces of the last interval are what a SIGKILL can take beyond the batch in writing.
    writer_commit_interval_s: float = Field(0.2, ge=0, le=5)
    # Local spool for traces the store cannot take (down or too slow), replayed when it is back.
    # Default folder: `<file>.spool` next to a SQLite file, else `rllm_spool` in the working
    # directory (one subfolder per store); relative to the proxy config's folder. 0 = no spool.
    spool_dir: Optional[str] = None
    spool_max_bytes: int = Field(1 << 30, ge=0)
    # SQLite calls run in a helper process: a SIGBUS from SQLite's shared memory (-shm) ends
    # that process, not the proxy (docs/storage-faults.md). False: in the proxy process.
    store_process: bool = True
    policies_reload_interval_s: float = Field(1.0, gt=0, le=3600)
    # Calls to OpenAI-format upstreams (hosted_vllm/, openai/) are captured from the upstream's
    # bytes, which keep what LiteLLM's parsing drops. Off: capture LiteLLM's parsed responses.
    raw_capture: bool = True
    # Opt-in: `gc.freeze()` once, a few seconds after start-up, so Python's full collections stop
    # walking LiteLLM's large start-up heap (measured in benchmarks/loop_block.py: GC per
    # request 17-22 ms -> 0.9 ms, worst loop stall 650-830 ms -> 42 ms). Process-wide, hence off.
    gc_freeze_after_start: bool = False
    # Build and encode the traces of long replies in a helper process (`writer/build_process.py`),
    # so parsing them never holds the proxy's GIL: calls with at least `..._min_bytes` of upstream
    # data (body, or a stream's logprobs weighed as one); smaller ones are built in the writer
    # thread, where they cost less. Off: everything in the writer thread.
    writer_build_process: bool = True
    writer_build_process_min_bytes: int = Field(65536, ge=0)
    # Operations: `GET /metrics` in Prometheus' format (prometheus_client's default registry, so
    # LiteLLM's own metrics appear there too); traces older than `retention_days` are deleted
    # by a background thread once an hour (None: kept forever; `litellm-rllm prune` by hand).
    metrics: bool = True
    retention_days: Optional[float] = Field(None, gt=0)
    # Fault drills and tests: hold every batch this long before writing it, as a lagging writer
    # would (its commits land late; session order must not depend on commit order). Keep 0.
    writer_commit_delay_s: float = Field(0.0, ge=0, le=60)
    # The stateless session pin (`litellm_rllm.callbacks.affinity`): a session's first call skips
    # replicas with more than this factor x the group's average calls in flight (and at least
    # `session_pin_min_load`) through this proxy.
    session_pin_load_factor: float = Field(1.5, ge=1.0, le=100.0)
    session_pin_min_load: int = Field(8, ge=1)
    # The trainer's live interface (docs/trainer.md): how often each proxy reads policy versions
    # and pauses from the store; how often it looks for feed items of other proxies while a
    # follower waits on it; how long a call of a paused group is held (then 503); the
    # Retry-After of refused calls; how old the pause state may get before it is ignored.
    live_poll_interval_s: float = Field(0.5, gt=0, le=60)
    feed_poll_interval_s: float = Field(0.05, gt=0, le=10)
    pause_hold_timeout_s: float = Field(60.0, ge=0, le=3600)
    pause_retry_after_s: float = Field(1.0, gt=0, le=60)
    live_stale_after_s: float = Field(10.0, gt=0, le=3600)

    # Where the settings came from, for error messages and relative paths. Not a YAML key.
    config_file: Optional[str] = Field(None, exclude=True)

    @field_validator("store")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                f"store URL {value!r} has scheme {scheme!r}; expected sqlite:///PATH or postgresql://..."
            )
        return value

    @field_validator("slug_header")
    @classmethod
    def _lower_header(cls, value: str) -> str:
        return value.lower()

    def slug_secrets(self) -> list[str]:
        """Secrets accepted for signed slugs, newest first (rotation keeps the old one valid)."""
        return [s for s in [self.slug_secret, *self.slug_secrets_previous] if s]

    def config_dir(self) -> Path:
        return Path(self.config_file).resolve().parent if self.config_file else Path.cwd()

    def resolve_path(self, path: str) -> Path:
        """A path from the YAML, relative to the proxy config's folder."""
        p = Path(os.path.expandvars(os.path.expanduser(path)))
        return p if p.is_absolute() else self.config_dir() / p

    def spool_path(self) -> Optional[Path]:
        """The writer's spool folder, or None when spooling is off: `<file>.spool` next to a
        SQLite file, else a folder per store (named after it, without credentials) inside
        `spool_dir` (default `rllm_spool` in the working directory), so proxies of different
        stores can share one `spool_dir`."""
        from .writer.spool import store_folder_name

        if self.spool_max_bytes == 0:
            return None
        if self.store.startswith("sqlite:///"):
            db = self.store[len("sqlite:///"):].split("?", 1)[0]
            if db == ":memory:":
                return None
            if not self.spool_dir:
                return Path(os.path.expanduser(db)).resolve().parent / (Path(db).name + ".spool")
        base = self.resolve_path(self.spool_dir) if self.spool_dir else Path.cwd() / "rllm_spool"
        return base / store_folder_name(self.store)

    def policies_path(self) -> Optional[Path]:
        return self.resolve_path(self.policies_file) if self.policies_file else None


def proxy_config_file() -> Optional[str]:
    """The proxy's YAML path: `litellm --config` sets CONFIG_FILE_PATH or the proxy global."""
    path = os.environ.get("CONFIG_FILE_PATH")
    if path:
        return path
    try:
        from litellm.proxy import proxy_server  # local: settings must import without the proxy

        return getattr(proxy_server, "user_config_file_path", None)
    except Exception:
        return None


def load_settings(
    raw: Optional[Mapping[str, Any]] = None,
    *,
    config_file: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Settings:
    """Validate settings from `raw` (default: `litellm.callback_settings`) plus env overrides."""
    if config_file is None:
        config_file = proxy_config_file()
    if raw is None:
        raw = _from_litellm()
    env = os.environ if env is None else env
    where = config_file or "<no config file>"
    if not isinstance(raw, Mapping):
        raise SettingsError(
            f"callback_settings.{SETTINGS_KEY} in {where} must be a mapping, got {type(raw).__name__}"
        )
    values: dict[str, Any] = dict(raw)
    for var, key in ENV_OVERRIDES.items():
        if env.get(var):
            values[key] = env[var]
    try:
        settings = Settings(**values, config_file=config_file)
    except ValidationError as exc:
        problems = "; ".join(
            f"callback_settings.{SETTINGS_KEY}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings in {where}: {problems}") from None
    _check_policies_file(settings, from_env=bool(env.get("RLLM_POLICIES_FILE")), where=where)
    return settings


def _check_policies_file(settings: Settings, *, from_env: bool, where: str) -> None:
    """A named policies file must exist: silently running on the built-in policies instead of
    the ones the operator wrote would be the worst outcome. No file named: built-in policies."""
    path = settings.policies_path()
    if path is None or path.is_file():
        return
    source = "RLLM_POLICIES_FILE" if from_env else f"callback_settings.{SETTINGS_KEY}.policies_file in {where}"
    reason = "is a folder" if path.is_dir() else "not found"
    raise SettingsError(
        f"{source}: cannot read policies file {path}: {reason} (a relative path is relative to the "
        "proxy config's folder; leave the key out to use the built-in policies)"
    )


def _from_litellm() -> Mapping[str, Any]:
    try:
        import litellm
    except Exception:
        return {}
    block = getattr(litellm, "callback_settings", None) or {}
    return block.get(SETTINGS_KEY) or {}
