//! VPC networking's model and API (issue 12, item 1): the default VPC,
//! subnets and security groups, rules with EC2's shapes and errors, and
//! where run-instances puts an instance. In-process through the same
//! action table the HTTP API and the CLI use (`amirun::api::invoke`), and
//! with boto3 against `amirun serve` for a real launch
//! (`tests/python/ec2_api.py vpc`).

mod util;

use amirun::api::{invoke, Context};
use amirun::machine::AccelRequest;
use amirun::service::{Caller, Service, ServiceOptions};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::TestHome;

fn open(home: &TestHome, catalog: bool) -> Service {
    let options = ServiceOptions {
        extra_catalogs: if catalog {
            vec![util::built_catalog()]
        } else {
            Vec::new()
        },
        default_outbound: amirun::machine::Outbound::None,
        ..ServiceOptions::default()
    };
    Service::open(home.paths(), options).unwrap()
}

fn caller() -> Caller {
    Caller::new("000000000000", "us-east-1").unwrap()
}

/// One action through the contract table, as the HTTP API runs it.
fn call(svc: &mut Service, action: &str, input: Value) -> Result<Value, (String, String)> {
    let caller = caller();
    let mut c = Context::new(svc, &caller, AccelRequest::Tcg);
    invoke(&mut c, action, &input)
        .map(|v| v.unwrap_or(Value::Null))
        .map_err(|e| (e.code().as_str().to_string(), e.message().to_string()))
}

fn ok(svc: &mut Service, action: &str, input: Value) -> Value {
    call(svc, action, input.clone()).unwrap_or_else(|e| panic!("{action} {input} failed: {e:?}"))
}

fn fails(svc: &mut Service, action: &str, input: Value, code: &str) -> String {
    match call(svc, action, input.clone()) {
        Ok(v) => panic!("{action} {input} succeeded, expected {code}: {v}"),
        Err((got, message)) => {
            assert_eq!(got, code, "{action} {input}: {message}");
            message
        }
    }
}

#[test]
fn a_fresh_home_has_a_default_vpc_subnet_group_gateway_and_route_table() {
    let home = TestHome::new();
    let mut svc = open(&home, false);
    let vpcs = ok(&mut svc, "DescribeVpcs", json!({}))["Vpcs"].clone();
    assert_eq!(vpcs.as_array().unwrap().len(), 1, "{vpcs}");
    let vpc = &vpcs[0];
    assert_eq!(vpc["CidrBlock"], "172.31.0.0/16");
    assert_eq!(vpc["IsDefault"], true);
    assert_eq!(vpc["State"], "available");
    assert_eq!(vpc["OwnerId"], "000000000000");
    let vpc_id = vpc["VpcId"].as_str().unwrap().to_string();
    assert!(vpc_id.starts_with("vpc-"), "{vpc_id}");

    let subnets = ok(&mut svc, "DescribeSubnets", json!({}))["Subnets"].clone();
    assert_eq!(subnets.as_array().unwrap().len(), 1, "{subnets}");
    let s = &subnets[0];
    assert_eq!(s["CidrBlock"], "172.31.0.0/20");
    assert_eq!(s["AvailabilityZone"], "us-east-1a");
    assert_eq!(s["DefaultForAz"], true);
    assert_eq!(s["MapPublicIpOnLaunch"], true);
    assert_eq!(s["VpcId"], vpc_id.as_str());
    assert_eq!(s["AvailableIpAddressCount"], 4091);

    let groups = ok(&mut svc, "DescribeSecurityGroups", json!({}))["SecurityGroups"].clone();
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    let g = &groups[0];
    let gid = g["GroupId"].as_str().unwrap();
    assert_eq!(g["GroupName"], "default");
    assert_eq!(g["VpcId"], vpc_id.as_str());
    assert_eq!(g["IpPermissions"][0]["IpProtocol"], "-1");
    assert_eq!(g["IpPermissions"][0]["UserIdGroupPairs"][0]["GroupId"], gid);
    assert_eq!(
        g["IpPermissionsEgress"][0]["IpRanges"][0]["CidrIp"],
        "0.0.0.0/0"
    );
    assert!(g["IpPermissions"][0].get("FromPort").is_none(), "{g}");

    let attrs = ok(&mut svc, "DescribeAccountAttributes", json!({}))["AccountAttributes"].clone();
    let value = |name: &str| {
        attrs
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["AttributeName"] == name)
            .map(|a| a["AttributeValues"][0]["AttributeValue"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(value("default-vpc"), vpc_id.as_str());
    assert_eq!(value("supported-platforms"), "VPC");
    let one = ok(
        &mut svc,
        "DescribeAccountAttributes",
        json!({"AttributeNames": ["default-vpc"]}),
    );
    assert_eq!(one["AccountAttributes"].as_array().unwrap().len(), 1);
    fails(
        &mut svc,
        "DescribeAccountAttributes",
        json!({"AttributeNames": ["colour"]}),
        "InvalidParameterValue",
    );

    let igws = ok(&mut svc, "DescribeInternetGateways", json!({}))["InternetGateways"].clone();
    assert_eq!(igws[0]["Attachments"][0]["VpcId"], vpc_id.as_str());
    assert!(igws[0]["InternetGatewayId"]
        .as_str()
        .unwrap()
        .starts_with("igw-"));
    let igw = igws[0]["InternetGatewayId"].clone();
    let tables = ok(
        &mut svc,
        "DescribeRouteTables",
        json!({"Filters": [{"Name": "vpc-id", "Values": [vpc_id]}]}),
    )["RouteTables"]
        .clone();
    assert_eq!(tables[0]["Associations"][0]["Main"], true);
    assert_eq!(tables[0]["Routes"][0]["GatewayId"], "local");
    assert_eq!(tables[0]["Routes"][1]["GatewayId"], igw);
    assert_eq!(tables[0]["Routes"][1]["DestinationCidrBlock"], "0.0.0.0/0");

    // Idempotent: another open of the same home makes nothing new.
    drop(svc);
    let mut svc = open(&home, false);
    let again = ok(&mut svc, "DescribeVpcs", json!({}))["Vpcs"].clone();
    assert_eq!(again.as_array().unwrap().len(), 1);
    assert_eq!(again[0]["VpcId"], vpc_id.as_str());
    assert_eq!(
        ok(&mut svc, "DescribeSubnets", json!({}))["Subnets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Another region has a default VPC of its own.
    let west = Caller::new("000000000000", "eu-west-1").unwrap();
    let mut c = Context::new(&mut svc, &west, AccelRequest::Tcg);
    let v = invoke(&mut c, "DescribeVpcs", &json!({})).unwrap().unwrap();
    assert_ne!(v["Vpcs"][0]["VpcId"], vpc_id.as_str());
    let s = invoke(&mut c, "DescribeSubnets", &json!({}))
        .unwrap()
        .unwrap();
    assert_eq!(s["Subnets"][0]["AvailabilityZone"], "eu-west-1a");
}

#[test]
fn vpcs_and_subnets_follow_ec2s_rules() {
    let home = TestHome::new();
    let mut svc = open(&home, false);
    let vpc = ok(
        &mut svc,
        "CreateVpc",
        json!({"CidrBlock": "10.1.0.0/16", "TagSpecifications": [{"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "lab"}]}]}),
    )["Vpc"]
        .clone();
    let vpc_id = vpc["VpcId"].as_str().unwrap().to_string();
    assert_eq!(vpc["IsDefault"], false);
    assert_eq!(vpc["Tags"][0]["Value"], "lab");
    fails(
        &mut svc,
        "CreateVpc",
        json!({"CidrBlock": "10.0.0.0/8"}),
        "InvalidVpc.Range",
    );
    fails(
        &mut svc,
        "CreateVpc",
        json!({"CidrBlock": "banana"}),
        "InvalidParameterValue",
    );
    // Its own default group; no internet gateway.
    let groups = ok(
        &mut svc,
        "DescribeSecurityGroups",
        json!({"Filters": [{"Name": "vpc-id", "Values": [vpc_id]}]}),
    )["SecurityGroups"]
        .clone();
    assert_eq!(groups.as_array().unwrap().len(), 1);
    assert_eq!(groups[0]["GroupName"], "default");
    let igws = ok(
        &mut svc,
        "DescribeInternetGateways",
        json!({"Filters": [{"Name": "attachment.vpc-id", "Values": [vpc_id]}]}),
    );
    assert_eq!(igws["InternetGateways"], json!([]));
    // Tag filters and describe-tags.
    let tagged = ok(
        &mut svc,
        "DescribeVpcs",
        json!({"Filters": [{"Name": "tag:Name", "Values": ["lab"]}]}),
    );
    assert_eq!(tagged["Vpcs"].as_array().unwrap().len(), 1);
    let defaults = ok(
        &mut svc,
        "DescribeVpcs",
        json!({"Filters": [{"Name": "is-default", "Values": ["true"]}]}),
    );
    assert_eq!(defaults["Vpcs"].as_array().unwrap().len(), 1);
    assert_ne!(defaults["Vpcs"][0]["VpcId"], vpc_id.as_str());

    let subnet = ok(
        &mut svc,
        "CreateSubnet",
        json!({"VpcId": vpc_id, "CidrBlock": "10.1.1.0/24"}),
    )["Subnet"]
        .clone();
    let subnet_id = subnet["SubnetId"].as_str().unwrap().to_string();
    assert_eq!(subnet["AvailableIpAddressCount"], 251);
    assert_eq!(subnet["DefaultForAz"], false);
    assert_eq!(subnet["MapPublicIpOnLaunch"], false);
    fails(
        &mut svc,
        "CreateSubnet",
        json!({"VpcId": vpc_id, "CidrBlock": "10.2.0.0/24"}),
        "InvalidSubnet.Range",
    );
    fails(
        &mut svc,
        "CreateSubnet",
        json!({"VpcId": vpc_id, "CidrBlock": "10.1.1.128/25"}),
        "InvalidSubnet.Conflict",
    );
    fails(
        &mut svc,
        "CreateSubnet",
        json!({"VpcId": vpc_id, "CidrBlock": "10.1.2.0/24", "AvailabilityZone": "us-east-1z"}),
        "InvalidParameterValue",
    );
    fails(
        &mut svc,
        "CreateSubnet",
        json!({"VpcId": "vpc-0123456789abcdef0", "CidrBlock": "10.1.2.0/24"}),
        "InvalidVpcID.NotFound",
    );
    ok(
        &mut svc,
        "CreateTags",
        json!({"Resources": [subnet_id], "Tags": [{"Key": "tier", "Value": "db"}]}),
    );
    let tags = amirun_tags(&mut svc, "subnet");
    assert_eq!(tags, vec![(subnet_id.clone(), "tier".to_string())]);

    // Dependencies: a subnet, then a group of its own, keep the VPC.
    let m = fails(
        &mut svc,
        "DeleteVpc",
        json!({"VpcId": vpc_id}),
        "DependencyViolation",
    );
    assert!(m.contains(&vpc_id), "{m}");
    ok(&mut svc, "DeleteSubnet", json!({"SubnetId": subnet_id}));
    fails(
        &mut svc,
        "DeleteSubnet",
        json!({"SubnetId": subnet_id}),
        "InvalidSubnetID.NotFound",
    );
    let g = ok(
        &mut svc,
        "CreateSecurityGroup",
        json!({"GroupName": "web", "Description": "web", "VpcId": vpc_id}),
    );
    fails(
        &mut svc,
        "DeleteVpc",
        json!({"VpcId": vpc_id}),
        "DependencyViolation",
    );
    ok(
        &mut svc,
        "DeleteSecurityGroup",
        json!({"GroupId": g["GroupId"]}),
    );
    ok(&mut svc, "DeleteVpc", json!({"VpcId": vpc_id}));
    fails(
        &mut svc,
        "DescribeVpcs",
        json!({"VpcIds": [vpc_id]}),
        "InvalidVpcID.NotFound",
    );
    fails(
        &mut svc,
        "DescribeVpcs",
        json!({"VpcIds": ["nonsense"]}),
        "InvalidVpcID.Malformed",
    );
    fails(
        &mut svc,
        "DescribeSubnets",
        json!({"SubnetIds": ["subnet-0123456789abcdef0"]}),
        "InvalidSubnetID.NotFound",
    );
    fails(
        &mut svc,
        "DescribeNetworkInterfaces",
        json!({"NetworkInterfaceIds": ["eni-0123456789abcdef0"]}),
        "InvalidNetworkInterfaceID.NotFound",
    );
    fails(
        &mut svc,
        "DescribeInternetGateways",
        json!({"InternetGatewayIds": ["igw-0123456789abcdef0"]}),
        "InvalidInternetGatewayID.NotFound",
    );
    fails(
        &mut svc,
        "DescribeRouteTables",
        json!({"RouteTableIds": ["rtb-0123456789abcdef0"]}),
        "InvalidRouteTableID.NotFound",
    );
    fails(
        &mut svc,
        "DescribeVpcs",
        json!({"Filters": [{"Name": "colour", "Values": ["x"]}]}),
        "InvalidParameterValue",
    );
    fails(
        &mut svc,
        "DescribeVpcs",
        json!({"Bogus": 1}),
        "UnknownParameter",
    );
    fails(
        &mut svc,
        "DescribeVpcs",
        json!({"DryRun": true}),
        "DryRunOperation",
    );
}

/// (resource id, key) of describe-tags for one resource type.
fn amirun_tags(svc: &mut Service, resource_type: &str) -> Vec<(String, String)> {
    let v = ok(
        svc,
        "DescribeTags",
        json!({"Filters": [{"Name": "resource-type", "Values": [resource_type]}]}),
    );
    v["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["ResourceType"], resource_type);
            (
                t["ResourceId"].as_str().unwrap().to_string(),
                t["Key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn security_groups_and_rules_round_trip_with_ec2s_shapes_and_errors() {
    let home = TestHome::new();
    let mut svc = open(&home, false);
    let web = ok(
        &mut svc,
        "CreateSecurityGroup",
        json!({"GroupName": "web", "Description": "web servers",
               "TagSpecifications": [{"ResourceType": "security-group", "Tags": [{"Key": "app", "Value": "shop"}]}]}),
    );
    let web_id = web["GroupId"].as_str().unwrap().to_string();
    assert!(web_id.starts_with("sg-"), "{web}");
    assert!(web["SecurityGroupArn"].as_str().unwrap().ends_with(&web_id));
    let m = fails(
        &mut svc,
        "CreateSecurityGroup",
        json!({"GroupName": "web", "Description": "again"}),
        "InvalidGroup.Duplicate",
    );
    assert!(m.contains("'web'"), "{m}");
    fails(
        &mut svc,
        "CreateSecurityGroup",
        json!({"GroupName": "x"}),
        "MissingParameter",
    );
    let db = ok(
        &mut svc,
        "CreateSecurityGroup",
        json!({"GroupName": "db", "Description": "db"}),
    );
    let db_id = db["GroupId"].as_str().unwrap().to_string();

    // IpPermissions with a block and a group peer.
    let r = ok(
        &mut svc,
        "AuthorizeSecurityGroupIngress",
        json!({"GroupId": web_id, "IpPermissions": [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "admins"}],
             "UserIdGroupPairs": [{"GroupId": db_id}]}]}),
    );
    assert_eq!(r["Return"], true);
    let rules = r["SecurityGroupRules"].as_array().unwrap().clone();
    assert_eq!(rules.len(), 2, "{r}");
    assert!(rules[0]["SecurityGroupRuleId"]
        .as_str()
        .unwrap()
        .starts_with("sgr-"));
    assert_eq!(rules[0]["CidrIpv4"], "10.0.0.0/8");
    assert_eq!(rules[1]["ReferencedGroupInfo"]["GroupId"], db_id.as_str());
    // The legacy top-level form (Packer), by group name in the default VPC.
    ok(
        &mut svc,
        "AuthorizeSecurityGroupIngress",
        json!({"GroupName": "web", "IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "CidrIp": "0.0.0.0/0"}),
    );
    let m = fails(
        &mut svc,
        "AuthorizeSecurityGroupIngress",
        json!({"GroupId": web_id, "IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "CidrIp": "0.0.0.0/0"}),
        "InvalidPermission.Duplicate",
    );
    assert!(
        m.contains("0.0.0.0/0, TCP, from port: 80, to port: 80"),
        "{m}"
    );
    fails(
        &mut svc,
        "AuthorizeSecurityGroupIngress",
        json!({"GroupId": web_id, "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "UserIdGroupPairs": [{"GroupId": "sg-0123456789abcdef0"}]}]}),
        "InvalidGroup.NotFound",
    );
    fails(
        &mut svc,
        "AuthorizeSecurityGroupIngress",
        json!({"GroupId": web_id, "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
        "InvalidParameterValue",
    );
    fails(
        &mut svc,
        "AuthorizeSecurityGroupIngress",
        json!({"GroupId": "sg-0123456789abcdef0", "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIp": "0.0.0.0/0"}),
        "InvalidGroup.NotFound",
    );
    fails(
        &mut svc,
        "AuthorizeSecurityGroupIngress",
        json!({"GroupId": "web", "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIp": "0.0.0.0/0"}),
        "InvalidGroupId.Malformed",
    );
    // Nothing of a failed request was kept.
    ok(
        &mut svc,
        "AuthorizeSecurityGroupEgress",
        json!({"GroupId": db_id, "IpPermissions": [{"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "10.0.0.2/32"}]}]}),
    );
    let shown = ok(
        &mut svc,
        "DescribeSecurityGroups",
        json!({"GroupIds": [web_id]}),
    )["SecurityGroups"][0]
        .clone();
    assert_eq!(shown["GroupName"], "web");
    assert_eq!(shown["Description"], "web servers");
    assert_eq!(shown["Tags"], json!([{"Key": "app", "Value": "shop"}]));
    let perms = shown["IpPermissions"].as_array().unwrap();
    assert_eq!(perms.len(), 2, "{shown}");
    assert_eq!(
        perms[0],
        json!({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
               "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "admins"}],
               "Ipv6Ranges": [], "PrefixListIds": [],
               "UserIdGroupPairs": [{"GroupId": db_id, "UserId": "000000000000"}]})
    );
    assert_eq!(perms[1]["FromPort"], 80);

    // By name (default VPC) and by filters.
    let by_name = ok(
        &mut svc,
        "DescribeSecurityGroups",
        json!({"GroupNames": ["db", "default"]}),
    );
    assert_eq!(by_name["SecurityGroups"].as_array().unwrap().len(), 2);
    let m = fails(
        &mut svc,
        "DescribeSecurityGroups",
        json!({"GroupNames": ["nope"]}),
        "InvalidGroup.NotFound",
    );
    assert!(m.contains("default VPC"), "{m}");
    fails(
        &mut svc,
        "DescribeSecurityGroups",
        json!({"GroupIds": ["sg-0123456789abcdef0"]}),
        "InvalidGroup.NotFound",
    );
    for (filter, want) in [
        (json!({"Name": "group-name", "Values": ["w*"]}), vec!["web"]),
        (
            json!({"Name": "ip-permission.from-port", "Values": ["80"]}),
            vec!["web"],
        ),
        (
            json!({"Name": "ip-permission.group-id", "Values": [db_id]}),
            vec!["web"],
        ),
        (
            json!({"Name": "egress.ip-permission.cidr", "Values": ["10.0.0.2/32"]}),
            vec!["db"],
        ),
        (json!({"Name": "tag:app", "Values": ["shop"]}), vec!["web"]),
    ] {
        let got = ok(
            &mut svc,
            "DescribeSecurityGroups",
            json!({"Filters": [filter]}),
        );
        let names: Vec<&str> = got["SecurityGroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["GroupName"].as_str().unwrap())
            .collect();
        assert_eq!(names, want, "{filter}");
    }
    let rules = ok(
        &mut svc,
        "DescribeSecurityGroupRules",
        json!({"Filters": [{"Name": "group-id", "Values": [web_id]}]}),
    )["SecurityGroupRules"]
        .clone();
    assert_eq!(rules.as_array().unwrap().len(), 4, "{rules}");
    assert!(rules
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["IsEgress"] == true && r["IpProtocol"] == "-1"));
    assert_eq!(
        amirun_tags(&mut svc, "security-group"),
        vec![(web_id.clone(), "app".to_string())]
    );

    // A referenced group cannot go; the default group never.
    let m = fails(
        &mut svc,
        "DeleteSecurityGroup",
        json!({"GroupId": db_id}),
        "DependencyViolation",
    );
    assert!(m.contains(&db_id), "{m}");
    fails(
        &mut svc,
        "DeleteSecurityGroup",
        json!({"GroupName": "default"}),
        "CannotDelete",
    );
    fails(
        &mut svc,
        "DeleteSecurityGroup",
        json!({"GroupId": "sg-0123456789abcdef0"}),
        "InvalidGroup.NotFound",
    );

    // Revoke: by permission, then again (gone), then by rule id.
    let r = ok(
        &mut svc,
        "RevokeSecurityGroupIngress",
        json!({"GroupId": web_id, "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": db_id}]}]}),
    );
    assert_eq!(
        r["RevokedSecurityGroupRules"][0]["ReferencedGroupId"],
        db_id.as_str()
    );
    fails(
        &mut svc,
        "RevokeSecurityGroupIngress",
        json!({"GroupId": web_id, "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": db_id}]}]}),
        "InvalidPermission.NotFound",
    );
    let rule80 = rules
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["FromPort"] == 80)
        .unwrap()["SecurityGroupRuleId"]
        .clone();
    ok(
        &mut svc,
        "RevokeSecurityGroupIngress",
        json!({"GroupId": web_id, "SecurityGroupRuleIds": [rule80]}),
    );
    fails(
        &mut svc,
        "RevokeSecurityGroupIngress",
        json!({"GroupId": web_id, "SecurityGroupRuleIds": [rule80]}),
        "InvalidSecurityGroupRuleId.NotFound",
    );
    fails(
        &mut svc,
        "RevokeSecurityGroupEgress",
        json!({"GroupId": db_id, "IpProtocol": "udp", "FromPort": 54, "ToPort": 54, "CidrIp": "10.0.0.2/32"}),
        "InvalidPermission.NotFound",
    );
    let left = ok(
        &mut svc,
        "DescribeSecurityGroups",
        json!({"GroupIds": [web_id]}),
    )["SecurityGroups"][0]["IpPermissions"]
        .clone();
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["UserIdGroupPairs"], json!([]));
    // No longer referenced: it can go.
    ok(&mut svc, "DeleteSecurityGroup", json!({"GroupId": db_id}));
    fails(
        &mut svc,
        "DescribeSecurityGroups",
        json!({"GroupIds": [db_id]}),
        "InvalidGroup.NotFound",
    );
}

/// MaxResults/NextToken page the VPC describes: every group exactly once,
/// pages no larger than asked, a bad token refused.
#[test]
fn describe_security_groups_and_vpcs_page() {
    let home = TestHome::new();
    let mut svc = open(&home, false);
    let mut made = vec![
        ok(&mut svc, "DescribeSecurityGroups", json!({}))["SecurityGroups"][0]["GroupId"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    for n in 0..6 {
        let g = ok(
            &mut svc,
            "CreateSecurityGroup",
            json!({"GroupName": format!("page-{n}"), "Description": "paging"}),
        );
        made.push(g["GroupId"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = json!({"MaxResults": 5});
        if let Some(t) = &token {
            req["NextToken"] = json!(t);
        }
        let page = ok(&mut svc, "DescribeSecurityGroups", req);
        let groups = page["SecurityGroups"].as_array().unwrap();
        assert!(groups.len() <= 5, "{page}");
        seen.extend(
            groups
                .iter()
                .map(|g| g["GroupId"].as_str().unwrap().to_string()),
        );
        pages += 1;
        match page["NextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    let (mut a, mut b) = (seen.clone(), made.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "every group exactly once");
    fails(
        &mut svc,
        "DescribeVpcs",
        json!({"MaxResults": 5, "NextToken": "nope"}),
        "InvalidNextToken",
    );
    fails(
        &mut svc,
        "DescribeVpcs",
        json!({"MaxResults": 2}),
        "InvalidParameterValue",
    );
}

#[test]
fn run_instances_refuses_bad_network_members_and_makes_nothing() {
    let home = TestHome::new();
    let mut svc = open(&home, true);
    let images = ok(
        &mut svc,
        "DescribeImages",
        json!({"Filters": [{"Name": "name", "Values": ["amirun/tiny-x86_64"]}]}),
    );
    let ami = images["Images"][0]["ImageId"]
        .as_str()
        .expect("the tiny image")
        .to_string();
    let subnet = ok(&mut svc, "DescribeSubnets", json!({}))["Subnets"][0]["SubnetId"].clone();
    let other =
        ok(&mut svc, "CreateVpc", json!({"CidrBlock": "10.9.0.0/16"}))["Vpc"]["VpcId"].clone();
    let other_group = ok(
        &mut svc,
        "CreateSecurityGroup",
        json!({"GroupName": "elsewhere", "Description": "x", "VpcId": other}),
    )["GroupId"]
        .clone();
    let run = |extra: Value| {
        let mut v =
            json!({"ImageId": ami, "MinCount": 1, "MaxCount": 1, "InstanceType": "t3.micro"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    for (extra, code) in [
        (
            json!({"SecurityGroupIds": ["sg-0123456789abcdef0"]}),
            "InvalidGroup.NotFound",
        ),
        (
            json!({"SecurityGroupIds": ["bogus"]}),
            "InvalidGroupId.Malformed",
        ),
        (json!({"SecurityGroups": ["nope"]}), "InvalidGroup.NotFound"),
        (
            json!({"SubnetId": "subnet-0123456789abcdef0"}),
            "InvalidSubnetID.NotFound",
        ),
        // Empty members as SDKs send them are unset: the next check speaks.
        (
            json!({"SubnetId": "subnet-0123456789abcdef0", "Placement": {"AvailabilityZone": "", "Tenancy": ""}}),
            "InvalidSubnetID.NotFound",
        ),
        (
            json!({"SecurityGroupIds": ["sg-0123456789abcdef0"], "Placement": {"AvailabilityZone": "us-east-1a"}}),
            "InvalidGroup.NotFound",
        ),
        (
            json!({"SubnetId": subnet, "SecurityGroupIds": [other_group]}),
            "InvalidParameter",
        ),
        (
            json!({"SubnetId": subnet, "NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": subnet}]}),
            "InvalidParameterCombination",
        ),
        (
            json!({"SecurityGroupIds": [other_group], "NetworkInterfaces": [{"DeviceIndex": 0}]}),
            "InvalidParameterCombination",
        ),
        (
            json!({"Placement": {"AvailabilityZone": "us-east-1q"}}),
            "InvalidParameterValue",
        ),
        (
            json!({"PrivateIpAddress": "10.0.0.9"}),
            "InvalidParameterValue",
        ),
        (
            json!({"PrivateIpAddress": "172.31.0.2"}),
            "InvalidParameterValue",
        ),
        (
            json!({"PrivateIpAddress": "172.31.0.9", "MaxCount": 2}),
            "InvalidParameterCombination",
        ),
        (
            json!({"NetworkInterfaces": [{"DeviceIndex": 0, "Ipv6AddressCount": 1}]}),
            "UnknownParameter",
        ),
    ] {
        let m = fails(&mut svc, "RunInstances", run(extra.clone()), code);
        eprintln!("{extra}: {code}: {m}");
    }
    let r = ok(&mut svc, "DescribeInstances", json!({}));
    assert_eq!(
        r["Reservations"],
        json!([]),
        "a refused launch made an instance"
    );
    let enis = ok(&mut svc, "DescribeNetworkInterfaces", json!({}));
    assert_eq!(enis["NetworkInterfaces"], json!([]));
    assert!(TestHome::files_in(&home.dir.path().join("volumes")).is_empty());
}

/// Environment of [`child_default_vpc`].
const CHILD_HOME: &str = "AMIRUN_TEST_VPC_CHILD_HOME";

/// Not a test of its own: [`two_processes_on_a_fresh_home_make_one_default_vpc`]
/// runs this test binary again with `--ignored --exact child_default_vpc`.
#[test]
#[ignore = "run in a child process by other tests"]
fn child_default_vpc() {
    let Ok(home) = std::env::var(CHILD_HOME) else {
        eprintln!("child_default_vpc only runs as a child of other tests");
        return;
    };
    let paths = amirun::paths::Paths::new(&home, format!("{home}/run"));
    let mut svc = Service::open(paths, ServiceOptions::default()).unwrap();
    let v = ok(&mut svc, "DescribeSecurityGroups", json!({}));
    println!(
        "\nGROUP {}",
        v["SecurityGroups"][0]["GroupId"].as_str().unwrap()
    );
}

#[test]
fn two_processes_on_a_fresh_home_make_one_default_vpc() {
    for _round in 0..3 {
        let home = TestHome::new();
        let children: Vec<Child> = (0..4)
            .map(|_| {
                Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--ignored",
                        "--exact",
                        "child_default_vpc",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD_HOME, home.dir.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut groups = Vec::new();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = stdout
                .lines()
                .find_map(|l| l.strip_prefix("GROUP "))
                .unwrap_or_else(|| panic!("{stdout}"));
            groups.push(line.to_string());
        }
        groups.dedup();
        assert_eq!(groups.len(), 1, "{groups:?}");
        let paths = amirun::paths::Paths::new(home.dir.path(), home.dir.path().join("run"));
        let mut svc = Service::open(paths, ServiceOptions::default()).unwrap();
        for (action, key) in [
            ("DescribeVpcs", "Vpcs"),
            ("DescribeSubnets", "Subnets"),
            ("DescribeSecurityGroups", "SecurityGroups"),
            ("DescribeSecurityGroupRules", "SecurityGroupRules"),
        ] {
            let v = ok(&mut svc, action, json!({}));
            let want = if key == "SecurityGroupRules" { 2 } else { 1 };
            assert_eq!(v[key].as_array().unwrap().len(), want, "{action}: {v}");
        }
    }
}

// ----- boto3 against `amirun serve`, with a real launch -----

#[test]
fn boto3_sees_the_default_vpc_and_an_instance_in_its_subnet_with_groups_and_addresses() {
    let env = util::Env::with_images();
    let server = util::Serve::start(&env);
    let start = Instant::now();
    let out = server.python("vpc", &[("AMIRUN_TEST_HOME", env.home().to_str().unwrap())]);
    assert!(out.contains("checked "), "{out}");
    eprintln!("vpc scenario: {:?}", start.elapsed());
    // Nothing of the instance is left running.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !util::processes(&env).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", util::processes(&env));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills every supervisor of a home when dropped (QEMU dies with it), so no
/// guest outlives a failed test.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for dir in util::files_in(&self.0.join("instances")) {
            if let Ok(pid) = std::fs::read_to_string(dir.join("supervisor.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
    }
}

/// The rules the data plane gets for `instance` (pending or running, in `group`).
fn flows(svc: &mut Service, group: &str, instance: &str) -> amirun::network::VpcAttachment {
    svc.vpc_attachments_in_groups(&[group.to_string()])
        .unwrap()
        .into_iter()
        .find(|(id, _)| id == instance)
        .unwrap_or_else(|| panic!("{instance} is not a running member of {group}"))
        .1
}

#[test]
fn rules_naming_a_group_follow_its_members_on_running_instances() {
    use amirun::network::{FlowRule, Protocol};
    let home = TestHome::new();
    let _reaper = Reaper(home.dir.path().to_path_buf());
    let options = ServiceOptions {
        extra_catalogs: vec![util::built_catalog()],
        default_outbound: amirun::machine::Outbound::None,
        supervisor_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_amirun"))),
        ..ServiceOptions::default()
    };
    let mut svc = Service::open(home.paths(), options).unwrap();
    let ami = ok(
        &mut svc,
        "DescribeImages",
        json!({"Filters": [{"Name": "name", "Values": ["amirun/tiny-x86_64"]}]}),
    )["Images"][0]["ImageId"]
        .clone();
    let web = ok(
        &mut svc,
        "CreateSecurityGroup",
        json!({"GroupName": "web", "Description": "w"}),
    )["GroupId"]
        .as_str()
        .unwrap()
        .to_string();
    let db = ok(
        &mut svc,
        "CreateSecurityGroup",
        json!({"GroupName": "db", "Description": "d"}),
    )["GroupId"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        &mut svc,
        "AuthorizeSecurityGroupIngress",
        json!({"GroupId": web, "IpPermissions": [
            {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "UserIdGroupPairs": [{"GroupId": db}]},
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]}),
    );
    let launch = |svc: &mut Service, group: &str| {
        let r = ok(
            svc,
            "RunInstances",
            json!({"ImageId": ami, "MinCount": 1, "MaxCount": 1, "InstanceType": "t3.nano", "SecurityGroupIds": [group]}),
        );
        let i = &r["Instances"][0];
        (
            i["InstanceId"].as_str().unwrap().to_string(),
            i["PrivateIpAddress"].as_str().unwrap().to_string(),
        )
    };
    let (x, _) = launch(&mut svc, &web);
    let (y, y_ip) = launch(&mut svc, &db);
    let from_db = FlowRule {
        protocol: Protocol::Tcp,
        from_port: Some(8080),
        to_port: Some(8080),
        peers: vec![format!("{y_ip}/32")],
    };
    let ssh = FlowRule {
        protocol: Protocol::Tcp,
        from_port: Some(22),
        to_port: Some(22),
        peers: vec!["10.0.0.0/8".into()],
    };
    let a = flows(&mut svc, &web, &x);
    assert_eq!(a.ingress, vec![from_db.clone(), ssh.clone()]);
    assert_eq!(a.egress[0].protocol, Protocol::All);
    assert_eq!(a.egress[0].peers, vec!["0.0.0.0/0".to_string()]);
    assert!(
        a.public_ip.is_some_and(|p| p.octets()[..2] == [127, 100]),
        "{a:?}"
    );
    assert!(a.internet_gateway);
    // A revoked rule is gone from the running instance's rules.
    ok(
        &mut svc,
        "RevokeSecurityGroupIngress",
        json!({"GroupId": web, "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "10.0.0.0/8"}),
    );
    assert_eq!(flows(&mut svc, &web, &x).ingress, vec![from_db.clone()]);
    // Y leaves db: the rule naming db admits nobody; Y comes back: it does again.
    let default = ok(
        &mut svc,
        "DescribeSecurityGroups",
        json!({"GroupNames": ["default"]}),
    )["SecurityGroups"][0]["GroupId"]
        .clone();
    ok(
        &mut svc,
        "ModifyInstanceAttribute",
        json!({"InstanceId": y, "Groups": [default]}),
    );
    assert_eq!(flows(&mut svc, &web, &x).ingress, vec![]);
    ok(
        &mut svc,
        "ModifyInstanceAttribute",
        json!({"InstanceId": y, "Groups": [db]}),
    );
    assert_eq!(flows(&mut svc, &web, &x).ingress, vec![from_db]);
    // Y terminates: its address is no peer any more, and is free again.
    wait_state(&mut svc, &y, "running");
    ok(&mut svc, "TerminateInstances", json!({"InstanceIds": [y]}));
    wait_state(&mut svc, &y, "terminated");
    assert_eq!(flows(&mut svc, &web, &x).ingress, vec![]);
    let enis = ok(&mut svc, "DescribeNetworkInterfaces", json!({}))["NetworkInterfaces"].clone();
    assert_eq!(enis.as_array().unwrap().len(), 1, "{enis}");
    wait_state(&mut svc, &x, "running");
    ok(&mut svc, "TerminateInstances", json!({"InstanceIds": [x]}));
    wait_state(&mut svc, &x, "terminated");
}

/// Poll an instance until it is in `state` (generous deadline: TCG on a busy host).
fn wait_state(svc: &mut Service, id: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let d = ok(svc, "DescribeInstances", json!({"InstanceIds": [id]}));
        if d["Reservations"][0]["Instances"][0]["State"]["Name"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "{id} not {state}: {d}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_deleted_default_vpc_stays_deleted() {
    let home = TestHome::new();
    let mut svc = open(&home, false);
    let vpc = ok(&mut svc, "DescribeVpcs", json!({}))["Vpcs"][0]["VpcId"].clone();
    let subnet = ok(&mut svc, "DescribeSubnets", json!({}))["Subnets"][0]["SubnetId"].clone();
    fails(
        &mut svc,
        "DeleteVpc",
        json!({"VpcId": vpc}),
        "DependencyViolation",
    );
    ok(&mut svc, "DeleteSubnet", json!({"SubnetId": subnet}));
    ok(&mut svc, "DeleteVpc", json!({"VpcId": vpc}));
    drop(svc);
    let mut svc = open(&home, false);
    assert_eq!(ok(&mut svc, "DescribeVpcs", json!({}))["Vpcs"], json!([]));
    assert_eq!(
        ok(&mut svc, "DescribeSecurityGroups", json!({}))["SecurityGroups"],
        json!([])
    );
    let attrs = ok(
        &mut svc,
        "DescribeAccountAttributes",
        json!({"AttributeNames": ["default-vpc"]}),
    );
    assert_eq!(
        attrs["AccountAttributes"][0]["AttributeValues"][0]["AttributeValue"],
        "none"
    );
    fails(
        &mut svc,
        "CreateSecurityGroup",
        json!({"GroupName": "x", "Description": "x"}),
        "VPCIdNotSpecified",
    );
}

#[test]
fn the_cli_shows_an_instance_in_the_default_subnet_and_filters_by_its_network() {
    let env = util::Env::with_images();
    let ami = env.ami("amirun/tiny-x86_64");
    let ids = env.run_instances(&["--image-id", &ami, "--instance-type", "t3.nano"]);
    let id = &ids[0];
    let i = env.instance(id);
    let vpc = i["VpcId"].as_str().unwrap().to_string();
    let subnet = i["SubnetId"].as_str().unwrap().to_string();
    assert!(
        vpc.starts_with("vpc-") && subnet.starts_with("subnet-"),
        "{i}"
    );
    assert_eq!(i["PrivateIpAddress"], "172.31.0.4");
    assert_eq!(i["PrivateDnsName"], "ip-172-31-0-4.ec2.internal");
    let public = i["PublicIpAddress"].as_str().unwrap().to_string();
    assert!(public.starts_with("127.100."), "{i}");
    assert_eq!(i["SecurityGroups"][0]["GroupName"], "default");
    assert_eq!(
        i["NetworkInterfaces"][0]["Association"]["PublicIp"],
        public.as_str()
    );
    for filter in [
        format!("Name=vpc-id,Values={vpc}"),
        format!("Name=subnet-id,Values={subnet}"),
        "Name=private-ip-address,Values=172.31.0.4".to_string(),
        format!("Name=ip-address,Values={public}"),
        "Name=instance.group-name,Values=default".to_string(),
    ] {
        let v = env.ok(&["describe-instances", "--filters", &filter]);
        assert_eq!(
            v["Reservations"][0]["Instances"][0]["InstanceId"],
            id.as_str(),
            "{filter}: {v}"
        );
    }
    let none = env.ok(&[
        "describe-instances",
        "--filters",
        "Name=vpc-id,Values=vpc-0123456789abcdef0",
    ]);
    assert_eq!(none["Reservations"], json!([]));
    env.wait("instance-running", id);
    env.ok(&["stop-instances", "--instance-ids", id]);
    env.wait("instance-stopped", id);
    let i = env.instance(id);
    assert!(i.get("PublicIpAddress").is_none(), "{i}");
    assert_eq!(i["PublicDnsName"], "");
    assert_eq!(i["PrivateIpAddress"], "172.31.0.4");
    env.ok(&["terminate-instances", "--instance-ids", id]);
    env.wait("instance-terminated", id);
    let i = env.instance(id);
    assert!(
        i.get("VpcId").is_none() && i.get("NetworkInterfaces").is_none(),
        "{i}"
    );
}
