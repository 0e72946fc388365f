"""`litellm-rllm`: read traces back, encode/decode slugs, explain policies, check configs, serve the demo upstream.

    litellm-rllm traces export [--store URL] [--session S [--team T]] [--since T]   JSON lines on stdout
    litellm-rllm traces list   [--store URL] [--session S [--team T]] [--since T] [--limit N]
    litellm-rllm traces tail   [--store URL | --proxy URL [--key K]] [--session S [--team T]] [--finished]
                               [--model M] [--after CURSOR|now] [--idle-exit SECONDS]
    litellm-rllm sessions list [--store URL]
    litellm-rllm sessions check [--session S [--team T] | --since T] [--json]   the drift audit
    litellm-rllm sessions delete SESSION [--team T] [--store URL]
    litellm-rllm export [--session S [--team T] | --since T] --view merged|per-call --format parquet|jsonl --out PATH
    litellm-rllm prune --before T [--store URL]                            retention by hand
    litellm-rllm slug encode JSON [--secret S]
    litellm-rllm slug decode SLUG
    litellm-rllm policy explain --config FILE MODEL [--provider P] [--deployment D] [--output-cost C]
                                [--stream] [--completions] [--call-id ID]
    litellm-rllm config check FILE
    litellm-rllm demo-upstream [--port 8000] [--host 127.0.0.1]

The store URL defaults to RLLM_STORE_URL, else sqlite:///rllm_traces.db in the current folder
(three slashes: relative; sqlite:////abs/path.db for an absolute path). Reading commands never
create a store: a missing one is an error naming the path looked at. A mistake on the command
line is one `error: ...` line on stderr and exit status 2; a store that fails while being read
is an `error: ...` line and status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

import yaml


class CliError(Exception):
    """A mistake of the user's (exit 2) or a failure while working (exit 1): printed as one
    `error: ...` line, never as a traceback."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one `error: ...` line (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _store(url: Optional[str]) -> Any:
    """Open the store for reading: never creates one (a missing SQLite file is an error)."""
    from . import store

    resolved = store.resolve_url(url)
    try:
        return store.open(resolved, create=False)
    except store.StoreNotFoundError as exc:
        hint = "" if url or os.environ.get(store.ENV_URL) else (
            f"; without --store or {store.ENV_URL} the store is {store.DEFAULT_URL}, in the folder the proxy"
            " runs in: run this there or pass --store URL")
        raise CliError(f"{exc}{hint}") from None
    except ValueError as exc:  # unknown scheme or malformed SQLite URL; names no password
        raise CliError(str(exc)) from None
    except Exception as exc:  # e.g. a file that is not a SQLite database
        raise CliError(f"cannot open the trace store: {type(exc).__name__}: {exc}", status=1) from None


def _since(args: argparse.Namespace) -> Any:
    """`--since`, checked before any store is opened."""
    from .store.base import parse_since

    try:
        return parse_since(args.since)
    except ValueError:
        raise CliError(f"--since {args.since!r} is not an ISO 8601 date/time "
                       "(e.g. 2026-12-01, 2026-12-01T09:30:00Z or 2026-12-01T10:30:00+01:00)") from None


def _read(what: Callable[[], Any]) -> Any:
    """Run a read against the store; its failures (server gone, corrupt rows) are one line."""
    try:
        return what()
    except (CliError, BrokenPipeError):  # the latter: stdout's reader left (see main)
        raise
    except Exception as exc:
        raise CliError(f"reading the trace store failed: {type(exc).__name__}: {exc}", status=1) from None


def cmd_traces_export(args: argparse.Namespace) -> int:
    since = _since(args)
    st = _store(args.store)
    try:
        out = sys.stdout

        def export() -> None:
            # every trace with its `lineage` (computed per session as it is read)
            if args.session is not None:
                from .training import attach_lineage

                traces: Any = attach_lineage(st.traces(session=args.session, since=since, limit=args.limit,
                                                       team=args.team))
            else:
                from itertools import islice

                traces = islice(st.traces_with_lineage(since=since), args.limit)
            for trace in traces:
                out.write(trace.model_dump_json())
                out.write("\n")

        _read(export)
    finally:
        st.close()
    return 0


def cmd_traces_list(args: argparse.Namespace) -> int:
    since = _since(args)
    st = _store(args.store)
    try:
        rows = _read(lambda: st.traces(session=args.session, since=since, limit=args.limit, team=args.team))
        print(f"{'seq':>4}  {'status':<10} {'session':<24} {'model':<20} {'toks':>6}  trace_id")
        for t in rows:
            toks = sum(len(c.token_ids or []) for c in t.choices)
            print(f"{t.seq if t.seq is not None else '-':>4}  {t.status:<10} {str(t.session_id or '-')[:24]:<24} "
                  f"{str(t.model or '-')[:20]:<20} {toks:>6}  {t.trace_id}")
    finally:
        st.close()
    return 0


def cmd_traces_tail(args: argparse.Namespace) -> int:
    from .trainer.tail import run_tail

    return run_tail(args)


def cmd_sessions_list(args: argparse.Namespace) -> int:
    st = _store(args.store)
    try:
        for s in _read(st.sessions):
            print(json.dumps(s.model_dump(mode="json")))
    finally:
        st.close()
    return 0


def _progress_bar(total: Optional[int]) -> Optional[Callable[[Any], None]]:
    """A one-line progress bar on stderr when it is a terminal (traces read of `total`)."""
    if not sys.stderr.isatty():
        return None

    def show(p: Any) -> None:
        of = f"/{total}" if total else ""
        end = "\n" if p.done else ""
        sys.stderr.write(f"\rexport: {p.traces}{of} traces read, {p.rows} rows written{end}")
        sys.stderr.flush()

    return show


def cmd_export(args: argparse.Namespace) -> int:
    """Trajectories (merged or per-call) to Parquet or JSON lines, streamed."""
    since = _since(args)
    if args.format == "parquet" and args.out == "-":
        raise CliError("--out: Parquet needs a file path (JSON lines may go to stdout with --out -)")
    if args.format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise CliError("Parquet export needs pyarrow: pip install 'litellm-rllm[export]' "
                           "(or --format jsonl)") from None
    st = _store(args.store)
    try:
        total = None if args.session else _read(st.count)
        out = sys.stdout if args.out == "-" else args.out
        result = _read(lambda: st.export(out, session=args.session, since=since, view=args.view, team=args.team,
                                         format=args.format, include_orphans=args.include_orphans,
                                         progress=_progress_bar(total)))
    finally:
        st.close()
    summary = result.model_dump(mode="json") if hasattr(result, "model_dump") else dict(result)
    print(json.dumps(summary), file=sys.stderr if args.out == "-" else sys.stdout)
    return 0


def cmd_sessions_check(args: argparse.Namespace) -> int:
    """The drift audit: extends / drift / edited / new boundaries, retries, orphans, failed
    completeness checks, per session and in total."""
    since = _since(args)
    st = _store(args.store)
    try:
        report = _read(lambda: st.audit(session=args.session, since=since, team=args.team))
    finally:
        st.close()
    if args.json:
        print(json.dumps(report.to_dict() if hasattr(report, "to_dict") else report.model_dump(mode="json")))
    else:
        from .training import render_text

        print(render_text(report))
    return 0


def cmd_sessions_delete(args: argparse.Namespace) -> int:
    st = _store(args.store)
    try:
        deleted = _read(lambda: st.delete(session=args.session, team=args.team))
    finally:
        st.close()
    print(json.dumps({"session": args.session, **({"team": args.team} if args.team else {}), "deleted": deleted}))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    args.since = args.before
    before = _since(args)
    st = _store(args.store)
    try:
        deleted = _read(lambda: st.delete(before=before))
    finally:
        st.close()
    print(json.dumps({"before": args.before, "deleted": deleted}))
    return 0


def cmd_slug_encode(args: argparse.Namespace) -> int:
    from .slug import SlugError, encode

    try:
        meta = json.loads(args.json)
    except json.JSONDecodeError as exc:
        raise CliError(f"slug metadata is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CliError(f"slug metadata must be a JSON object, got {type(meta).__name__}")
    try:
        print(encode(meta, secret=args.secret))
    except SlugError as exc:  # a reserved key, a non-string session_id, ...
        raise CliError(exc.message) from None
    return 0


def cmd_slug_decode(args: argparse.Namespace) -> int:
    from .slug import SlugError, decode

    try:
        meta = decode(args.slug, secrets=[args.secret] if args.secret else ())
    except SlugError as exc:
        raise CliError(exc.message) from None
    print(json.dumps(meta.as_dict(), sort_keys=True, ensure_ascii=False))
    return 0


def _proxy_config(path: str) -> tuple[dict[str, Any], Path]:
    p = Path(path)
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise CliError(f"cannot read {p.resolve()}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(cfg, dict):
        raise CliError(f"{p}: the top level must be a mapping")
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
        from .policy import DEFAULT_POLICIES_SOURCE, default_policies

        return default_policies(), DEFAULT_POLICIES_SOURCE
    return load_policies(ppath), str(ppath)


def cmd_policy_explain(args: argparse.Namespace) -> int:
    """The rule and parameters for MODEL, per deployment: the decision is made after LiteLLM's
    router picked one, so a group balanced over vLLM and a hosted API has one answer each."""
    from .policy import PolicyError
    from .settings import SettingsError

    try:
        policies, source = _policies_for(args.config)
    except (PolicyError, SettingsError) as exc:
        raise CliError(str(exc)) from None
    if args.deployment or args.provider:
        # Without --deployment, MODEL is taken as the deployment's model too (`openai/gpt-4o`).
        entries = [{"model": args.deployment or f"{args.provider}/{args.model}"}]
    else:
        entries = _model_group_entries(args.config, args.model)
        if not entries:
            cfg, _ = _proxy_config(args.config)
            if "model_list" in cfg:
                raise CliError(f"model group {args.model!r} is not in the model_list of {args.config}; "
                               "name a provider (--provider P) or a deployment (--deployment D)")
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
    except CliError:
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
    """Errors (exit 1): what would stop the proxy or leave it capturing nothing. Warnings
    (exit 0): what starts but silently does something else than the config suggests."""
    from .policy import DEFAULT_POLICIES_SOURCE, PolicyError, load_policies
    from .proxy_config import OUR_CALLBACKS, unset_env_refs
    from .settings import SettingsError

    cfg, path = _proxy_config(args.file)
    problems: list[str] = []
    warnings: list[str] = []
    entries = ((cfg.get("litellm_settings") or {}).get("callbacks")) or []
    if isinstance(entries, str):
        problems.append(f"{path}: litellm_settings.callbacks is a string; use a list (a string replaces the list)")
        entries = [entries]
    ours = [e for e in entries if isinstance(e, str) and e.startswith("litellm_rllm.")]
    for e in ours:
        if e not in OUR_CALLBACKS:
            problems.append(f"{path}: litellm_settings.callbacks: unknown entry {e!r}; "
                            f"expected one of {list(OUR_CALLBACKS)}")
    if not ours:
        problems.append(f"{path}: no litellm_rllm callbacks in litellm_settings.callbacks, so this proxy captures "
                        f"nothing; add {', '.join(OUR_CALLBACKS[:3])}")
    elif "litellm_rllm.callbacks.tracer" not in ours:
        warnings.append(f"{path}: litellm_settings.callbacks has no litellm_rllm.callbacks.tracer: no trace is stored")
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
    warnings += [f"{path}: {w}" for w in unset_env_refs(cfg)]
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 1
    assert settings is not None
    names = ", ".join(e.rsplit(".", 1)[-1] for e in ours)
    policies = settings.policies_path() or DEFAULT_POLICIES_SOURCE
    print(f"ok: {path} (litellm_rllm callbacks: {names}; store {settings.store}; policies {policies}"
          + (f"; {len(warnings)} warning{'s' if len(warnings) != 1 else ''} above" if warnings else "") + ")")
    return 0


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    """Serve the demo vLLM-format upstream until interrupted."""
    from .demo.upstream import serve

    try:
        return serve(host=args.host, port=args.port, reply=args.reply, tokens_per_step=args.tokens_per_step,
                     step_delay=args.step_delay)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
                       " (another demo upstream running? choose another --port)", status=1) from None


SESSION_HELP = ("a session_id, a session uid (client.Session.uid) or a session_name (rLLM's SDK): the traces whose "
                "session_id or session_name is S or whose session_uids contain S, so an outer session's uid also "
                "finds every session nested in it (sorted by `order`: call order)")
TEAM_HELP = ("the team whose session it is: sessions written with a team's key are namespaced by that team "
             "(docs/sessions.md); default: sessions of callers without a team")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="litellm-rllm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="group", required=True)

    def store_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", help="store URL (default: $RLLM_STORE_URL, else sqlite:///rllm_traces.db in "
                                       "the current folder; sqlite:////abs/path.db for an absolute path)")

    def store_args(p: argparse.ArgumentParser) -> None:
        store_arg(p)
        p.add_argument("--session", metavar="S", help=SESSION_HELP)
        p.add_argument("--team", metavar="T", help=TEAM_HELP)
        p.add_argument("--since", help="only traces created at or after this ISO 8601 time (UTC if no offset)")
        p.add_argument("--limit", type=int)

    traces = sub.add_parser("traces", help="read traces").add_subparsers(dest="verb", required=True)
    p = traces.add_parser("export", help="JSON lines, in seq order")
    store_args(p)
    p.set_defaults(func=cmd_traces_export)
    p = traces.add_parser("list", help="one line per trace")
    store_args(p)
    p.set_defaults(func=cmd_traces_list)
    p = traces.add_parser("tail", help="follow the change feed (traces, rewards, finishes) as JSON lines")
    p.add_argument("--store", help="read this store directly (default: $RLLM_STORE_URL or sqlite:///rllm_traces.db)")
    p.add_argument("--proxy", help="follow through a proxy instead, e.g. http://localhost:4000")
    p.add_argument("--key", help="the proxy key (default: $RLLM_API_KEY or $LITELLM_MASTER_KEY)")
    p.add_argument("--session", help="only this session's items (nested sessions included)")
    p.add_argument("--team", metavar="T", help=TEAM_HELP)
    p.add_argument("--finished", action="store_true", help="only ended episodes, each with its traces and rewards")
    p.add_argument("--model", help="only this model group's traces and their sessions' rewards and finishes")
    p.add_argument("--after", default="now", help="start after this cursor (0: the beginning; default: now)")
    p.add_argument("--limit", type=int, help="items per read (1..1000, default 100)")
    p.add_argument("--idle-exit", type=float, help="exit after this many seconds without a new item")
    p.set_defaults(func=cmd_traces_tail)

    sessions = sub.add_parser("sessions", help="list sessions").add_subparsers(dest="verb", required=True)
    p = sessions.add_parser("list")
    store_arg(p)
    p.set_defaults(func=cmd_sessions_list)
    p = sessions.add_parser("check", help="the drift audit: lineage boundaries, retries, orphans, completeness")
    store_arg(p)
    p.add_argument("--session", metavar="S", help=SESSION_HELP)
    p.add_argument("--team", metavar="T", help=TEAM_HELP)
    p.add_argument("--since", help="only traces created at or after this ISO 8601 time (UTC if no offset)")
    p.add_argument("--json", action="store_true", help="one machine-readable JSON object")
    p.set_defaults(func=cmd_sessions_check)
    p = sessions.add_parser("delete", help="delete a session's traces (nested sessions included)")
    p.add_argument("session")
    p.add_argument("--team", metavar="T", help=TEAM_HELP)
    p.add_argument("--store")
    p.set_defaults(func=cmd_sessions_delete)

    p = sub.add_parser("export", help="training data: trajectories as Parquet or JSON lines")
    store_arg(p)
    p.add_argument("--session", metavar="S", help=SESSION_HELP)
    p.add_argument("--team", metavar="T", help=TEAM_HELP)
    p.add_argument("--since", help="only traces created at or after this ISO 8601 time (UTC if no offset)")
    p.add_argument("--view", choices=("merged", "per-call"), default="merged",
                   help="merged: one row per chain of calls extending each other, with the loss mask")
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    p.add_argument("--out", required=True, help="output file (- for stdout, JSON lines only)")
    p.add_argument("--include-orphans", action="store_true", help="keep completions a retry left behind")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("prune", help="delete traces created before a time")
    p.add_argument("--before", required=True, help="ISO 8601 time; traces created earlier are deleted")
    p.add_argument("--store")
    p.set_defaults(func=cmd_prune)

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

    p = sub.add_parser("demo-upstream", help="serve a local vLLM-format server with token ids and logprobs "
                                             "(the quick start's `demo` model)")
    p.add_argument("--port", type=int, default=8000, help="default 8000 (what configs/rllm.yaml points at)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--reply", default=None, help="the reply text (default: a fixed sentence)")
    p.add_argument("--tokens-per-step", type=int, default=1, help="tokens per stream chunk")
    p.add_argument("--step-delay", type=float, default=0.02, help="seconds between stream chunks")
    p.set_defaults(func=cmd_demo_upstream)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    # `policy explain` imports LiteLLM, which fetches its cost map from GitHub at import unless
    # told not to: offline that is seconds of retries and warnings for a table it ships anyway.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, whatever a driver said
        return exc.status
    except BrokenPipeError:  # `litellm-rllm traces export | head`: the reader left; not an error
        try:  # what is still buffered goes nowhere, instead of failing again at interpreter exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
