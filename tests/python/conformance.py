#!/usr/bin/env python3
"""EC2 conformance checks through boto3 against `amirun serve` (issue 17):
instance types and offerings, key pairs with tags and filters, and EC2's
error codes and wording, and paging. Run by tests/conformance.rs; every raw response is
checked against botocore's model by ec2_api.py's hook. Exits non-zero on the
first failed check."""
import os
import re
import sys

import botocore.session

sys.path.insert(0, os.path.dirname(__file__))
from ec2_api import client, expect_error, report  # noqa: E402


def scenario_types():
    ec2 = client()
    t = ec2.describe_instance_types(InstanceTypes=["m1.small"])["InstanceTypes"]
    assert len(t) == 1, t
    t = t[0]
    assert t["VCpuInfo"]["DefaultVCpus"] == 1, t
    assert t["MemoryInfo"]["SizeInMiB"] == 1740, t
    assert t["ProcessorInfo"]["SupportedArchitectures"] == ["i386", "x86_64"], t
    assert t["InstanceStorageInfo"]["Disks"] == [{"SizeInGB": 160, "Count": 1, "Type": "hdd"}], t
    assert t["CurrentGeneration"] is False, t
    # Paging with boto3's own paginator covers every type once.
    names = []
    for page in ec2.get_paginator("describe_instance_types").paginate(PaginationConfig={"PageSize": 20}):
        assert len(page["InstanceTypes"]) <= 20
        names += [x["InstanceType"] for x in page["InstanceTypes"]]
    assert len(names) == len(set(names)) and len(names) > 400, len(names)
    arm = ec2.describe_instance_types(
        Filters=[{"Name": "processor-info.supported-architecture", "Values": ["arm64"]}]
    )["InstanceTypes"]
    assert arm and all(x["ProcessorInfo"]["SupportedArchitectures"] == ["arm64"] for x in arm)
    e = expect_error(ec2.describe_instance_types, "InvalidInstanceType", InstanceTypes=["m1.small", "x9.huge"])
    assert "The following supplied instance types do not exist: [x9.huge]" in str(e), e
    offers = ec2.describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": ["t3.*"]}],
    )["InstanceTypeOfferings"]
    assert {o["Location"] for o in offers} == {"us-east-1a"}, offers
    assert len(offers) == 7, offers
    region = ec2.describe_instance_type_offerings()["InstanceTypeOfferings"]
    assert len(region) == len(names) and region[0]["LocationType"] == "region", region[0]
    report()


def scenario_keys():
    ec2 = client()
    k = ec2.create_key_pair(
        KeyName="tagged",
        TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "team", "Value": "blue"}]}],
    )
    assert len(k["KeyFingerprint"]) == 59, k["KeyFingerprint"]
    kid = k["KeyPairId"]
    ec2.create_key_pair(KeyName="plain", KeyType="ed25519")
    got = ec2.describe_key_pairs(Filters=[{"Name": "tag:team", "Values": ["blue"]}])["KeyPairs"]
    assert [x["KeyName"] for x in got] == ["tagged"], got
    assert got[0]["Tags"] == [{"Key": "team", "Value": "blue"}], got
    got = ec2.describe_key_pairs(KeyPairIds=[kid])["KeyPairs"]
    assert [x["KeyName"] for x in got] == ["tagged"], got
    got = ec2.describe_key_pairs(Filters=[{"Name": "key-type", "Values": ["ed25519"]}])["KeyPairs"]
    assert [x["KeyName"] for x in got] == ["plain"], got
    tags = ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["key-pair"]}])["Tags"]
    assert tags == [{"Key": "team", "ResourceId": kid, "ResourceType": "key-pair", "Value": "blue"}], tags
    e = expect_error(ec2.create_tags, "MissingParameter", Resources=[], Tags=[{"Key": "a", "Value": "b"}])
    assert "The request must contain the parameter resourceIdSet" in str(e), e
    expect_error(ec2.create_tags, "InvalidID", Resources=["ami-blah"], Tags=[{"Key": "a", "Value": "b"}])
    e = expect_error(ec2.terminate_instances, "InvalidParameterCombination", InstanceIds=[])
    assert "No instances specified" in str(e), e
    e = expect_error(
        ec2.describe_images, "InvalidAMIID.NotFound", ImageIds=["ami-00000000000000001", "ami-00000000000000002"]
    )
    assert "The image ids '[ami-00000000000000001, ami-00000000000000002]' do not exist" in str(e), e
    report()


def scenario_instance(instance_id=None):
    """Read-only facts of a launched instance (its id in INSTANCE_ID)."""
    ec2 = client()
    iid = os.environ["INSTANCE_ID"]
    u = ec2.get_instance_uefi_data(InstanceId=iid)
    assert u["InstanceId"] == iid and len(u["UefiData"]) > 1000, u
    expect_error(ec2.describe_instance_credit_specifications, "UnsupportedOperation", InstanceIds=[iid])
    i = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert i["InstanceType"] == "m1.small", i["InstanceType"]
    assert i["MetadataOptions"]["HttpPutResponseHopLimit"] == 1, i["MetadataOptions"]
    report()


def paged(ec2, op, key, size, **kwargs):
    """Every item of boto3's paginator over `op` with pages of `size`,
    checking no page is larger and more than one page came back."""
    items, pages = [], 0
    for page in ec2.get_paginator(op).paginate(PaginationConfig={"PageSize": size}, **kwargs):
        got = page[key]
        if key == "Reservations":
            got = [i for r in got for i in r["Instances"]]
        assert len(got) <= size, (op, len(got), size)
        items += got
        pages += 1
    assert pages > 1, (op, pages, len(items))
    return items


def once(items, field, expected):
    ids = [x[field] for x in items]
    assert len(ids) == len(set(ids)), ("duplicates", sorted(ids))
    assert set(ids) == set(expected), ("got", sorted(ids), "want", sorted(expected))


def scenario_paging():
    """boto3's paginators over instances, images, snapshots, volumes and tags
    see every object exactly once with small pages, and EC2's limits hold;
    ClientToken makes RunInstances, CreateVolume, CreateLaunchTemplate and
    CreateLaunchTemplateVersion idempotent, with EC2's mismatch error for other parameters."""
    ec2 = client()
    tiny = ec2.describe_images(Filters=[{"Name": "name", "Values": ["amirun/tiny-x86_64"]}])["Images"][0]
    r = ec2.run_instances(ImageId=tiny["ImageId"], InstanceType="t3.micro", MinCount=7, MaxCount=7,
                          ClientToken="paging-7")
    r2 = ec2.run_instances(ImageId=tiny["ImageId"], InstanceType="t3.micro", MinCount=2, MaxCount=2)
    launched = [i["InstanceId"] for i in r["Instances"] + r2["Instances"]]
    # ClientToken: the same request again is the same reservation; other
    # parameters under that token are EC2's IdempotentParameterMismatch.
    again = ec2.run_instances(ImageId=tiny["ImageId"], InstanceType="t3.micro", MinCount=7, MaxCount=7,
                              ClientToken="paging-7")
    assert again["ReservationId"] == r["ReservationId"], (again, r)
    assert [i["InstanceId"] for i in again["Instances"]] == launched[:7], again
    expect_error(ec2.run_instances, "IdempotentParameterMismatch", ImageId=tiny["ImageId"],
                 InstanceType="t3.small", MinCount=7, MaxCount=7, ClientToken="paging-7")
    expect_error(ec2.run_instances, "IdempotentParameterMismatch", ImageId=tiny["ImageId"],
                 InstanceType="t3.micro", MinCount=1, MaxCount=1, ClientToken="paging-7")
    ec2.terminate_instances(InstanceIds=launched)
    vols = [ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"] for _ in range(6)]
    v = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, ClientToken="vol-token")
    assert ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, ClientToken="vol-token")["VolumeId"] == v["VolumeId"]
    expect_error(ec2.create_volume, "IdempotentParameterMismatch", AvailabilityZone="us-east-1a", Size=2,
                 ClientToken="vol-token")
    vols.append(v["VolumeId"])
    data = {"ImageId": tiny["ImageId"], "InstanceType": "t3.micro"}
    lt = ec2.create_launch_template(LaunchTemplateName="lt-a", LaunchTemplateData=data, ClientToken="lt-token")
    lt2 = ec2.create_launch_template(LaunchTemplateName="lt-a", LaunchTemplateData=data, ClientToken="lt-token")
    assert lt2["LaunchTemplate"]["LaunchTemplateId"] == lt["LaunchTemplate"]["LaunchTemplateId"], (lt, lt2)
    expect_error(ec2.create_launch_template, "IdempotentParameterMismatch", LaunchTemplateName="lt-a",
                 LaunchTemplateData={"ImageId": tiny["ImageId"], "InstanceType": "t3.small"}, ClientToken="lt-token")
    ltid = lt["LaunchTemplate"]["LaunchTemplateId"]
    v2 = ec2.create_launch_template_version(LaunchTemplateId=ltid, LaunchTemplateData=data, ClientToken="v-token")
    v2b = ec2.create_launch_template_version(LaunchTemplateId=ltid, LaunchTemplateData=data, ClientToken="v-token")
    assert v2["LaunchTemplateVersion"]["VersionNumber"] == v2b["LaunchTemplateVersion"]["VersionNumber"] == 2, v2b
    expect_error(ec2.create_launch_template_version, "IdempotentParameterMismatch", LaunchTemplateId=ltid,
                 LaunchTemplateData={"InstanceType": "t3.small"}, ClientToken="v-token")
    v3 = ec2.create_launch_template_version(LaunchTemplateId=ltid, LaunchTemplateData=data)
    assert v3["LaunchTemplateVersion"]["VersionNumber"] == 3, v3
    # boto3 fills ClientToken itself: two plain creates are two templates.
    ec2.create_launch_template(LaunchTemplateName="lt-b", LaunchTemplateData=data)
    assert len(ec2.describe_launch_templates()["LaunchTemplates"]) == 2
    snaps = [ec2.create_snapshot(VolumeId=v)["SnapshotId"] for v in vols]
    for n, s in enumerate(snaps[:5]):
        ec2.register_image(
            Name="paged-%d" % n,
            RootDeviceName="/dev/xvda",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": s}}],
        )
    # What each listing holds in one call, then through small pages.
    all_instances = [i["InstanceId"] for res in ec2.describe_instances()["Reservations"] for i in res["Instances"]]
    once([{"InstanceId": i} for i in all_instances], "InstanceId", launched)
    once(paged(ec2, "describe_instances", "Reservations", 5), "InstanceId", launched)
    all_images = [i["ImageId"] for i in ec2.describe_images()["Images"]]
    assert len(all_images) >= 7, all_images
    once(paged(ec2, "describe_images", "Images", 6), "ImageId", all_images)
    all_snaps = [s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]]
    assert set(snaps) <= set(all_snaps), (snaps, all_snaps)
    once(paged(ec2, "describe_snapshots", "Snapshots", 5, OwnerIds=["self"]), "SnapshotId", all_snaps)
    all_vols = [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]]
    assert set(vols) <= set(all_vols), (vols, all_vols)
    once(paged(ec2, "describe_volumes", "Volumes", 5), "VolumeId", all_vols)
    # A filter pages over what it selects.
    t3 = paged(ec2, "describe_instances", "Reservations", 5,
                    Filters=[{"Name": "instance-type", "Values": ["t3.micro"]}])
    once(t3, "InstanceId", launched)
    # EC2's limits and combination rules.
    e = expect_error(ec2.describe_instances, "InvalidParameterCombination", InstanceIds=launched[:1], MaxResults=5)
    assert "instancesSet" in str(e) and "maxResults" in str(e), e
    e = expect_error(ec2.describe_instances, "InvalidParameterValue", MaxResults=4)
    assert "between 5 and 1000" in str(e), e
    e = expect_error(ec2.describe_images, "InvalidParameterValue", MaxResults=5)
    assert "between 6 and 1000" in str(e), e
    expect_error(ec2.describe_images, "InvalidNextToken", MaxResults=6, NextToken="bogus")
    expect_error(ec2.describe_instances, "InvalidNextToken", MaxResults=5, NextToken="bogus")
    ec2.create_tags(Resources=vols, Tags=[{"Key": "paged", "Value": "yes"}])
    tags = paged(ec2, "describe_tags", "Tags", 5)
    assert len(tags) == len(ec2.describe_tags()["Tags"]), tags
    ec2.get_waiter("instance_terminated").wait(InstanceIds=launched, WaiterConfig={"Delay": 1, "MaxAttempts": 300})
    instance_filters(ec2, launched)
    other_filters(ec2, vols, snaps)
    report()


def documented_filters(op):
    """The filter names botocore's documentation lists for an operation."""
    doc = ec2_model().operation_model(op).input_shape.members["Filters"].documentation
    return re.findall(r"<li> <p> <code>([a-z0-9.:\-]+)</code>", doc)


def instance_filters(ec2, launched):
    """Every filter EC2 documents for DescribeInstances is taken (but the
    three amirun keeps no data for, refused), and they select by what
    describe-instances shows."""
    refused = {"client-token", "availability-zone-id", "usage-operation-update-time"}
    names = documented_filters("DescribeInstances")
    assert len(names) > 100, names
    for n in names:
        f = [{"Name": n, "Values": ["*"]}]
        if n in refused:
            expect_error(ec2.describe_instances, "InvalidParameterValue", Filters=f)
        else:
            ec2.describe_instances(Filters=f)
    expect_error(ec2.describe_instances, "InvalidParameterValue", Filters=[{"Name": "no-such-filter", "Values": ["x"]}])

    def ids(*filters):
        fs = [{"Name": n, "Values": v} for n, v in filters]
        return sorted(i["InstanceId"] for r in ec2.describe_instances(Filters=fs)["Reservations"] for i in r["Instances"])

    everyone = sorted(launched)
    assert ids(("owner-id", ["000000000000"])) == everyone
    assert ids(("owner-id", ["111111111111"])) == []
    assert ids(("state-reason-code", ["Client.UserInitiatedShutdown"])) == everyone
    assert ids(("metadata-options.http-tokens", ["optional", "required"])) == everyone
    assert ids(("launch-index", ["6"])) == [launched[6]], ids(("launch-index", ["6"]))
    assert ids(("reservation-id", [ec2_reservation(ec2, launched[7])])) == sorted(launched[7:])
    assert ids(("block-device-mapping.device-name", ["/dev/*"])) == everyone
    assert ids(("spot-instance-request-id", ["*"])) == []
    assert ids(("hypervisor", ["xen"]), ("virtualization-type", ["hvm"]), ("tenancy", ["default"])) == everyone


def other_filters(ec2, vols, snaps):
    """Every filter EC2 documents for DescribeImages, DescribeSnapshots and
    DescribeVolumes is taken (but availability-zone-id, refused), and the
    new ones select."""
    for op, call in [("DescribeImages", ec2.describe_images), ("DescribeSnapshots", ec2.describe_snapshots),
                     ("DescribeVolumes", ec2.describe_volumes)]:
        # The documentation's lists also name values (`low`, `high`) and `tag`
        # (for tag:KEY) as code; the filter names are the rest.
        names = [n for n in documented_filters(op)
                 if n not in ("tag", "informational", "low", "medium", "high", "critical")]
        assert len(names) > 8, (op, names)
        for n in names:
            f = [{"Name": n, "Values": ["*"]}]
            if n == "availability-zone-id":
                expect_error(call, "InvalidParameterValue", Filters=f)
            else:
                call(Filters=f)
    got = ec2.describe_volumes(Filters=[{"Name": "availability-zone", "Values": ["us-east-1a"]},
                                        {"Name": "encrypted", "Values": ["false"]}])["Volumes"]
    assert set(vols) <= {v["VolumeId"] for v in got}, got
    assert ec2.describe_volumes(Filters=[{"Name": "attachment.status", "Values": ["attached"]},
                                         {"Name": "volume-id", "Values": vols}])["Volumes"] == []
    got = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "storage-tier", "Values": ["standard"]}])
    assert set(snaps) <= {s["SnapshotId"] for s in got["Snapshots"]}, got
    got = ec2.describe_images(Filters=[{"Name": "name", "Values": ["paged-*"]},
                                       {"Name": "creation-date", "Values": ["20*"]}])["Images"]
    assert len(got) == 5, got


# The describes whose filters scenario_filters audits, with an argument
# they need to answer.
AUDITED = ["DescribeKeyPairs", "DescribeTags", "DescribeRegions", "DescribeAvailabilityZones",
           "DescribeVpcs", "DescribeSubnets", "DescribeSecurityGroups", "DescribeSecurityGroupRules",
           "DescribeInternetGateways", "DescribeRouteTables", "DescribeNetworkInterfaces",
           "DescribeInstanceStatus", "DescribeInstanceTypes", "DescribeInstanceTypeOfferings",
           "DescribeVolumesModifications", "DescribeInstanceCreditSpecifications"]


def scenario_filters():
    """Every filter botocore documents for the audited describes is taken,
    an unknown one refused with InvalidParameterValue, and some select."""
    ec2 = client()
    region = ec2.meta.region_name
    for op in AUDITED:
        doc = ec2_model().operation_model(op).input_shape.members["Filters"].documentation
        # `tag` is `tag:<key>` in the documentation; the values some lists
        # name as code are not filters.
        names = [n for n in re.findall(r"<li>\s*<p>\s*<code>([A-Za-z0-9.\-]+)</code>", doc) if n != "tag"]
        assert names, op
        call = getattr(ec2, re.sub(r"(?<!^)([A-Z])", r"_\1", op).lower())
        for n in names + ["tag:any"]:
            try:
                call(Filters=[{"Name": n, "Values": ["*"]}])
            except Exception as e:  # noqa: BLE001
                raise AssertionError("%s refuses its documented filter %s: %s" % (op, n, e))
        e = expect_error(call, "InvalidParameterValue", Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
        assert "The filter 'no-such-filter' is invalid" in str(e), e

    def one(name, *values):
        return [{"Name": name, "Values": list(values)}]

    # VPCs: the default one by either spelling, a created one by its block.
    default = [v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if v["IsDefault"]]
    assert len(default) == 1, default
    for n in ("isDefault", "is-default"):
        got = [v["VpcId"] for v in ec2.describe_vpcs(Filters=one(n, "true"))["Vpcs"]]
        assert got == default, (n, got)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    got = [v["VpcId"] for v in ec2.describe_vpcs(Filters=one("cidr", "10.9.0.0/16"))["Vpcs"]]
    assert got == [vpc], got
    got = {v["VpcId"] for v in ec2.describe_vpcs(Filters=one("cidr-block-association.state", "associated"))["Vpcs"]}
    assert got == {vpc, default[0]}, got
    assert ec2.describe_vpcs(Filters=one("ipv6-cidr-block-association.state", "*"))["Vpcs"] == []
    # Subnets: the default ones are the defaults for their zone; shown
    # fields (the hostname type) select too.
    subnets = ec2.describe_subnets(Filters=one("vpc-id", default[0]))["Subnets"]
    got = ec2.describe_subnets(Filters=one("default-for-az", "true"))["Subnets"]
    assert {s["SubnetId"] for s in got} == {s["SubnetId"] for s in subnets}, got
    hostname = subnets[0].get("PrivateDnsNameOptionsOnLaunch", {}).get("HostnameType")
    if hostname:
        got = ec2.describe_subnets(Filters=one("private-dns-name-options-on-launch.hostname-type", hostname))
        assert subnets[0]["SubnetId"] in {s["SubnetId"] for s in got["Subnets"]}, got
    assert ec2.describe_subnets(Filters=one("outpost-arn", "*"))["Subnets"] == []
    # Security groups: by name and by a rule's port.
    sg = ec2.create_security_group(GroupName="filtered", Description="d", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 2222, "ToPort": 2222, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
    got = [g["GroupId"] for g in ec2.describe_security_groups(Filters=one("group-name", "filtered"))["SecurityGroups"]]
    assert got == [sg], got
    got = ec2.describe_security_groups(Filters=one("ip-permission.from-port", "2222"))["SecurityGroups"]
    assert [g["GroupId"] for g in got] == [sg], got
    assert ec2.describe_security_groups(Filters=one("ip-permission.ipv6-cidr", "*"))["SecurityGroups"] == []
    # Key pairs by fingerprint; tags by resource.
    k = ec2.create_key_pair(KeyName="printed")
    ec2.create_key_pair(KeyName="other")
    got = ec2.describe_key_pairs(Filters=one("fingerprint", k["KeyFingerprint"]))["KeyPairs"]
    assert [x["KeyName"] for x in got] == ["printed"], got
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "team", "Value": "blue"}])
    ec2.create_tags(Resources=[sg], Tags=[{"Key": "team", "Value": "red"}])
    got = ec2.describe_tags(Filters=one("resource-id", vpc))["Tags"]
    assert got == [{"Key": "team", "ResourceId": vpc, "ResourceType": "vpc", "Value": "blue"}], got
    # Regions and zones, which took no filters before.
    got = ec2.describe_regions(Filters=one("region-name", region))["Regions"]
    assert [r["RegionName"] for r in got] == [region], got
    got = ec2.describe_regions(Filters=one("endpoint", "ec2.%s.*" % region))["Regions"]
    assert [r["RegionName"] for r in got] == [region], got
    assert len(ec2.describe_availability_zones(Filters=one("zone-type", "availability-zone"))["AvailabilityZones"]) == 1
    assert ec2.describe_availability_zones(Filters=one("parent-zone-id", "*"))["AvailabilityZones"] == []
    # Route tables: only main associations, so none by subnet.
    assert ec2.describe_route_tables(Filters=one("association.subnet-id", "*"))["RouteTables"] == []
    # Instance types by a shown field no dedicated code answers.
    t = ec2.describe_instance_types(InstanceTypes=["t3.micro"])["InstanceTypes"][0]
    perf = t.get("NetworkInfo", {}).get("NetworkPerformance")
    if perf:
        got = ec2.describe_instance_types(Filters=one("network-info.network-performance", perf))["InstanceTypes"]
        assert "t3.micro" in {x["InstanceType"] for x in got}, got
    report()


def ec2_reservation(ec2, iid):
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["ReservationId"]


def ec2_model():
    return botocore.session.get_session().get_service_model("ec2")


if __name__ == "__main__":
    globals()["scenario_" + sys.argv[1]]()
