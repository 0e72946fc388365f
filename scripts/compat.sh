#!/usr/bin/env bash
# Run the suite (or part of it) against another LiteLLM version.
#
#   scripts/compat.sh VERSION [pytest args]     e.g. scripts/compat.sh 1.104.0
#                                                    scripts/compat.sh 1.108.7 -q tests/test_proxy_*.py
#
# Creates .venv-compat-VERSION (reused on later runs) with `litellm[proxy]==VERSION` and this
# package with its test extra. Everything else is pinned by requirements/constraints.txt, except
# what has to move with LiteLLM: the constraints are copied to .venv-compat-VERSION/constraints.txt
# without
#   - litellm and the packages LiteLLM pins exactly per release (litellm-enterprise,
#     litellm-proxy-extras, litellm-proxy), and
#   - any pin that VERSION's own requirements (base + the proxy extra) exclude, e.g. openai 3.x
#     for LiteLLM <1.108 (openai<3) or filelock 4.x for 1.108.0 (filelock<4);
# pip resolves those. The dropped pins and the resolved versions are printed.
# Our package is installed editable with --no-deps and its requirements (test extra included) are
# installed without its own `litellm` requirement, so versions below the declared floor can be
# tried too. COMPAT_DROP="pkg other" drops more pins by hand. No pytest args: the whole tests/.
#
# COMPAT_SUBSTITUTE (for a LiteLLM whose [proxy] extra cannot be installed from the registry at
# hand, e.g. a companion release it pins exactly is missing): install litellm==VERSION without the
# extra plus the extra's requirements, with `name==version` entries replacing LiteLLM's pin of that
# package and bare `name` entries leaving it out. NOT a supported install; only tells whether our
# code works with that LiteLLM's code, e.g.
#   COMPAT_SUBSTITUTE="litellm-enterprise==0.1.82 litellm-proxy-extras==0.4.110" scripts/compat.sh 1.109.3
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: $0 VERSION [pytest args]" >&2
  exit 2
fi
VERSION="$1"
shift
PY="${PYTHON:-python3}"
VENV=".venv-compat-${VERSION}"
if [ -d "$VENV" ] && ! "$VENV/bin/python" -m pip install --help >/dev/null 2>&1; then
  rm -rf "$VENV"  # a broken earlier attempt: start over
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip

# LiteLLM's wheel, to read its requirements before resolving (pip reuses it for the install).
rm -rf "$VENV/dl"
"$VENV/bin/python" -m pip download --quiet --no-deps --only-binary=:all: "litellm==${VERSION}" -d "$VENV/dl"

COMPAT_DROP="${COMPAT_DROP:-}" COMPAT_SUBSTITUTE="${COMPAT_SUBSTITUTE:-}" "$VENV/bin/python" - "$VENV" requirements/constraints.txt <<'PYEOF'
import glob, os, sys, zipfile
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
from email.parser import Parser
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
from pip._vendor.packaging.version import Version

venv, source = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(venv, "dl", "litellm-*.whl"))[0]
with zipfile.ZipFile(wheel) as zf:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = Parser().parsestr(zf.read(meta).decode("utf-8")).get_all("Requires-Dist") or []

# Released in lockstep with LiteLLM (pinned ==): never constrain them.
drop = {canonicalize_name(n) for n in ("litellm", "litellm-enterprise", "litellm-proxy-extras", "litellm-proxy")}
drop |= {canonicalize_name(n) for n in os.environ.get("COMPAT_DROP", "").split()}
wanted: dict[str, list] = {}
for line in reqs:
    req = Requirement(line)
    if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", "proxy")):
        wanted.setdefault(canonicalize_name(req.name), []).append(req.specifier)

kept, dropped = [], []
for raw in open(source):
    line = raw.strip()
    if not line or line.startswith("#"):
        continue
    name, _, pin = line.partition("==")
    key = canonicalize_name(name)
    why = None
    if key in drop:
        why = "moves with litellm"
    else:
        for spec in wanted.get(key, ()):
            if pin and not spec.contains(Version(pin), prereleases=True):
                why = f"litellm {os.path.basename(wheel).split('-')[1]} requires {name}{spec}"
    if why:
        dropped.append(f"  {line:40s} ({why})")
    else:
        kept.append(line)
with open(os.path.join(venv, "constraints.txt"), "w") as out:
    out.write("# requirements/constraints.txt minus the pins that move with litellm (scripts/compat.sh)\n")
    out.write("\n".join(kept) + "\n")
print("compat: constraints dropped:\n" + "\n".join(dropped))

# Our requirements and the test extra, minus our own litellm range (we install litellm==VERSION).
with open("pyproject.toml", "rb") as fh:
    project = tomllib.load(fh)["project"]
ours = [r for r in project["dependencies"] + project["optional-dependencies"]["test"]
        if canonicalize_name(Requirement(r).name) != "litellm"]
floor = next(Requirement(r).specifier for r in project["dependencies"] if Requirement(r).name == "litellm")
if not floor.contains(Version(os.path.basename(wheel).split("-")[1]), prereleases=True):
    print(f"compat: note: outside the declared range litellm{floor}")
with open(os.path.join(venv, "requirements.txt"), "w") as out:
    out.write("\n".join(ours) + "\n")

# COMPAT_SUBSTITUTE: the proxy extra's own requirements, with the substitutions.
subs = {canonicalize_name(Requirement(s).name): s for s in os.environ.get("COMPAT_SUBSTITUTE", "").split()}
extra = []
if subs:
    for line in reqs:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}) or not req.marker.evaluate({"extra": "proxy"}):
            continue  # not a proxy-extra-only requirement (or not for this platform)
        key = canonicalize_name(req.name)
        if key in subs:
            sub = Requirement(subs.pop(key))
            print(f"compat: SUBSTITUTED {req.name}{req.specifier} -> {sub if sub.specifier else '(left out)'}")
            if sub.specifier:
                extra.append(str(sub))
        else:
            req.marker = None
            extra.append(str(req))
    extra += list(subs.values())
with open(os.path.join(venv, "proxy-extra.txt"), "w") as out:
    out.write("\n".join(extra) + "\n")
PYEOF

if [ -n "${COMPAT_SUBSTITUTE:-}" ]; then
  echo "compat: NOTE: litellm ${VERSION} without its [proxy] extra as released (COMPAT_SUBSTITUTE)" >&2
  "$VENV/bin/python" -m pip install --quiet --find-links "$VENV/dl" -c "$VENV/constraints.txt" \
    "litellm==${VERSION}" -r "$VENV/proxy-extra.txt" -r "$VENV/requirements.txt"
else
  "$VENV/bin/python" -m pip install --quiet --find-links "$VENV/dl" -c "$VENV/constraints.txt" \
    "litellm[proxy]==${VERSION}" -r "$VENV/requirements.txt"
fi
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
"$VENV/bin/python" -m pip check || echo "compat: pip check reports the conflicts above" >&2
"$VENV/bin/python" - <<'PYEOF'
from importlib.metadata import PackageNotFoundError, version
out = []
for name in ("litellm", "litellm-enterprise", "litellm-proxy-extras", "litellm-proxy", "openai", "fastapi",
             "starlette", "httpx", "pydantic", "mcp"):
    try:
        out.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
print("compat: " + " ".join(out))
PYEOF

if [ $# -eq 0 ]; then
  set -- tests/
fi
exec "$VENV/bin/python" -m pytest "$@"
