//! The model-driven EC2 verbs as a user sees them: every action of the API
//! is a verb, its options come from botocore's model, and mistakes exit as
//! the aws CLI's do (252 for the command line, 254 for the service).

mod util;

use util::*;

#[test]
fn every_action_is_a_verb_and_its_help_lists_typed_options() {
    let env = Env::new();
    let help = env.run(&["--help"]);
    assert_eq!(help.code, 0, "{}", help.stderr);
    for (action, _) in amirun::api::ACTIONS {
        let verb = amirun::cli::verbs::xform_name(action);
        assert!(
            help.stdout.contains(&verb),
            "{verb} missing:\n{}",
            help.stdout
        );
    }
    // amirun's own verbs are there too.
    for own in ["fetch-image", "wait", "boot-test", "serve", "bake"] {
        assert!(help.stdout.contains(own), "{own} missing");
    }
    let verb = env.run(&["describe-images", "--help"]);
    assert_eq!(verb.code, 0, "{}", verb.stderr);
    for want in [
        "Usage: amirun describe-images",
        "--image-ids <string>...",
        "--filters <structure>...",
        "Name=string,Values=string,string",
        "--max-results <integer>",
        "--dry-run",
        "--region <REGION>",
    ] {
        assert!(
            verb.stdout.contains(want),
            "{want} missing:\n{}",
            verb.stdout
        );
    }
    let run = env.run(&["help", "run-instances"]);
    assert!(run.stdout.contains("--count <MIN[:MAX]>"), "{}", run.stdout);
    assert!(run.stdout.contains("--accel"), "{}", run.stdout);
    assert!(
        run.stdout.contains("--enable-api-termination"),
        "{}",
        run.stdout
    );
}

#[test]
fn command_line_mistakes_exit_252_as_the_aws_cli() {
    let env = Env::new();
    let r = env.run(&["describe-images", "--foo", "bar", "--owners", "self"]);
    assert_eq!(r.code, 252, "{}", r.stderr);
    assert!(r.stderr.starts_with("usage: amirun"), "{}", r.stderr);
    assert!(
        r.stderr.contains("Unknown options: --foo, bar"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    let r = env.run(&["describe-regions", "stray"]);
    assert_eq!(r.code, 252, "{}", r.stderr);
    assert!(r.stderr.contains("Unknown options: stray"), "{}", r.stderr);
    let r = env.run(&["describe-instance-types", "--max-results", "five"]);
    assert_eq!(r.code, 252, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("Error parsing parameter '--max-results': "),
        "{}",
        r.stderr
    );
    let r = env.run(&["describe-images", "--filters", "Name=name,Valuez=x"]);
    assert_eq!(r.code, 252, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("Unknown parameter in Filters[0]: \"Valuez\", must be one of: Name, Values"),
        "{}",
        r.stderr
    );
    let r = env.run(&["delete-key-pair", "--key-name", "file:///nonexistent/name"]);
    assert_eq!(r.code, 252, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("Error parsing parameter '--key-name': "),
        "{}",
        r.stderr
    );
    let r = env.run(&["describe-images", "--image-ids"]);
    assert_eq!(r.code, 252, "{}", r.stderr);
    assert!(r.stderr.contains("--image-ids"), "{}", r.stderr);
    // The service's own refusals stay 254.
    let r = env.fails(
        &["describe-images", "--image-ids", "ami-0123456789abcdef0"],
        "InvalidAMIID.NotFound",
    );
    assert_eq!(r.code, 254);
}

#[test]
fn global_options_work_before_and_after_the_verb() {
    let env = Env::new();
    let before = env.run(&[
        "--region",
        "eu-west-1",
        "--output",
        "text",
        "describe-availability-zones",
        "--query",
        "AvailabilityZones[0].ZoneName",
    ]);
    let after = env.run(&[
        "describe-availability-zones",
        "--region",
        "eu-west-1",
        "--output=text",
        "--query",
        "AvailabilityZones[0].ZoneName",
    ]);
    assert_eq!(before.code, 0, "{}", before.stderr);
    assert_eq!(before.stdout, "eu-west-1a\n");
    assert_eq!(after.stdout, before.stdout, "{}", after.stderr);
    // The table's title is the action.
    let table = env.run(&[
        "describe-regions",
        "--region-names",
        "eu-west-1",
        "--output",
        "table",
        "--query",
        "Regions[].RegionName",
    ]);
    assert!(table.stdout.contains("DescribeRegions"), "{}", table.stdout);
}

#[test]
fn values_come_from_files_json_and_shorthand() {
    let env = Env::new();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGvV8s0cQ1mBvOUdTPsEtYhYqS7C0S2kSMr0Xv0ZpB1P test@example";
    let file = env.path("k.pub");
    std::fs::write(&file, format!("{key}\n")).unwrap();
    env.ok(&[
        "import-key-pair",
        "--key-name",
        "from-file",
        "--public-key-material",
        &format!("fileb://{}", file.display()),
        "--tag-specifications",
        "ResourceType=key-pair,Tags=[{Key=team,Value=blue}]",
    ]);
    let filters = env.path("filters.json");
    std::fs::write(&filters, r#"[{"Name": "tag:team", "Values": ["blue"]}]"#).unwrap();
    let found = env.ok(&[
        "describe-key-pairs",
        "--filters",
        &format!("file://{}", filters.display()),
        "--include-public-key",
        "--query",
        "KeyPairs[].[KeyName,PublicKey]",
    ]);
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0][0], "from-file");
    assert_eq!(
        found[0][1].as_str().unwrap().split(' ').nth(1),
        key.split(' ').nth(1)
    );
    // --no-x undoes --x: no public key.
    let found = env.ok(&[
        "describe-key-pairs",
        "--key-names",
        "from-file",
        "--include-public-key",
        "--no-include-public-key",
    ]);
    assert!(found["KeyPairs"][0].get("PublicKey").is_none(), "{found}");
}
