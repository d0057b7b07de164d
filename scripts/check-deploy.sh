#!/usr/bin/env bash
# Validates everything under deploy/ offline, with the real tools (no Docker
# engine, no cluster): tests/deploy.rs runs it, and so can you.
#
#   scripts/check-deploy.sh              # uses target/{debug,release}/loopwatch
#   LOOPWATCH_BIN=path/to/loopwatch scripts/check-deploy.sh
#
# What it checks:
#   packaging   LICENSE in both packages; the Python client's version (its one
#               source, clients/python/src/loopwatch/_version.py) and the image tags
#               in deploy/kubernetes equal the crate's
#   configs     `loopwatch check-config` on every loopwatch config under deploy/
#               and on each one kustomize renders into a ConfigMap
#   systemd     `systemd-analyze verify` of the unit, with and without socket
#               activation (any warning fails), and an exposure level of at most
#               2.0 in `systemd-analyze security --offline`
#   docker      hadolint on both Dockerfiles; every COPY source is in the build
#               context their .dockerignore leaves; Cargo.lock matches Cargo.toml
#               in that context (the image builds with --locked)
#   compose     check-jsonschema against the compose specification (vendored by
#               check-jsonschema), every bind-mounted file and build context
#               exists, `promtool check config` (with the rules it loads, the
#               shipped alerts/), `amtool check-config`
#   kubernetes  deploy/kubernetes/generate.sh --check (the PrometheusRules and
#               dashboards are in step with alerts/ and dashboards/); each of base
#               and overlays/* rendered by `kubectl kustomize`; core kinds through
#               `kubernetes-validate --strict` for Kubernetes 1.29 (the oldest with
#               native sidecars) and its newest; monitoring.coreos.com kinds through
#               @kubernetes-models/prometheus-operator (validate/validate.mjs);
#               security contexts, Service selectors, rules and dashboards
#               unchanged (validate/check_manifests.py)
#   docs        every `# prometheus.yml` block in docs/deploy.md and docs/scaling.md
#               passes `promtool check config --syntax-only`
#
# A missing tool is an error, never a skip: ./scripts/test.sh installs them.
# Exit status: 0 all passed, 1 a check failed or a tool is missing.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- tools -------------------------------------------------------------------
missing=()
for tool in systemd-analyze promtool amtool kubectl kubernetes-validate check-jsonschema hadolint node python3 cargo; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=("python3-yaml (PyYAML)")
[ -d deploy/kubernetes/validate/node_modules/@kubernetes-models/prometheus-operator ] \
  || missing+=("deploy/kubernetes/validate/node_modules (npm ci --prefix deploy/kubernetes/validate)")
bin="${LOOPWATCH_BIN:-}"
if [ -z "$bin" ]; then
  for candidate in target/debug/loopwatch target/release/loopwatch; do
    if [ -x "$candidate" ] && { [ -z "$bin" ] || [ "$candidate" -nt "$bin" ]; }; then bin="$candidate"; fi
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || missing+=("the loopwatch binary (cargo build, or set LOOPWATCH_BIN)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "check-deploy: missing: ${missing[*]}" >&2
  echo "check-deploy: run ./scripts/test.sh, which installs what the deploy checks need" >&2
  exit 1
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

failures=()
# step NAME COMMAND...: runs the command, shows its output only when it fails.
step() {
  local what="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    echo "ok    $what"
  else
    echo "FAIL  $what"
    printf '%s\n' "$out" | sed 's/^/      /'
    failures+=("$what")
  fi
}
# quiet COMMAND...: fails when the command fails or prints anything (systemd
# reports unknown keys and bad values as warnings with exit status 0).
quiet() {
  local out
  out="$("$@" 2>&1)" || { printf '%s\n' "$out"; return 1; }
  [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}

# --- packaging ---------------------------------------------------------------
versions_agree() {
  local crate py
  crate="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
  py="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' clients/python/src/loopwatch/_version.py)"
  [ -n "$crate" ] && [ "$crate" = "$py" ] || { echo "Cargo.toml says $crate, clients/python/src/loopwatch/_version.py says $py"; return 1; }
  grep -q 'version = { attr = "loopwatch._version.__version__" }' clients/python/pyproject.toml \
    || { echo "clients/python/pyproject.toml does not read its version from loopwatch._version"; return 1; }
  ! grep -q '^version = "' clients/python/pyproject.toml || { echo "clients/python/pyproject.toml has a second, static version"; return 1; }
  local tags
  tags="$(grep -rh 'newTag:' deploy/kubernetes --include kustomization.yaml | awk '{print $2}' | sort -u)"
  [ "$tags" = "$crate" ] || { echo "deploy/kubernetes image tags ($tags) are not the crate's version $crate"; return 1; }
}
licenses() {
  grep -q 'Apache License' LICENSE && grep -q 'Version 2.0, January 2004' LICENSE || { echo "LICENSE is not the Apache-2.0 text"; return 1; }
  cmp LICENSE clients/python/LICENSE
}
step "packaging: one version (crate = Python client = Kubernetes image tags)" versions_agree
step "packaging: LICENSE (Apache-2.0) in the crate and the Python package" licenses

# --- loopwatch configs -------------------------------------------------------
for f in deploy/systemd/loopwatch.yml deploy/compose/loopwatch.yml deploy/kubernetes/base/loopwatch.yml \
  deploy/kubernetes/components/sidecar/loopwatch-sidecar.yml deploy/kubernetes/overlays/daemonset/loopwatch.yml; do
  step "config: loopwatch check-config $f" "$bin" check-config "$f"
done

# --- systemd -----------------------------------------------------------------
# A throwaway root: systemd's own units (for the default dependencies), the
# binary where the unit expects it, and the deploy units.
sdroot="$tmp/systemd-root"
make_sdroot() { # $1: with socket activation (1) or not (0)
  rm -rf "$sdroot" &&
    mkdir -p "$sdroot/usr/lib/systemd" "$sdroot/usr/local/bin" "$sdroot/bin" "$sdroot/etc/systemd/system" &&
    cp -a /usr/lib/systemd/system "$sdroot/usr/lib/systemd/" &&
    cp "$bin" "$sdroot/usr/local/bin/loopwatch" &&
    cp "$(type -P kill)" "$sdroot/bin/kill" &&
    cp deploy/systemd/loopwatch.service "$sdroot/etc/systemd/system/" || return 1
  if [ "$1" = 1 ]; then
    cp deploy/systemd/loopwatch.socket "$sdroot/etc/systemd/system/" &&
      mkdir -p "$sdroot/etc/systemd/system/loopwatch.service.d" &&
      cp deploy/systemd/loopwatch.service.d/socket-activation.conf "$sdroot/etc/systemd/system/loopwatch.service.d/" || return 1
  fi
}
verify_units() { # $1: socket activation, $2...: units
  local with="$1"
  shift
  make_sdroot "$with" && quiet systemd-analyze verify --man=no --root="$sdroot" "$@"
}
exposure() { # --threshold is in tenths: 20 is an exposure level of 2.0
  make_sdroot 0 && systemd-analyze security --offline=true --threshold=20 --root="$sdroot" loopwatch.service >/dev/null \
    || { systemd-analyze security --offline=true --root="$sdroot" loopwatch.service | tail -25; return 1; }
}
step "systemd: systemd-analyze verify loopwatch.service" verify_units 0 loopwatch.service
step "systemd: systemd-analyze verify loopwatch.socket + socket-activation.conf" verify_units 1 loopwatch.service loopwatch.socket
step "systemd: systemd-analyze security exposure <= 2.0" exposure

# --- docker ------------------------------------------------------------------
step "docker: hadolint deploy/docker/Dockerfile" hadolint deploy/docker/Dockerfile
step "docker: hadolint deploy/compose/demo/Dockerfile" hadolint deploy/compose/demo/Dockerfile
docker_context() { # Dockerfile: COPY sources exist and survive its .dockerignore
  python3 - "$1" <<'PY'
import fnmatch, os, shlex, sys
dockerfile = sys.argv[1]
ignore = [l.strip() for l in open(dockerfile + ".dockerignore") if l.strip() and not l.startswith("#")]
def included(path):
    keep = True
    for pat in ignore:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        if fnmatch.fnmatch(path, p) or path.startswith(p + "/") or fnmatch.fnmatch(path, p + "/*"):
            keep = neg
    return keep
bad = []
for line in open(dockerfile):
    words = shlex.split(line.strip()) if line.strip().startswith("COPY ") else []
    if not words or any(w.startswith("--from") for w in words):
        continue
    for src in [w for w in words[1:-1] if not w.startswith("--")]:
        if not os.path.exists(src):
            bad.append(f"COPY {src}: no such file in the context (the repository root)")
        elif not included(src.rstrip("/")):
            bad.append(f"COPY {src}: excluded by {dockerfile}.dockerignore")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
}
step "docker: deploy/docker/Dockerfile build context" docker_context deploy/docker/Dockerfile
step "docker: deploy/compose/demo/Dockerfile build context" docker_context deploy/compose/demo/Dockerfile
locked_in_context() { # what the image's `cargo build --locked` sees resolves offline as locked
  local ctx="$tmp/docker-context"
  rm -rf "$ctx" && mkdir -p "$ctx/benches"
  cp Cargo.toml Cargo.lock build.rs "$ctx/" && cp -r src "$ctx/" && cp benches/proc_scan.rs "$ctx/benches/"
  (cd "$ctx" && CARGO_TARGET_DIR="$tmp/cargo-target" cargo tree --locked --offline --quiet \
    --target x86_64-unknown-linux-gnu -e normal,build --depth 0 >/dev/null)
}
step "docker: Cargo.lock matches Cargo.toml in the image's context (cargo tree --locked)" locked_in_context

# --- compose -----------------------------------------------------------------
step "compose: check-jsonschema --builtin-schema vendor.compose-spec" \
  check-jsonschema --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
compose_paths() {
  python3 - <<'PY'
import os, sys, yaml
base = "deploy/compose"
doc = yaml.safe_load(open(f"{base}/compose.yaml"))
bad = []
for name, svc in doc["services"].items():
    build = svc.get("build")
    if build:
        ctx = os.path.normpath(os.path.join(base, build.get("context", ".")))
        if not os.path.isdir(ctx):
            bad.append(f"{name}: build context {ctx} missing")
        if not os.path.isfile(os.path.join(ctx, build.get("dockerfile", "Dockerfile"))):
            bad.append(f"{name}: dockerfile {build.get('dockerfile')} missing")
    for v in svc.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
        if src.startswith((".", "/")) and not os.path.exists(os.path.join(base, src)):
            bad.append(f"{name}: bind mount source {src} missing")
graf = doc["services"]["grafana"]
home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
mounts = {v.split(":")[1]: v.split(":")[0] for v in graf["volumes"] if v.startswith(".")}
provider = yaml.safe_load(open(f"{base}/grafana/provisioning/dashboards/loopwatch.yml"))["providers"][0]["options"]["path"]
if provider not in mounts:
    bad.append(f"grafana: the dashboards provider reads {provider}, which no volume mounts")
hit = [(d, s) for d, s in mounts.items() if home.startswith(d + "/")]
if not hit or not os.path.isfile(os.path.join(base, hit[0][1], home[len(hit[0][0]) + 1:])):
    bad.append(f"grafana: home dashboard {home} is no mounted file")
yaml.safe_load(open(f"{base}/grafana/provisioning/datasources/prometheus.yml"))
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
}
step "compose: build contexts, bind mounts, Grafana provisioning paths" compose_paths
prometheus_config() { # the compose Prometheus config, with its rule_files pointing at alerts/
  sed "s#/etc/prometheus/rules/loopwatch#$root/alerts#" deploy/compose/prometheus/prometheus.yml > "$tmp/prometheus.yml"
  promtool check config "$tmp/prometheus.yml"
}
step "compose: promtool check config (rules: alerts/*.yml)" prometheus_config
step "compose: amtool check-config" amtool check-config deploy/compose/alertmanager/alertmanager.yml

# --- kubernetes --------------------------------------------------------------
step "kubernetes: generated PrometheusRules and dashboards in step (generate.sh --check)" deploy/kubernetes/generate.sh --check
render_and_validate() { # $1: base or overlays/NAME
  local dir="deploy/kubernetes/$1" out="$tmp/k8s/${1//\//-}"
  mkdir -p "$out"
  kubectl kustomize "$dir" > "$out/rendered.yaml" || return 1
  python3 deploy/kubernetes/validate/check_manifests.py split "$out/rendered.yaml" "$out/core.yaml" "$out/monitoring.yaml" "$out/configs" || return 1
  kubernetes-validate --strict --quiet -k 1.29.0 "$out/core.yaml" || return 1
  kubernetes-validate --strict --quiet "$out/core.yaml" || return 1
  if grep -q '^kind:' "$out/monitoring.yaml"; then
    node deploy/kubernetes/validate/validate.mjs "$out/monitoring.yaml" >/dev/null || node deploy/kubernetes/validate/validate.mjs "$out/monitoring.yaml" || return 1
  fi
  python3 deploy/kubernetes/validate/check_manifests.py check "$1" "$out/rendered.yaml" "$root" || return 1
  local c
  for c in "$out"/configs/*.yml; do
    [ -e "$c" ] || continue
    "$bin" check-config "$c" >/dev/null || { "$bin" check-config "$c"; return 1; }
  done
}
for overlay in base overlays/sidecar overlays/daemonset overlays/monitoring; do
  step "kubernetes: $overlay (kustomize, kubernetes-validate --strict, prometheus-operator schemas, policy, configs)" \
    render_and_validate "$overlay"
done

# --- docs --------------------------------------------------------------------
doc_prometheus_configs() {
  python3 - "$tmp/docs" <<'PY' || return 1
import pathlib, re, sys
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
n = 0
for doc in ("docs/deploy.md", "docs/scaling.md"):
    text = pathlib.Path(doc).read_text(encoding="utf-8")
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S)):
        if block.startswith("# prometheus.yml"):
            n += 1
            (out / f"{pathlib.Path(doc).stem}-{i}.yml").write_text(block, encoding="utf-8")
if n == 0:
    print("no `# prometheus.yml` yaml block in docs/deploy.md or docs/scaling.md")
    sys.exit(1)
PY
  local f
  for f in "$tmp"/docs/*.yml; do
    promtool check config --syntax-only "$f" >/dev/null || { echo "in $(basename "$f"):"; promtool check config --syntax-only "$f"; return 1; }
  done
}
step "docs: every # prometheus.yml block passes promtool check config --syntax-only" doc_prometheus_configs

echo
if [ ${#failures[@]} -gt 0 ]; then
  echo "check-deploy: ${#failures[@]} check(s) failed:"
  printf '  %s\n' "${failures[@]}"
  exit 1
fi
echo "check-deploy: all deploy checks passed"
