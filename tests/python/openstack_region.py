#!/usr/bin/env python3
"""boto3 against `amirun serve` in a region bound to the all-in-one OpenStack
cloud (issue 16), as an AWS user would drive it: run the tiny AMI under Nova
with user data, read its console, create an image after the change (the
SDK's image_available waiter), share it with a second account (its own
project), which launches it and sees the change, then terminate everything
and deregister. Run by tests/openstack.rs with AMIRUN_REGION set; prints one
line per step and exits non-zero on the first failed check."""
import os
import sys
import time

import boto3
from botocore.exceptions import ClientError

REGION = os.environ["AMIRUN_REGION"]
OWNER, OTHER = "000000000000", "222222222222"
T0 = time.time()


def step(what):
    print(f"[{time.time() - T0:6.1f}s] {what}", flush=True)


def client(account):
    # A 12-digit access key acts as that account (amirun serve's rule).
    return boto3.client(
        "ec2",
        region_name=REGION,
        aws_access_key_id=account,
        aws_secret_access_key="secret",
    )


def check(ok, what):
    if not ok:
        sys.exit(f"FAILED: {what}")


def console(ec2, instance_id, needle, secs=400):
    """Poll get_console_output until `needle` and then the ready line show."""
    deadline = time.time() + secs
    text = ""
    while time.time() < deadline:
        # (botocore decodes EC2's base64 Output itself.)
        text = ec2.get_console_output(InstanceId=instance_id).get("Output") or ""
        at = text.rfind(needle)
        if at >= 0 and "amirun-tiny: ready" in text[at:]:
            return text
        time.sleep(3)
    sys.exit(f"FAILED: no {needle!r} then ready on {instance_id}'s console:\n{text}")


def error_code(call):
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def waiter(ec2, name, **kw):
    ec2.get_waiter(name).wait(WaiterConfig={"Delay": 3, "MaxAttempts": 150}, **kw)


def lifecycle():
    a, b = client(OWNER), client(OTHER)
    images = a.describe_images(
        Filters=[{"Name": "name", "Values": ["amirun/tiny-x86_64"]}]
    )["Images"]
    check(len(images) == 1, f"one tiny AMI in {REGION}: {images}")
    tiny = images[0]["ImageId"]
    step(f"describe_images: {tiny}")

    write = "#!/bin/sh\necho boto3-was-here > /root/marker\nsync\necho wrote the marker\n"
    r = a.run_instances(
        ImageId=tiny, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData=write
    )
    first = r["Instances"][0]["InstanceId"]
    waiter(a, "instance_running", InstanceIds=[first])
    text = console(a, first, "amirun-tiny: user-data exit 0")
    check("wrote the marker" in text, f"the user data ran:\n{text}")
    step(f"run_instances {first}: running, its user data ran (config drive)")

    image = a.create_image(InstanceId=first, Name=f"boto3-baked-{REGION}")["ImageId"]
    waiter(a, "image_available", ImageIds=[image])
    shown = a.describe_images(ImageIds=[image])["Images"][0]
    check(shown["State"] == "available" and shown["OwnerId"] == OWNER, f"{shown}")
    step(f"create_image {image}: available")

    code = error_code(lambda: b.describe_images(ImageIds=[image]))
    check(code == "InvalidAMIID.NotFound", f"unshared image seen by {OTHER}: {code}")
    a.modify_image_attribute(
        ImageId=image, LaunchPermission={"Add": [{"UserId": OTHER}]}
    )
    perms = a.describe_image_attribute(ImageId=image, Attribute="launchPermission")
    check(perms["LaunchPermissions"] == [{"UserId": OTHER}], f"{perms}")
    check(len(b.describe_images(ImageIds=[image])["Images"]) == 1, "shared image seen")
    step(f"modify_image_attribute: shared with {OTHER}")

    show = '#!/bin/sh\necho "marker: $(cat /root/marker 2>/dev/null || echo none)"\n'
    second = b.run_instances(
        ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData=show
    )["Instances"][0]["InstanceId"]
    waiter(b, "instance_running", InstanceIds=[second])
    console(b, second, "marker: boto3-was-here")
    code = error_code(lambda: a.describe_instances(InstanceIds=[second]))
    check(code == "InvalidInstanceID.NotFound", f"{OWNER} sees {OTHER}'s instance: {code}")
    step(f"{OTHER} launched {second} from it: the marker is there")

    a.terminate_instances(InstanceIds=[first])
    b.terminate_instances(InstanceIds=[second])
    waiter(a, "instance_terminated", InstanceIds=[first])
    waiter(b, "instance_terminated", InstanceIds=[second])
    a.deregister_image(ImageId=image)
    code = error_code(lambda: a.describe_images(ImageIds=[image]))
    check(code == "InvalidAMIID.NotFound", f"deregistered image: {code}")
    print(f"IMAGE {image}")
    print(f"INSTANCES {first} {second}")
    step("terminated both; deregistered the image")


SCENARIOS = {"lifecycle": lifecycle}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
