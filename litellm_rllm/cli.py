"""`litellm-rllm`: read traces back, encode/decode slugs, explain policies, check configs.

    litellm-rllm traces export [--store URL] [--session S [--team T]] [--since T]   JSON lines on stdout
    litellm-rllm traces list   [--store URL] [--session S [--team T]] [--since T] [--limit N]
    litellm-rllm sessions list [--store URL]
    litellm-rllm slug encode JSON [--secret S]
    litellm-rllm slug decode SLUG
    litellm-rllm policy explain --config FILE MODEL [--provider P] [--deployment D] [--output-cost C]
                                [--stream] [--completions] [--call-id ID]
    litellm-rllm config check FILE

The store URL defaults to RLLM_STORE_URL, else the proxy config's `callback_settings`
(with `config check`), else sqlite:///rllm_traces.db in the current folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml


def _store(url: Optional[str]) -> Any:
    from . import store

    return store.open(url)


def cmd_traces_export(args: argparse.Namespace) -> int:
    st = _store(args.store)
    try:
        out = sys.stdout
        for trace in st.traces(session=args.session, since=args.since, limit=args.limit, team=args.team):
            out.write(trace.model_dump_json())
            out.write("\n")
    finally:
        st.close()
    return 0


def cmd_traces_list(args: argparse.Namespace) -> int:
    st = _store(args.store)
    try:
        rows = st.traces(session=args.session, since=args.since, limit=args.limit, team=args.team)
        print(f"{'seq':>4}  {'status':<10} {'session':<24} {'model':<20} {'toks':>6}  trace_id")
        for t in rows:
            toks = sum(len(c.token_ids or []) for c in t.choices)
            print(f"{t.seq if t.seq is not None else '-':>4}  {t.status:<10} {str(t.session_id or '-')[:24]:<24} "
                  f"{str(t.model or '-')[:20]:<20} {toks:>6}  {t.trace_id}")
    finally:
        st.close()
    return 0


def cmd_sessions_list(args: argparse.Namespace) -> int:
    st = _store(args.store)
    try:
        for s in st.sessions():
            print(json.dumps(s.model_dump(mode="json")))
    finally:
        st.close()
    return 0


def cmd_slug_encode(args: argparse.Namespace) -> int:
    from .slug import encode

    try:
        meta = json.loads(args.json)
    except json.JSONDecodeError as exc:
        print(f"error: not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(meta, dict):
        print("error: slug metadata must be a JSON object", file=sys.stderr)
        return 2
    print(encode(meta, secret=args.secret))
    return 0


def cmd_slug_decode(args: argparse.Namespace) -> int:
    from .slug import SlugError, decode

    try:
        meta = decode(args.slug, secrets=[args.secret] if args.secret else ())
    except SlugError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(meta.as_dict(), sort_keys=True, ensure_ascii=False))
    return 0


def _proxy_config(path: str) -> tuple[dict[str, Any], Path]:
    p = Path(path)
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"error: cannot read {p}: {exc}")
    if not isinstance(cfg, dict):
        raise SystemExit(f"error: {p}: the top level must be a mapping")
    return cfg, p


def _settings_from(cfg: dict[str, Any], path: Path) -> Any:
    from .settings import SETTINGS_KEY, load_settings

    raw = (cfg.get("callback_settings") or {}).get(SETTINGS_KEY) or {}
    return load_settings(raw, config_file=str(path))


def _policies_for(config: str) -> tuple[Any, str]:
    """Policies from a proxy config (via its policies_file) or from a policies file itself."""
    from .policy import load_policies

    cfg, path = _proxy_config(config)
    if "defaults" in cfg or "rules" in cfg:
        return load_policies(path), str(path)
    settings = _settings_from(cfg, path)
    ppath = settings.policies_path()
    if ppath is None:
        from .policy import Policies

        return Policies(), "(built-in defaults)"
    return load_policies(ppath), str(ppath)


def cmd_policy_explain(args: argparse.Namespace) -> int:
    """The rule and parameters for MODEL, per deployment: the decision is made after LiteLLM's
    router picked one, so a group balanced over vLLM and a hosted API has one answer each."""
    from .policy import PolicyError
    from .settings import SettingsError

    try:
        policies, source = _policies_for(args.config)
    except (PolicyError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.deployment or args.provider:
        # Without --deployment, MODEL is taken as the deployment's model too (`openai/gpt-4o`).
        entries = [{"model": args.deployment or f"{args.provider}/{args.model}"}]
    else:
        entries = _model_group_entries(args.config, args.model)
        if not entries:
            cfg, _ = _proxy_config(args.config)
            if "model_list" in cfg:
                print(f"error: model group {args.model!r} is not in the model_list of {args.config}; "
                      f"name a provider (--provider P) or a deployment (--deployment D)", file=sys.stderr)
                return 2
            entries = [{"model": args.model}]  # a policies file alone: match on the model name only
    results = [_explain_one(policies, args, entry) for entry in entries]
    out: dict[str, Any] = {"policies": source, **results[0]}
    if len(results) > 1:
        out["deployments"] = results
    print(json.dumps(out, indent=2))
    return 0


def _explain_one(policies: Any, args: argparse.Namespace, entry: dict[str, Any]) -> dict[str, Any]:
    """What the sampling callback would decide for one deployment (same `target_of`)."""
    import dataclasses

    from .callbacks.deployment import target_of
    from .policy import INJECTABLE, decide

    api_base = entry.get("api_base")
    kwargs = {
        "model": str(entry.get("model") or ""),
        "custom_llm_provider": args.provider or entry.get("custom_llm_provider"),
        "api_base": api_base if isinstance(api_base, str) and not api_base.startswith("os.environ/") else None,
        "model_info": entry.get("model_info") or {},
        "metadata": {"model_group": args.model},
        "stream": bool(args.stream),
    }
    target = target_of(kwargs, "atext_completion" if args.completions else "acompletion")
    if args.output_cost is not None:
        target = dataclasses.replace(target, output_cost_per_mtok=args.output_cost)
    # Without --call-id: what a sampled call gets (sample_rate says how many are); with it, that call.
    decision = decide(policies, target, call_id=args.call_id or "explain",
                      sampled=True if args.call_id is None else None)
    rule_name, rule = policies.find(target)
    effective = policies.effective(rule)
    sampling = {"sample_rate": effective.sample_rate}
    if args.call_id is not None:
        sampling.update(call_id=args.call_id, sampled=decision.sampled)
    return {
        "target": {"model": args.model, "provider": target.provider or None, "deployment": target.deployment_model,
                   "output_cost_per_mtok": target.output_cost_per_mtok,
                   "accepts_logprobs": "logprobs" in target.supported_params, "vllm_family": target.vllm_family},
        "rule": rule_name,
        "rule_body": rule.model_dump(exclude_none=True) if rule else None,
        "effective": effective.model_dump(),
        "inject": {k: decision.params[k] for k in INJECTABLE if k in decision.params},
        "skipped": decision.skipped,
        **sampling,
        "strip_from_response": decision.strip,
    }


def _model_group_entries(config: str, model: str) -> list[dict[str, Any]]:
    """Every deployment of a model group in a proxy config: its litellm_params + model_info."""
    try:
        cfg, _ = _proxy_config(config)
    except SystemExit:
        return []
    out = []
    for entry in cfg.get("model_list") or []:
        if isinstance(entry, dict) and entry.get("model_name") == model:
            params = entry.get("litellm_params") or {}
            if isinstance(params, dict):
                info = entry.get("model_info")
                out.append({**params, "model_info": info if isinstance(info, dict) else {}})
    return out


def cmd_config_check(args: argparse.Namespace) -> int:
    from .policy import PolicyError, load_policies
    from .settings import SettingsError

    cfg, path = _proxy_config(args.file)
    problems: list[str] = []
    entries = ((cfg.get("litellm_settings") or {}).get("callbacks")) or []
    if isinstance(entries, str):
        problems.append(f"{path}: litellm_settings.callbacks is a string; use a list (a string replaces the list)")
        entries = [entries]
    ours = [e for e in entries if isinstance(e, str) and e.startswith("litellm_rllm.")]
    known = {"litellm_rllm.callbacks.metadata", "litellm_rllm.callbacks.sampling", "litellm_rllm.callbacks.tracer"}
    for e in ours:
        if e not in known:
            problems.append(f"{path}: litellm_settings.callbacks: unknown entry {e!r}; expected one of {sorted(known)}")
    try:
        settings = _settings_from(cfg, path)
    except SettingsError as exc:
        problems.append(str(exc))
        settings = None
    if settings is not None and settings.policies_path() is not None:
        try:
            load_policies(settings.policies_path())
        except PolicyError as exc:
            problems.append(str(exc))
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 1
    print(f"ok: {path} ({len(ours)} litellm_rllm callbacks"
          + (f", store {settings.store}" if settings else "")
          + (f", policies {settings.policies_path()}" if settings and settings.policies_path() else "") + ")")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litellm-rllm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="group", required=True)

    def store_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", help="store URL (default: $RLLM_STORE_URL or sqlite:///rllm_traces.db)")
        p.add_argument("--session", help="session id, name or any session uid (nested sessions included)")
        p.add_argument("--team", help="the team whose session it is (sessions written with a team key; see docs/sessions.md)")
        p.add_argument("--since", help="only traces created at or after this ISO 8601 time")
        p.add_argument("--limit", type=int)

    traces = sub.add_parser("traces", help="read traces").add_subparsers(dest="verb", required=True)
    p = traces.add_parser("export", help="JSON lines, in seq order")
    store_args(p)
    p.set_defaults(func=cmd_traces_export)
    p = traces.add_parser("list", help="one line per trace")
    store_args(p)
    p.set_defaults(func=cmd_traces_list)

    sessions = sub.add_parser("sessions", help="list sessions").add_subparsers(dest="verb", required=True)
    p = sessions.add_parser("list")
    p.add_argument("--store")
    p.set_defaults(func=cmd_sessions_list)

    slug = sub.add_parser("slug", help="encode / decode rllm1: slugs").add_subparsers(dest="verb", required=True)
    p = slug.add_parser("encode")
    p.add_argument("json")
    p.add_argument("--secret", help="sign with this HMAC secret")
    p.set_defaults(func=cmd_slug_encode)
    p = slug.add_parser("decode")
    p.add_argument("slug")
    p.add_argument("--secret", help="verify the signature with this secret")
    p.set_defaults(func=cmd_slug_decode)

    policy = sub.add_parser("policy", help="explain policy decisions").add_subparsers(dest="verb", required=True)
    p = policy.add_parser("explain")
    p.add_argument("--config", required=True, help="proxy config (rllm.yaml) or a policies file")
    p.add_argument("model", help="model group the client asks for")
    p.add_argument("--provider")
    p.add_argument("--deployment", help="deployment model, e.g. hosted_vllm/Qwen/Qwen3-8B")
    p.add_argument("--output-cost", type=float, help="USD per million output tokens")
    p.add_argument("--call-id", help="decide sample_rate for this call id (default: show a sampled call)")
    p.add_argument("--stream", action="store_true", help="as for a streaming request")
    p.add_argument("--completions", action="store_true", help="as for /v1/completions (logprobs is a count)")
    p.set_defaults(func=cmd_policy_explain)

    config = sub.add_parser("config", help="validate a proxy config").add_subparsers(dest="verb", required=True)
    p = config.add_parser("check")
    p.add_argument("file")
    p.set_defaults(func=cmd_config_check)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
