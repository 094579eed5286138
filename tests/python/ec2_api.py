#!/usr/bin/env python3
"""Unmodified boto3 code against `amirun serve`.

Run by tests/http_api.rs as `python ec2_api.py SCENARIO` with
AWS_ENDPOINT_URL_EC2 pointing at the server. Every response's raw XML is
checked against botocore's EC2 model: an element the model does not know
would be dropped by botocore without a word, so it fails the run here.
Exits non-zero on the first failed check.
"""
import base64
import datetime
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["AWS_ENDPOINT_URL_EC2"]
CHECKED = []


def ns_strip(tag):
    return tag.split("}", 1)[-1]


def check_element(shape, elem, path):
    """Every child of `elem` must be a member of `shape` (recursively)."""
    t = shape.type_name
    if t == "structure":
        names = {}
        for mname, mshape in shape.members.items():
            names[mshape.serialization.get("name", mname)] = mshape
        for child in elem:
            tag = ns_strip(child.tag)
            if tag not in names:
                raise AssertionError("%s/%s is not in botocore's model (%s)" % (path, tag, shape.name))
            check_element(names[tag], child, path + "/" + tag)
    elif t == "list":
        item = shape.member.serialization.get("name", "item")
        for child in elem:
            tag = ns_strip(child.tag)
            if tag != item:
                raise AssertionError("%s/%s: list items must be <%s>" % (path, tag, item))
            check_element(shape.member, child, path + "/" + tag)
    else:
        if len(list(elem)):
            raise AssertionError("%s: scalar %s has child elements" % (path, shape.name))


def check_raw(http_response, operation_model, **kwargs):
    body = http_response.content
    root = ET.fromstring(body)
    if http_response.status_code >= 300:
        assert ns_strip(root.tag) == "Response", body
        assert [ns_strip(c.tag) for c in root] == ["Errors", "RequestID"], body
        return
    name = operation_model.name
    assert ns_strip(root.tag) == name + "Response", body
    children = [c for c in root if ns_strip(c.tag) != "requestId"]
    assert any(ns_strip(c.tag) == "requestId" for c in root), "no requestId: %r" % body
    out = operation_model.output_shape
    if out is None:
        assert [ns_strip(c.tag) for c in children] in ([], ["return"]), body
    else:
        fake = ET.Element("x")
        fake.extend(children)
        check_element(out, fake, name)
    CHECKED.append(name)


def client(region="us-east-1", key="000000000000", secret="secret", retries=0):
    c = boto3.client(
        "ec2",
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": retries + 1, "mode": "standard"}),
    )
    assert c.meta.endpoint_url.rstrip("/") == ENDPOINT.rstrip("/"), c.meta.endpoint_url
    c.meta.events.register("after-call.ec2", lambda **kw: check_raw(kw["http_response"], kw["model"]))
    return c


def expect_error(fn, code, status=400, **kwargs):
    try:
        fn(**kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        st = e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert got == code, "expected %s, got %s: %s" % (code, got, e)
        assert st == status, "expected HTTP %d for %s, got %d" % (status, code, st)
        return e
    raise AssertionError("expected %s from %s(%s)" % (code, fn.__name__, kwargs))


def waiter(c, name, **kwargs):
    c.get_waiter(name).wait(WaiterConfig={"Delay": 2, "MaxAttempts": 200}, **kwargs)


def state_file():
    return os.environ["SCENARIO_STATE"]


def scenario_launch():
    """Describe the catalog, run a tiny instance, wait for it (phase 1 of 2:
    the server is restarted between the phases)."""
    ec2 = client()
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": ["amirun/tiny-x86_64"]}])["Images"]
    assert len(images) == 1, images
    tiny = images[0]
    assert tiny["State"] == "available" and tiny["Public"] is True, tiny
    assert tiny["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"].startswith("snap-"), tiny
    everything = ec2.describe_images()["Images"]
    assert len(everything) >= 3, everything
    key = ec2.create_key_pair(KeyName="scenario", KeyType="ed25519")
    assert key["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----"), key
    r = ec2.run_instances(
        ImageId=tiny["ImageId"],
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        KeyName="scenario",
        UserData="#!/bin/sh\necho user-data-via-api\n",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "via-boto3"}]}],
    )
    inst = r["Instances"][0]
    assert inst["State"]["Name"] in ("pending", "running"), inst
    assert r["ReservationId"].startswith("r-"), r
    iid = inst["InstanceId"]
    waiter(ec2, "instance_running", InstanceIds=[iid])
    d = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert d["State"]["Name"] == "running", d
    assert d["KeyName"] == "scenario" and d["Tags"] == [{"Key": "Name", "Value": "via-boto3"}], d
    assert d["MetadataOptions"]["HttpTokens"] == "optional", d
    assert d["Placement"]["AvailabilityZone"] == "us-east-1a", d
    # The guest read its instance id from the metadata service.
    deadline = time.time() + 240
    while True:
        out = ec2.get_console_output(InstanceId=iid)["Output"]
        if "amirun-tiny: instance-id " + iid in out and "user-data-via-api" in out:
            break
        assert time.time() < deadline, out
        time.sleep(2)
    json.dump({"instance": iid, "tiny": tiny["ImageId"]}, open(state_file(), "w"))
    report()


def scenario_finish():
    """Phase 2, after a server restart: the instance is still there; bake,
    copy, share, deregister, terminate."""
    st = json.load(open(state_file()))
    iid = st["instance"]
    ec2 = client()
    d = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert d["State"]["Name"] == "running", d
    # Create an image of the running instance (live, without a reboot).
    ami = ec2.create_image(InstanceId=iid, Name="scenario-baked", NoReboot=True)["ImageId"]
    waiter(ec2, "image_available", ImageIds=[ami])
    mine = ec2.describe_images(Owners=["self"])["Images"]
    assert [i["ImageId"] for i in mine] == [ami], mine
    # Copy to another region.
    west = client(region="us-west-2")
    copy = west.copy_image(SourceRegion="us-east-1", SourceImageId=ami, Name="scenario-copy")["ImageId"]
    waiter(west, "image_available", ImageIds=[copy])
    w = west.describe_images(ImageIds=[copy])["Images"][0]
    assert w["Name"] == "scenario-copy" and w["OwnerId"] == "000000000000", w
    expect_error(ec2.describe_images, "InvalidAMIID.NotFound", ImageIds=[copy])
    # Share with another account: its access key then sees the image.
    other = client(key="111111111111")
    expect_error(other.describe_images, "InvalidAMIID.NotFound", ImageIds=[ami])
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": "111111111111"}]})
    perms = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
    assert perms["LaunchPermissions"] == [{"UserId": "111111111111"}], perms
    seen = other.describe_images(ImageIds=[ami])["Images"]
    assert [i["ImageId"] for i in seen] == [ami], seen
    shared = other.describe_images(ExecutableUsers=["self"])["Images"]
    assert ami in [i["ImageId"] for i in shared], shared
    # Tags, key pairs, volumes, snapshots through the API.
    ec2.create_tags(Resources=[ami], Tags=[{"Key": "stage", "Value": "test"}])
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [ami]}])["Tags"]
    assert tags == [{"Key": "stage", "ResourceId": ami, "ResourceType": "image", "Value": "test"}], tags
    ec2.delete_tags(Resources=[ami], Tags=[{"Key": "stage"}])
    assert ec2.describe_key_pairs(KeyNames=["scenario"])["KeyPairs"][0]["KeyName"] == "scenario"
    vols = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]
    assert len(vols) == 1 and vols[0]["Attachments"][0]["InstanceId"] == iid, vols
    baked = ec2.describe_images(ImageIds=[ami])["Images"][0]
    root_snap = baked["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snaps = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert root_snap in [x["SnapshotId"] for x in snaps], snaps
    snap = ec2.create_snapshot(VolumeId=vols[0]["VolumeId"], Description="via-api")
    waiter(ec2, "snapshot_completed", SnapshotIds=[snap["SnapshotId"]])
    copied = ec2.copy_snapshot(SourceSnapshotId=snap["SnapshotId"], SourceRegion="us-east-1")["SnapshotId"]
    waiter(ec2, "snapshot_completed", SnapshotIds=[copied])
    ec2.delete_snapshot(SnapshotId=copied)
    # Deregister, terminate.
    ec2.deregister_image(ImageId=ami)
    west.deregister_image(ImageId=copy)
    expect_error(other.describe_images, "InvalidAMIID.NotFound", ImageIds=[ami])
    t = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert t["PreviousState"]["Name"] == "running" and t["CurrentState"]["Name"] == "shutting-down", t
    waiter(ec2, "instance_terminated", InstanceIds=[iid])
    # amirun's snapshots are layers: a running volume reads the one taken of
    # it, so it can go once the instance is gone.
    ec2.delete_snapshot(SnapshotId=snap["SnapshotId"])
    ec2.delete_key_pair(KeyName="scenario")
    report()


def raw_post(body, headers=None):
    req = urllib.request.Request(ENDPOINT, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def error_code(text):
    root = ET.fromstring(text)
    assert ns_strip(root.tag) == "Response", text
    return root.find("Errors/Error/Code").text


def scenario_errors():
    """EC2's error codes through boto3, and bad requests that must not hurt the server."""
    ec2 = client()
    # The model check itself catches an element botocore would drop.
    op = ec2.meta.service_model.operation_model("DescribeImages")
    bad = ET.fromstring("<x><imagesSet><item><imageId>a</imageId><amirunExtra>1</amirunExtra></item></imagesSet></x>")
    try:
        check_element(op.output_shape, bad, "DescribeImages")
        raise RuntimeError("the model check let an unknown element through")
    except AssertionError:
        pass
    # What SDKs and Terraform's AWS provider ask first (responses are model-checked like all others).
    regions = [r["RegionName"] for r in ec2.describe_regions()["Regions"]]
    assert "us-east-1" in regions and "eu-west-1" in regions, regions
    zones = client(region="eu-west-1").describe_availability_zones()["AvailabilityZones"]
    assert [z["ZoneName"] for z in zones] == ["eu-west-1a"], zones
    expect_error(ec2.describe_regions, "InvalidParameterValue", RegionNames=["mars-1"])
    expect_error(ec2.describe_images, "InvalidAMIID.NotFound", ImageIds=["ami-00000000000000000"])
    expect_error(ec2.describe_images, "InvalidAMIID.Malformed", ImageIds=["bogus"])
    expect_error(ec2.describe_instances, "InvalidInstanceID.NotFound", InstanceIds=["i-0123456789abcdef0"])
    expect_error(ec2.describe_instances, "InvalidInstanceID.Malformed", InstanceIds=["x-1"])
    expect_error(ec2.terminate_instances, "InvalidInstanceID.NotFound", InstanceIds=["i-0123456789abcdef0"])
    expect_error(ec2.describe_images, "InvalidParameterValue", Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    tiny = ec2.describe_images(Filters=[{"Name": "name", "Values": ["amirun/tiny-x86_64"]}])["Images"][0]["ImageId"]
    expect_error(ec2.run_instances, "DryRunOperation", status=412, ImageId=tiny, MinCount=1, MaxCount=1, DryRun=True)
    expect_error(ec2.run_instances, "InvalidParameterValue", ImageId=tiny, MinCount=1, MaxCount=1, InstanceType="t9.nope")
    expect_error(ec2.run_instances, "InvalidAMIID.NotFound", ImageId="ami-00000000000000000", MinCount=1, MaxCount=1)
    expect_error(ec2.run_instances, "InvalidKeyPair.NotFound", ImageId=tiny, MinCount=1, MaxCount=1, KeyName="nope")
    expect_error(ec2.describe_key_pairs, "InvalidKeyPair.NotFound", KeyNames=["nope"])
    ec2.import_key_pair(KeyName="imported", PublicKeyMaterial=b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGG1eNDvk1VPVtdOjEl4z0zYbvh4OxTUFnF3BzQv0eqb test")
    expect_error(ec2.import_key_pair, "InvalidKeyPair.Duplicate", KeyName="imported",
                 PublicKeyMaterial=b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGG1eNDvk1VPVtdOjEl4z0zYbvh4OxTUFnF3BzQv0eqb test")
    expect_error(ec2.import_key_pair, "InvalidKey.Format", KeyName="bad", PublicKeyMaterial=b"not a key")
    # Another account's AMI cannot be changed.
    expect_error(ec2.deregister_image, "AuthFailure", status=403, ImageId=tiny)
    # Bad requests straight on the wire.
    cases = [
        (b"Version=2016-11-15", 400, "MissingAction"),
        (b"Action=LaunchRockets&Version=2016-11-15", 400, "InvalidAction"),
        (b"Action=DescribeImages&Bogus=1", 400, "UnknownParameter"),
        (b"Action=DescribeImages&ImageId=ami-1", 400, "InvalidParameterValue"),
        (b"Action=DescribeImages&ImageId.x=ami-1", 400, "UnknownParameter"),
        (b"Action=DescribeImages&Filter.1.Name=a&Filter.1.Name.1=b", 400, "InvalidParameter"),
        (b"Action=RunInstances&ImageId=ami-1&MinCount=lots&MaxCount=1", 400, "InvalidParameterValue"),
        (b"Action=RunInstances&MaxCount=1", 400, "MissingParameter"),
        (b"Action=RunInstances&ImageId=ami-00000000000000000&MinCount=1&MaxCount=1&UserData=%%%", 400, "InvalidParameterValue"),
        (b"Action=DescribeImages&%ff%fe=%00%01", 400, "UnknownParameter"),
        (b"\x00\x01\x02garbage\xff&&&===", 400, "MissingAction"),
        (b"Action=DescribeImages&" + b"x" * (2 << 20), 413, "RequestEntityTooLarge"),
    ]
    for body, status, code in cases:
        st, text = raw_post(body, {"Content-Type": "application/x-www-form-urlencoded"})
        assert (st, error_code(text)) == (status, code), (body[:80], st, text)
    # A malformed Authorization header.
    st, text = raw_post(b"Action=DescribeImages", {"Authorization": "AWS4-HMAC-SHA256 Credential=x"})
    assert (st, error_code(text)) == (401, "AuthFailure"), (st, text)
    # A client that sends half a request and hangs up.
    host, port = ENDPOINT.split("//")[1].rstrip("/").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nAction=Desc")
    s.close()
    # Still serving.
    assert ec2.describe_images(ImageIds=[tiny])["Images"][0]["ImageId"] == tiny
    report()


def scenario_strict():
    """Strict mode: signatures are verified against configured secrets."""
    good = client(key="AKIDSTRICT", secret="right-secret")
    acct = good.describe_key_pairs()["KeyPairs"]
    assert acct == [], acct
    good.create_key_pair(KeyName="strict-key", KeyType="ed25519")
    # The key acts as its configured account.
    alias = client(key="123456789012", secret="second-secret")
    assert [k["KeyName"] for k in alias.describe_key_pairs()["KeyPairs"]] == ["strict-key"]
    bad = client(key="AKIDSTRICT", secret="wrong-secret")
    expect_error(bad.describe_images, "AuthFailure", status=401)
    unknown = client(key="AKIDNOBODY", secret="x")
    expect_error(unknown.describe_images, "AuthFailure", status=401)
    st, text = raw_post(b"Action=DescribeImages&Version=2016-11-15",
                        {"Content-Type": "application/x-www-form-urlencoded"})
    assert (st, error_code(text)) == (401, "AuthFailure"), (st, text)
    # Tampered body with a valid header from another request.
    assert good.describe_images(Owners=["self"])["Images"] == []
    # Hand-signed requests (botocore's signer at a chosen time), sent raw.
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    describe = b"Action=DescribeKeyPairs&Version=2016-11-15"
    st, text = raw_post(describe, sign(describe, now))
    assert st == 200 and "strict-key" in text, (st, text)
    # Within AWS's 15 minutes either way: accepted (as AWS does).
    for minutes in (-10, 10):
        st, text = raw_post(describe, sign(describe, now + datetime.timedelta(minutes=minutes)))
        assert st == 200, (minutes, st, text)
    # Stale (an hour old: a captured request replayed later), from 2020, or
    # 30 days ahead: RequestExpired.
    for when in (now - datetime.timedelta(hours=1), datetime.datetime(2020, 1, 1, 12, 0, 0),
                 now + datetime.timedelta(days=30), now - datetime.timedelta(minutes=16)):
        st, text = raw_post(describe, sign(describe, when))
        assert (st, error_code(text)) == (400, "RequestExpired"), (when, st, text)
    # A signed request's body swapped for another, with the original body's
    # hash in x-amz-content-sha256 (signed too): refused, and nothing happens.
    headers = sign(describe, now, content_sha256=True)
    evil = b"Action=CreateKeyPair&KeyName=swapped-in&Version=2016-11-15"
    st, text = raw_post(evil, headers)
    assert (st, error_code(text)) == (401, "AuthFailure"), (st, text)
    assert "x-amz-content-sha256" in text, text
    # Without the header: the signature covers the real body's hash.
    st, text = raw_post(evil, sign(describe, now))
    assert (st, error_code(text)) == (401, "AuthFailure"), (st, text)
    names = [k["KeyName"] for k in good.describe_key_pairs()["KeyPairs"]]
    assert names == ["strict-key"], names
    report()


def sign(body, when, key="AKIDSTRICT", secret="right-secret", content_sha256=False):
    """Headers of a POST of `body` signed by botocore's SigV4 signer as if at `when`."""
    import hashlib
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    if content_sha256:
        headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    req = AWSRequest(method="POST", url=ENDPOINT, data=body, headers=headers)
    saved = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda *a, **k: when
    try:
        botocore.auth.SigV4Auth(Credentials(key, secret), "ec2", "us-east-1").add_auth(req)
    finally:
        botocore.auth.get_current_datetime = saved
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in req.headers.items()}


def scenario_import_refused():
    """Without --import-dir an API caller can name no host file at all."""
    ec2 = client()
    secret = os.environ["SECRET_FILE"]
    url = "file://" + secret
    e = expect_error(ec2.import_image, "InvalidParameterValue",
                     DiskContainers=[{"Format": "raw", "Url": url}])
    msg = e.response["Error"]["Message"]
    assert url in msg and "http://" in msg and "--import-dir" in msg, msg
    e = expect_error(ec2.register_image, "InvalidParameterValue",
                     Name="shadow", ImageLocation="file:///etc/shadow")
    assert "file:///etc/shadow" in e.response["Error"]["Message"], e
    names = [i["Name"] for i in ec2.describe_images(Owners=["self"])["Images"]]
    assert names == [], names
    report()


def scenario_imports():
    """With --import-dir: files under it and http(s) URLs import; escapes do not."""
    import functools
    import http.server
    import threading
    ec2 = client()
    d = os.environ["IMPORT_DIR"]
    outside = os.environ["OUTSIDE_FILE"]
    ok = ec2.import_image(DiskContainers=[{"Format": "raw", "Url": "file://" + d + "/disk.raw"}])
    assert ok["Status"] == "completed" and ok["ImageId"].startswith("ami-"), ok
    for bad in ("file://" + d + "/../" + os.path.basename(outside),
                "file://" + d + "/escape",
                "file://" + outside,
                "http://169.254.169.254/latest/meta-data/"):
        e = expect_error(ec2.import_image, "InvalidParameterValue",
                         DiskContainers=[{"Format": "raw", "Url": bad}])
        msg = e.response["Error"]["Message"]
        assert bad in msg and d in msg, msg
    # Over http from a server on the loopback (serving the import dir).
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=d)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = "http://127.0.0.1:%d" % httpd.server_address[1]
    ok = ec2.import_image(DiskContainers=[{"Format": "raw", "Url": base + "/disk.raw"}])
    assert ok["Status"] == "completed", ok
    ami = ec2.register_image(Name="from-http", ImageLocation=base + "/disk.raw")["ImageId"]
    img = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert img["RootDeviceType"] == "instance-store", img
    httpd.shutdown()
    report()


def scenario_bench():
    """Requests per second of a cheap call (DescribeKeyPairs) from one client."""
    ec2 = client()
    n = int(os.environ.get("BENCH_REQUESTS", "200"))
    t = time.time()
    for _ in range(n):
        ec2.describe_key_pairs()
    dt = time.time() - t
    print("bench: %d DescribeKeyPairs in %.2f s = %.0f requests/s" % (n, dt, n / dt))


def imds_get(iid, path):
    """GET a metadata path from an instance's IMDS socket, as the guest's relay does."""
    sock_path = os.path.join(os.environ["AMIRUN_TEST_HOME"], "instances", iid, "imds.sock")
    deadline = time.time() + 60
    while not os.path.exists(sock_path):
        assert time.time() < deadline, sock_path
        time.sleep(0.2)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    s.sendall(("GET /latest/meta-data/%s HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n" % path).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], (path, head)
    return body.decode()


def scenario_vpc():
    """The default VPC, a group of our own, a tiny instance in the default
    subnet: EC2's network fields, filters, interfaces, groupSet, the public
    address released at stop and a new one at start, the interface gone at
    terminate."""
    ec2 = client()
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    assert vpc["CidrBlock"] == "172.31.0.0/16" and vpc["IsDefault"] is True, vpc
    vpc_id = vpc["VpcId"]
    attrs = ec2.describe_account_attributes(AttributeNames=["default-vpc"])["AccountAttributes"]
    assert attrs[0]["AttributeValues"][0]["AttributeValue"] == vpc_id, attrs
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]},
                                           {"Name": "default-for-az", "Values": ["true"]}])["Subnets"][0]
    assert subnet["MapPublicIpOnLaunch"] is True and subnet["CidrBlock"] == "172.31.0.0/20", subnet
    default = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]
    assert default["VpcId"] == vpc_id, default
    ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}])
    ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    sg = ec2.create_security_group(GroupName="ssh", Description="ssh from anywhere", VpcId=vpc_id)["GroupId"]
    r = ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "ssh"}]}])
    assert r["Return"] is True and r["SecurityGroupRules"][0]["FromPort"] == 22, r
    expect_error(ec2.authorize_security_group_ingress, "InvalidPermission.Duplicate", GroupId=sg,
                 IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0")
    expect_error(ec2.describe_security_groups, "InvalidGroup.NotFound", GroupIds=["sg-0123456789abcdef0"])
    expect_error(ec2.describe_vpcs, "InvalidVpcID.NotFound", VpcIds=["vpc-0123456789abcdef0"])
    expect_error(ec2.describe_subnets, "InvalidSubnetID.NotFound", SubnetIds=["subnet-0123456789abcdef0"])
    ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [sg]}])

    tiny = ec2.describe_images(Filters=[{"Name": "name", "Values": ["amirun/tiny-x86_64"]}])["Images"][0]["ImageId"]
    expect_error(ec2.run_instances, "InvalidGroup.NotFound", ImageId=tiny, MinCount=1, MaxCount=1,
                 SecurityGroupIds=["sg-0123456789abcdef0"])
    expect_error(ec2.run_instances, "InvalidSubnetID.NotFound", ImageId=tiny, MinCount=1, MaxCount=1,
                 SubnetId="subnet-0123456789abcdef0")
    expect_error(ec2.run_instances, "InvalidParameterCombination", ImageId=tiny, MinCount=1, MaxCount=1,
                 SubnetId=subnet["SubnetId"],
                 NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet["SubnetId"]}])
    r = ec2.run_instances(ImageId=tiny, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                          NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet["SubnetId"], "Groups": [sg],
                                              "AssociatePublicIpAddress": True, "PrivateIpAddress": "172.31.0.10"}])
    inst = r["Instances"][0]
    iid = inst["InstanceId"]
    for i in (inst, ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]):
        assert i["VpcId"] == vpc_id and i["SubnetId"] == subnet["SubnetId"], i
        assert i["PrivateIpAddress"] == "172.31.0.10", i
        assert i["PrivateDnsName"] == "ip-172-31-0-10.ec2.internal", i
        assert i["PublicIpAddress"].startswith("127.100."), i
        assert i["PublicDnsName"] == "ec2-%s.compute-1.amazonaws.com" % i["PublicIpAddress"].replace(".", "-"), i
        assert i["SecurityGroups"] == [{"GroupId": sg, "GroupName": "ssh"}], i
        assert i["SourceDestCheck"] is True, i
        ni = i["NetworkInterfaces"][0]
        assert ni["NetworkInterfaceId"].startswith("eni-") and ni["MacAddress"].startswith("0a:"), ni
        assert ni["Attachment"]["DeviceIndex"] == 0 and ni["Attachment"]["Status"] == "attached", ni
        assert ni["Association"]["PublicIp"] == i["PublicIpAddress"], ni
        assert ni["PrivateIpAddresses"][0]["Primary"] is True, ni
        assert ni["Groups"] == [{"GroupId": sg, "GroupName": "ssh"}] and ni["Status"] == "in-use", ni
    public_ip = i["PublicIpAddress"]
    eni = i["NetworkInterfaces"][0]["NetworkInterfaceId"]
    mac = i["NetworkInterfaces"][0]["MacAddress"]
    # A second instance by default: default subnet, default group, next free address.
    r2 = ec2.run_instances(ImageId=tiny, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    iid2 = r2["Instances"][0]["InstanceId"]
    i2 = r2["Instances"][0]
    assert i2["SecurityGroups"] == [{"GroupId": default["GroupId"], "GroupName": "default"}], i2
    assert i2["PrivateIpAddress"] == "172.31.0.4", i2
    assert i2["PublicIpAddress"] != public_ip, i2
    expect_error(ec2.run_instances, "InvalidIPAddress.InUse", ImageId=tiny, MinCount=1, MaxCount=1,
                 PrivateIpAddress="172.31.0.10")
    for filters, want in [
        ([{"Name": "vpc-id", "Values": [vpc_id]}], {iid, iid2}),
        ([{"Name": "subnet-id", "Values": [subnet["SubnetId"]]}], {iid, iid2}),
        ([{"Name": "private-ip-address", "Values": ["172.31.0.10"]}], {iid}),
        ([{"Name": "ip-address", "Values": [public_ip]}], {iid}),
        ([{"Name": "instance.group-id", "Values": [sg]}], {iid}),
        ([{"Name": "instance.group-name", "Values": ["default"]}], {iid2}),
        ([{"Name": "network-interface.mac-address", "Values": [mac]}], {iid}),
    ]:
        got = {x["InstanceId"] for res in ec2.describe_instances(Filters=filters)["Reservations"] for x in res["Instances"]}
        assert got == want, (filters, got, want)
    enis = ec2.describe_network_interfaces(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["NetworkInterfaces"]
    assert [e["NetworkInterfaceId"] for e in enis] == [eni], enis
    assert enis[0]["Attachment"]["InstanceId"] == iid and enis[0]["Association"]["PublicIp"] == public_ip, enis
    # What the launch hands the supervisor, and what IMDS answers.
    spec = json.load(open(os.path.join(os.environ["AMIRUN_TEST_HOME"], "instances", iid, "launch.json")))
    att = spec["vpc"]
    assert att["network_interface_id"] == eni and att["private_ip"] == "172.31.0.10", att
    assert att["public_ip"] == public_ip and att["internet_gateway"] is True and att["mac"] == mac, att
    assert att["ingress"] == [{"protocol": "tcp", "from_port": 22, "to_port": 22, "peers": ["0.0.0.0/0"]}], att
    assert att["egress"] == [{"protocol": "all", "from_port": None, "to_port": None, "peers": ["0.0.0.0/0"]}], att
    waiter(ec2, "instance_running", InstanceIds=[iid])
    assert imds_get(iid, "local-ipv4") == "172.31.0.10"
    assert imds_get(iid, "public-ipv4") == public_ip
    assert imds_get(iid, "local-hostname") == "ip-172-31-0-10.ec2.internal"
    imds_mac = imds_get(iid, "mac")
    assert imds_get(iid, "network/interfaces/macs/%s/vpc-id" % imds_mac) == vpc_id
    assert imds_get(iid, "network/interfaces/macs/%s/subnet-id" % imds_mac) == subnet["SubnetId"]
    assert imds_get(iid, "network/interfaces/macs/%s/security-group-ids" % imds_mac) == sg
    assert imds_get(iid, "security-groups") == "ssh"

    # groupSet; a group in use cannot be deleted.
    ec2.modify_instance_attribute(InstanceId=iid, Groups=[sg, default["GroupId"]])
    i = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert [g["GroupId"] for g in i["SecurityGroups"]] == [sg, default["GroupId"]], i
    expect_error(ec2.modify_instance_attribute, "InvalidGroup.NotFound", InstanceId=iid, Groups=["sg-0123456789abcdef0"])
    expect_error(ec2.delete_security_group, "DependencyViolation", GroupId=sg)
    expect_error(ec2.delete_subnet, "DependencyViolation", SubnetId=subnet["SubnetId"])

    # Stop releases the public address; start takes a new one.
    ec2.stop_instances(InstanceIds=[iid])
    waiter(ec2, "instance_stopped", InstanceIds=[iid])
    i = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert "PublicIpAddress" not in i and i["PublicDnsName"] == "", i
    assert i["PrivateIpAddress"] == "172.31.0.10", i
    ec2.start_instances(InstanceIds=[iid])
    i = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert i["PublicIpAddress"].startswith("127.100."), i

    # Terminate: the interface goes, and the group can be deleted.
    ec2.terminate_instances(InstanceIds=[iid, iid2])
    waiter(ec2, "instance_terminated", InstanceIds=[iid, iid2])
    left = ec2.describe_network_interfaces(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["NetworkInterfaces"]
    assert left == [], left
    assert ec2.delete_security_group(GroupId=sg)["Return"] is True
    expect_error(ec2.describe_security_groups, "InvalidGroup.NotFound", GroupIds=[sg])
    report()


def scenario_volumes_and_templates():
    """Volumes and launch templates (issue 14) without a guest: every
    response checked against the model, EC2's errors, the waiter."""
    ec2 = client()
    v = ec2.create_volume(AvailabilityZone="us-east-1a", Size=4, VolumeType="io1", Iops=100,
                          TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "k", "Value": "v"}]}])
    vid = v["VolumeId"]
    assert v["Size"] == 4 and v["Iops"] == 100 and v["VolumeType"] == "io1", v
    waiter(ec2, "volume_available", VolumeIds=[vid])
    expect_error(ec2.create_volume, "InvalidParameterValue", AvailabilityZone="us-east-1a", Size=20000)
    expect_error(ec2.create_volume, "InvalidSnapshot.NotFound", AvailabilityZone="us-east-1a",
                 SnapshotId="snap-0123456789abcdef0")
    expect_error(ec2.delete_volume, "InvalidVolumeID.Malformed", VolumeId="vol-x")
    expect_error(ec2.modify_volume, "InvalidParameterValue", VolumeId=vid, Size=1)
    expect_error(ec2.modify_volume, "InvalidParameterValue", VolumeId=vid, Iops=50)
    m = ec2.modify_volume(VolumeId=vid, Size=8, VolumeType="gp3")["VolumeModification"]
    assert (m["OriginalSize"], m["TargetSize"], m["TargetVolumeType"], m["ModificationState"]) == \
        (4, 8, "gp3", "completed"), m
    mods = ec2.describe_volumes_modifications(
        Filters=[{"Name": "target-volume-type", "Values": ["gp3"]}])["VolumesModifications"]
    assert [x["VolumeId"] for x in mods] == [vid], mods
    shown = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
    assert (shown["Size"], shown["VolumeType"], shown["Iops"], shown["Throughput"]) == (8, "gp3", 3000, 125), shown
    expect_error(ec2.attach_volume, "InvalidInstanceID.NotFound", VolumeId=vid,
                 InstanceId="i-0123456789abcdef0", Device="/dev/sdf")
    expect_error(ec2.detach_volume, "IncorrectState", VolumeId=vid)
    ec2.delete_volume(VolumeId=vid)
    expect_error(ec2.delete_volume, "InvalidVolume.NotFound", VolumeId=vid)

    data = {"ImageId": "ami-0123456789abcdef0", "InstanceType": "t3.micro",
            "UserData": base64.b64encode(b"#!/bin/sh\n").decode(),
            "BlockDeviceMappings": [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1}}],
            "MetadataOptions": {"HttpTokens": "required"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}]}
    lt = ec2.create_launch_template(LaunchTemplateName="boto", LaunchTemplateData=data,
                                    VersionDescription="one")["LaunchTemplate"]
    assert lt["DefaultVersionNumber"] == 1 and lt["LatestVersionNumber"] == 1, lt
    expect_error(ec2.create_launch_template, "InvalidLaunchTemplateName.AlreadyExistsException",
                 LaunchTemplateName="boto", LaunchTemplateData={"InstanceType": "t3.micro"})
    expect_error(ec2.create_launch_template, "UnknownParameter",
                 LaunchTemplateName="boto2", LaunchTemplateData={"Monitoring": {"Enabled": True}})
    v2 = ec2.create_launch_template_version(LaunchTemplateId=lt["LaunchTemplateId"], SourceVersion="1",
                                            LaunchTemplateData={"InstanceType": "t3.small"})
    d2 = v2["LaunchTemplateVersion"]["LaunchTemplateData"]
    assert d2["InstanceType"] == "t3.small" and d2["ImageId"] == data["ImageId"], d2
    assert d2["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 1, d2
    assert d2["MetadataOptions"]["HttpTokens"] == "required", d2
    vs = ec2.describe_launch_template_versions(LaunchTemplateName="boto", Versions=["$Latest", "$Default"])
    assert sorted(x["VersionNumber"] for x in vs["LaunchTemplateVersions"]) == [1, 2], vs
    ec2.modify_launch_template(LaunchTemplateName="boto", DefaultVersion="2")
    d = ec2.describe_launch_templates(LaunchTemplateNames=["boto"])["LaunchTemplates"][0]
    assert d["DefaultVersionNumber"] == 2, d
    r = ec2.delete_launch_template_versions(LaunchTemplateName="boto", Versions=["2", "1"])
    assert [x["VersionNumber"] for x in r["SuccessfullyDeletedLaunchTemplateVersions"]] == [1], r
    assert r["UnsuccessfullyDeletedLaunchTemplateVersions"][0]["VersionNumber"] == 2, r
    expect_error(ec2.run_instances, "InvalidAMIID.NotFound", MinCount=1, MaxCount=1,
                 LaunchTemplate={"LaunchTemplateName": "boto"})
    expect_error(ec2.run_instances, "InvalidLaunchTemplateId.Malformed", MinCount=1, MaxCount=1,
                 LaunchTemplate={"LaunchTemplateId": "lt-nope"})
    ec2.delete_launch_template(LaunchTemplateId=lt["LaunchTemplateId"])
    expect_error(ec2.delete_launch_template, "InvalidLaunchTemplateName.NotFoundException",
                 LaunchTemplateName="boto")
    report()


def report():
    print("checked %d responses against botocore's model: %s" % (len(CHECKED), ", ".join(sorted(set(CHECKED)))))


if __name__ == "__main__":
    globals()["scenario_" + sys.argv[1]]()
