#!/usr/bin/env python3
"""Write src/machine/instance_types_table.rs: EC2's instance types, with
EC2's own numbers, from a DescribeInstanceTypes dump.

Input: a JSON file holding either `aws ec2 describe-instance-types` output
({"InstanceTypes": [...]}) or a map of name -> InstanceTypeInfo (the form
moto keeps in moto/ec2/resources/instance_types.json, dumped from EC2).

Only the families in FAMILIES are kept, without bare-metal sizes (QEMU
runs virtual machines). Run: python3 scripts/gen-instance-types.py DUMP.json
"""
import json
import os
import sys

# Previous generations a user may still name, then today's, in EC2's order.
FAMILIES = (
    "t1 t2 t3 t3a t4g "
    "m1 m2 m3 m4 m5 m5a m5d m5ad m6i m6id m6a m6g m6gd m7i m7i-flex m7g m7gd m7a a1 "
    "c1 c3 c4 c5 c5a c5d c5n c6i c6id c6a c6g c6gd c7i c7g c7gd c7a "
    "r3 r4 r5 r5a r5d r6i r6id r6a r6g r6gd r7i r7g r7gd r7a x1 "
    "i2 i3 i3en i4i d2"
).split()

SIZES = ["nano", "micro", "small", "medium", "large", "xlarge"]


def size_key(name):
    size = name.split(".", 1)[1]
    if size in SIZES:
        return (SIZES.index(size), 0)
    return (len(SIZES), int(size.replace("xlarge", "") or 1))


def main():
    data = json.load(open(sys.argv[1]))
    if "InstanceTypes" in data:
        data = {t["InstanceType"]: t for t in data["InstanceTypes"]}
    rows = []
    for fam in FAMILIES:
        names = [n for n in data if n.split(".")[0] == fam and not data[n].get("BareMetal")]
        if not names:
            sys.exit("family %s is not in %s" % (fam, sys.argv[1]))
        rows.append("    // %s" % fam)
        for n in sorted(names, key=size_key):
            t = data[n]
            v = t["VCpuInfo"]
            store = t.get("InstanceStorageInfo")
            disks = []
            kind = "NO_STORE"
            if store:
                for d in store["Disks"]:
                    disks += [d["SizeInGB"]] * d["Count"]
                kind = {
                    ("ssd", "required"): "NVME_SSD",
                    ("ssd", "unsupported"): "SSD",
                    ("hdd", "unsupported"): "HDD",
                    ("hdd", "required"): "NVME_HDD",
                }[(store["Disks"][0]["Type"], store.get("NvmeSupport", "unsupported"))]
            arch = {
                ("i386", "x86_64"): "X86_32_64",
                ("x86_64",): "X86",
                ("arm64",): "ARM",
            }[tuple(t["ProcessorInfo"]["SupportedArchitectures"])]
            boot = {
                ("legacy-bios",): "BIOS",
                ("uefi",): "UEFI",
                ("legacy-bios", "uefi"): "BIOS_UEFI",
            }[tuple(t.get("SupportedBootModes", ["legacy-bios"]))]
            flags = []
            if t["CurrentGeneration"]:
                flags.append("CURRENT")
            if t.get("BurstablePerformanceSupported"):
                flags.append("BURSTABLE")
            if t.get("FreeTierEligible"):
                flags.append("FREE_TIER")
            if t.get("Hypervisor") == "nitro":
                flags.append("NITRO")
            if "instance-store" in t.get("SupportedRootDeviceTypes", []):
                flags.append("STORE_ROOT")
            disk_list = "NONE" if not disks else "&[%s]" % ", ".join(str(d) for d in disks)
            rows.append(
                '    t("%s", (%d, %d, %d), %d, %s, %s, %s, %s, %s),'
                % (
                    n,
                    v["DefaultVCpus"],
                    v.get("DefaultCores", v["DefaultVCpus"]),
                    v.get("DefaultThreadsPerCore", 1),
                    t["MemoryInfo"]["SizeInMiB"],
                    disk_list,
                    kind,
                    arch,
                    boot,
                    " | ".join(flags) or "0",
                )
            )
    out = os.path.join(os.path.dirname(__file__), "..", "src", "machine", "instance_types_table.rs")
    with open(out, "w") as f:
        f.write("// Written by scripts/gen-instance-types.py from EC2's DescribeInstanceTypes; do not edit.\n")
        f.write("// t(name, (vCPUs, cores, threads per core), MiB, instance-store disks in GB, store kind,\n")
        f.write("//   architectures, boot modes, flags)\n")
        f.write("[\n%s\n]\n" % "\n".join(rows))
    print("%d instance types written to %s" % (sum(1 for r in rows if r.startswith("    t(")), out))


main()
