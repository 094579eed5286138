#!/usr/bin/env python3
"""Write src/api/ec2_model.json: the slice of botocore's EC2 service model
(service-2.json) that amirun's HTTP API serves.

Only the operations below and the shapes reachable from their input and
output are kept, without documentation. The HTTP layer reads member names,
XML names (locationName / queryName) and types from it, so requests and
responses follow botocore's model instead of hand-written name tables.

Run with a Python that has botocore: target/pyenv/bin/python scripts/gen-ec2-model.py
"""
import gzip
import json
import os
import sys

import botocore

OPERATIONS = [
    # Images
    "DescribeImages", "ImportImage", "RegisterImage", "DeregisterImage", "CopyImage",
    "ModifyImageAttribute", "DescribeImageAttribute", "ResetImageAttribute",
    "CreateImage", "ExportImage",
    # Snapshots and volumes
    "DescribeSnapshots", "DeleteSnapshot", "CreateSnapshot", "CopySnapshot",
    "DescribeVolumes", "CreateVolume", "AttachVolume", "DetachVolume", "DeleteVolume",
    "ModifyVolume", "DescribeVolumesModifications", "CreateSnapshots",
    "DescribeSnapshotAttribute", "ModifySnapshotAttribute", "ResetSnapshotAttribute",
    # Tags
    "CreateTags", "DeleteTags", "DescribeTags",
    # Instances
    "RunInstances", "DescribeInstances", "StartInstances", "StopInstances",
    "RebootInstances", "TerminateInstances", "GetConsoleOutput",
    "DescribeInstanceStatus", "DescribeInstanceAttribute", "ModifyInstanceAttribute",
    "ModifyInstanceMetadataOptions",
    # Launch templates
    "CreateLaunchTemplate", "CreateLaunchTemplateVersion", "DescribeLaunchTemplates",
    "DescribeLaunchTemplateVersions", "ModifyLaunchTemplate", "DeleteLaunchTemplate",
    "DeleteLaunchTemplateVersions",
    # VPC networking
    "CreateVpc", "DeleteVpc", "DescribeVpcs", "CreateSubnet", "DeleteSubnet",
    "DescribeSubnets", "DescribeAccountAttributes", "CreateSecurityGroup",
    "DeleteSecurityGroup", "DescribeSecurityGroups", "DescribeSecurityGroupRules",
    "AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress",
    "RevokeSecurityGroupIngress", "RevokeSecurityGroupEgress",
    "DescribeNetworkInterfaces", "DescribeInternetGateways", "DescribeRouteTables",
    # Key pairs
    "CreateKeyPair", "ImportKeyPair", "DescribeKeyPairs", "DeleteKeyPair",
    # Regions and zones (SDKs and Terraform's AWS provider ask first)
    "DescribeRegions", "DescribeAvailabilityZones",
    # Instance types and read-only instance facts
    "DescribeInstanceTypes", "DescribeInstanceTypeOfferings",
    "GetInstanceUefiData", "DescribeInstanceCreditSpecifications",
]

KEEP = ("type", "locationName", "queryName", "flattened", "timestampFormat")


def main():
    base = os.path.join(os.path.dirname(botocore.__file__), "data", "ec2", "2016-11-15")
    path = os.path.join(base, "service-2.json")
    if os.path.exists(path):
        model = json.load(open(path))
    else:
        model = json.load(gzip.open(path + ".gz"))
    shapes = model["shapes"]
    keep = {}

    def visit(name):
        if name in keep:
            return
        s = shapes[name]
        out = {k: s[k] for k in KEEP if k in s}
        keep[name] = out
        if s["type"] == "structure":
            out["members"] = {}
            for m, ref in s["members"].items():
                r = {"shape": ref["shape"]}
                for k in ("locationName", "queryName"):
                    if k in ref:
                        r[k] = ref[k]
                out["members"][m] = r
                visit(ref["shape"])
        elif s["type"] == "list":
            ref = s["member"]
            out["member"] = {k: ref[k] for k in ("shape", "locationName") if k in ref}
            visit(ref["shape"])
        elif s["type"] == "map":
            out["key"] = s["key"]
            out["value"] = s["value"]
            visit(s["key"]["shape"])
            visit(s["value"]["shape"])

    ops = {}
    for op in OPERATIONS:
        o = model["operations"][op]
        entry = {}
        for k in ("input", "output"):
            if k in o:
                entry[k] = o[k]["shape"]
                visit(o[k]["shape"])
        ops[op] = entry
    doc = {
        "source": "botocore %s data/ec2/2016-11-15/service-2.json" % botocore.__version__,
        "operations": ops,
        "shapes": keep,
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "api", "ec2_model.json")
    with open(out, "w") as f:
        json.dump(doc, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    print("%s: %d operations, %d shapes, %d bytes" % (out, len(ops), len(keep), os.path.getsize(out)), file=sys.stderr)


if __name__ == "__main__":
    main()
