// Validates the prometheus-operator objects (monitoring.coreos.com:
// ServiceMonitor, PodMonitor, PrometheusRule, ...) in rendered manifests
// against the CRD schemas of @kubernetes-models/prometheus-operator.
// Objects of other API groups are left to kubernetes-validate.
//
//   kubectl kustomize deploy/kubernetes/overlays/monitoring > all.yaml
//   node deploy/kubernetes/validate/validate.mjs all.yaml [more.yaml ...]
//
// Exits 1 when any object is invalid, or has a monitoring.coreos.com kind
// this package does not know; prints one line per object checked.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import * as v1alpha1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1alpha1";
import * as v1beta1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1beta1";

const versions = { v1, v1alpha1, v1beta1 };
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate.mjs MANIFEST.yaml...");
  process.exit(2);
}

let checked = 0;
let failed = 0;
for (const file of files) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc || typeof doc !== "object") continue;
    const [group, version] = String(doc.apiVersion ?? "").split("/");
    if (group !== "monitoring.coreos.com") continue;
    const name = `${file}: ${doc.kind}/${doc.metadata?.name}`;
    const Model = versions[version]?.[doc.kind];
    if (typeof Model !== "function") {
      console.error(`${name}: unknown kind ${doc.apiVersion} ${doc.kind}`);
      failed++;
      continue;
    }
    try {
      new Model(doc).validate();
      checked++;
      console.log(`${name}: valid`);
    } catch (e) {
      failed++;
      console.error(`${name}: ${e.message}`);
    }
  }
}
console.log(`prometheus-operator objects: ${checked} valid, ${failed} invalid`);
process.exit(failed === 0 ? 0 : 1);
