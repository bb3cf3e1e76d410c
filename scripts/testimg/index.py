#!/usr/bin/env python3
"""index.py LAYOUT TAG MEMBER...: add an OCI image index tagged TAG to the OCI layout LAYOUT
(called by scripts/images.sh after umoci has built the single-platform images).

Each MEMBER is the tag of an image already in the layout (its platform is read from its
config), or `@artifact`: an attestation-like artifact manifest (own config media type, one
small layer) listed with platform unknown/unknown, as buildx writes them (CASES.md B20).
"""
import hashlib
import json
import os
import sys

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def put_blob(layout, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", d.split(":")[1])
    if not os.path.exists(path):
        with open(path, "wb") as fh:
            fh.write(data)
    return d


def read_blob(layout, digest):
    with open(os.path.join(layout, "blobs", *digest.split(":")), "rb") as fh:
        return fh.read()


def main(layout, tag, members):
    idx_path = os.path.join(layout, "index.json")
    with open(idx_path) as fh:
        top = json.load(fh)
    by_tag = {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m
              for m in top["manifests"]}
    entries = []
    for m in members:
        if m == "@artifact":
            payload = json.dumps({"_type": "https://in-toto.io/Statement/v0.1",
                                  "predicateType": "https://spdx.dev/Document",
                                  "subject": [], "predicate": {}}, sort_keys=True).encode()
            config = b"{}"
            manifest = {
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": put_blob(layout, config), "size": len(config)},
                "layers": [{"mediaType": "application/vnd.in-toto+json",
                            "digest": put_blob(layout, payload), "size": len(payload),
                            "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}}],
            }
            data = json.dumps(manifest, sort_keys=True).encode()
            entries.append({"mediaType": MANIFEST, "digest": put_blob(layout, data),
                            "size": len(data),
                            "platform": {"os": "unknown", "architecture": "unknown"},
                            "annotations": {"vnd.docker.reference.type": "attestation-manifest"}})
            continue
        desc = by_tag[m]
        manifest = json.loads(read_blob(layout, desc["digest"]))
        config = json.loads(read_blob(layout, manifest["config"]["digest"]))
        entries.append({"mediaType": desc["mediaType"], "digest": desc["digest"],
                        "size": desc["size"],
                        "platform": {"os": config["os"], "architecture": config["architecture"]}})
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}
    data = json.dumps(index, sort_keys=True).encode()
    d = put_blob(layout, data)
    top["manifests"] = [m for m in top["manifests"]
                        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
    top["manifests"].append({"mediaType": INDEX, "digest": d, "size": len(data),
                             "annotations": {"org.opencontainers.image.ref.name": tag}})
    with open(idx_path, "w") as fh:
        json.dump(top, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
