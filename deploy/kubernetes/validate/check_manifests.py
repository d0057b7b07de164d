#!/usr/bin/env python3
"""Checks on the manifests `kubectl kustomize` renders from deploy/kubernetes
that no schema expresses. Run by scripts/check-deploy.sh:

    check_manifests.py split RENDERED.yaml CORE.yaml MONITORING.yaml CONFIG_DIR
        Splits one overlay's rendered stream into core kinds (for
        kubernetes-validate) and monitoring.coreos.com kinds (for
        validate.mjs), and writes each loopwatch config found in a ConfigMap
        to CONFIG_DIR (for `loopwatch check-config`).
    check_manifests.py check OVERLAY RENDERED.yaml REPO_ROOT
        Every pod: non-root, read-only root filesystem, no privilege
        escalation, all capabilities dropped, seccomp RuntimeDefault, probes on
        loopwatch. Every Service selects a pod of the same render. Every
        PrometheusRule's spec equals its alerts/*.yml; every dashboard
        ConfigMap is labelled grafana_dashboard "1" and holds its
        dashboards/*.json unchanged. In the monitoring overlay, the
        monitoring objects carry the `release` label.

Prints one line per problem and exits 1 if there is any.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Dict, Iterator, List

import yaml

Doc = Dict[str, Any]
problems: List[str] = []


def load(path: str) -> List[Doc]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def split(rendered: str, core: str, monitoring: str, config_dir: str) -> None:
    docs = load(rendered)
    core_docs = [d for d in docs if not str(d.get("apiVersion", "")).startswith("monitoring.coreos.com/")]
    mon_docs = [d for d in docs if str(d.get("apiVersion", "")).startswith("monitoring.coreos.com/")]
    with open(core, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(core_docs, f, sort_keys=False)
    with open(monitoring, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(mon_docs, f, sort_keys=False)
    out = pathlib.Path(config_dir)
    out.mkdir(parents=True, exist_ok=True)
    for d in docs:
        if d.get("kind") == "ConfigMap" and "loopwatch.yml" in (d.get("data") or {}):
            (out / f"{d['metadata']['name']}.yml").write_text(d["data"]["loopwatch.yml"], encoding="utf-8")


def pod_specs(docs: List[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for d in docs:
        template = (d.get("spec") or {}).get("template")
        if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job") and template:
            yield d, template


def check_pod(owner: Doc, template: Doc) -> None:
    spec = template.get("spec") or {}
    pod_sc = spec.get("securityContext") or {}
    where = name(owner)
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append(f"{where}: shares a host namespace")
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    for c in containers:
        sc = c.get("securityContext") or {}
        cw = f"{where} container {c.get('name')}"
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            problems.append(f"{cw}: runAsNonRoot is not true")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{cw}: privileged")
        caps = sc.get("capabilities") or {}
        if caps.get("drop") != ["ALL"]:
            problems.append(f"{cw}: capabilities.drop is not [ALL]")
        if caps.get("add"):
            problems.append(f"{cw}: adds capabilities {caps.get('add')}")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problems.append(f"{cw}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        if "limits" not in (c.get("resources") or {}):
            problems.append(f"{cw}: no resource limits")
        if str(c.get("image", "")).split("@")[0].split(":")[0].endswith("/loopwatch"):
            if ":" not in str(c.get("image")).rsplit("/", 1)[-1]:
                problems.append(f"{cw}: image {c.get('image')} has no tag")
            if "livenessProbe" not in c:
                problems.append(f"{cw}: loopwatch without a livenessProbe on /-/healthy")
            args = c.get("args") or []
            if not any(a.startswith("--config.file=/etc/loopwatch/") for a in args):
                problems.append(f"{cw}: loopwatch without --config.file from its ConfigMap")


def check_services(docs: List[Doc]) -> None:
    templates = [t for _, t in pod_specs(docs)]
    for d in docs:
        if d.get("kind") != "Service":
            continue
        selector = (d.get("spec") or {}).get("selector") or {}
        hits = [
            t
            for t in templates
            if all(((t.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items())
        ]
        if not selector or not hits:
            problems.append(f"{name(d)}: selects no pod of this overlay ({selector})")
            continue
        ports = {
            p.get("name")
            for t in hits
            for c in (t["spec"].get("containers") or []) + (t["spec"].get("initContainers") or [])
            for p in c.get("ports") or []
        }
        for p in (d.get("spec") or {}).get("ports") or []:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                problems.append(f"{name(d)}: targetPort {p['targetPort']} is no container port of its pods")


def check_monitoring(overlay: str, docs: List[Doc], root: pathlib.Path) -> None:
    rules = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "PrometheusRule"}
    dashboards = {
        d["metadata"]["name"]: d
        for d in docs
        if d.get("kind") == "ConfigMap" and d["metadata"]["name"].startswith("loopwatch-dashboard-")
    }
    if not rules and not dashboards:
        return
    for f in sorted((root / "alerts").glob("*.yml")):
        rule = rules.pop(f"loopwatch-{f.stem}", None)
        if rule is None:
            problems.append(f"no PrometheusRule loopwatch-{f.stem} for alerts/{f.name}")
            continue
        if rule.get("spec") != yaml.safe_load(f.read_text(encoding="utf-8")):
            problems.append(f"PrometheusRule loopwatch-{f.stem}: spec differs from alerts/{f.name} (run deploy/kubernetes/generate.sh)")
    for extra in rules:
        problems.append(f"PrometheusRule {extra}: no alerts/*.yml of that name")
    for f in sorted((root / "dashboards").glob("*.json")):
        cm_name = "loopwatch-dashboard-" + f.stem.removeprefix("loopwatch-")
        cm = dashboards.pop(cm_name, None)
        if cm is None:
            problems.append(f"no dashboard ConfigMap {cm_name} for dashboards/{f.name}")
            continue
        if (cm["metadata"].get("labels") or {}).get("grafana_dashboard") != "1":
            problems.append(f"ConfigMap {cm_name}: not labelled grafana_dashboard: \"1\"")
        data = cm.get("data") or {}
        if data.get(f.name) != f.read_text(encoding="utf-8"):
            problems.append(f"ConfigMap {cm_name}: {f.name} differs from dashboards/{f.name} (run deploy/kubernetes/generate.sh)")
        else:
            json.loads(data[f.name])
    for extra in dashboards:
        problems.append(f"ConfigMap {extra}: no dashboards/*.json of that name")
    if overlay.endswith("monitoring"):
        for d in docs:
            if str(d.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
                if "release" not in (d["metadata"].get("labels") or {}):
                    problems.append(f"{name(d)}: no `release` label for kube-prometheus-stack's selectors")


def check(overlay: str, rendered: str, root: str) -> None:
    docs = load(rendered)
    if not docs:
        problems.append(f"{overlay}: renders nothing")
    for owner, template in pod_specs(docs):
        check_pod(owner, template)
    check_services(docs)
    check_monitoring(overlay, docs, pathlib.Path(root))


def main(argv: List[str]) -> int:
    if len(argv) == 6 and argv[1] == "split":
        split(*argv[2:])
        return 0
    if len(argv) == 5 and argv[1] == "check":
        check(*argv[2:])
        for p in problems:
            print(f"{argv[2]}: {p}")
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
