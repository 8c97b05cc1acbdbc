"""CKV_LMNH_1: PostgreSQL (port 5432) is never open to the whole internet.

checkov has built-in checks for SSH (22), RDP (3389) and HTTP (80) open to 0.0.0.0/0, none for
PostgreSQL. This one fails a security group rule that lets any address (an IPv4 or IPv6 /0)
reach port 5432: a TCP rule whose port range includes it, or an all-protocols rule (-1), in
AWS::EC2::SecurityGroup ingress and in AWS::EC2::SecurityGroupIngress. A source given by a
parameter or a security group is not the world and passes; ports given by an intrinsic function
are taken to include 5432.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from checkov.cloudformation.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult

POSTGRES_PORT = 5432
ALL_PROTOCOLS = {"-1", "all"}
TCP = {"tcp", "6"}


def _is_world(cidr: Any) -> bool:
    if not isinstance(cidr, str):
        return False  # a Ref, a security group or a prefix list: not the world
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False).prefixlen == 0
    except ValueError:
        return False


def _port(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # an intrinsic function: unknown


def _reaches_postgres(rule: dict[str, Any]) -> bool:
    protocol = str(rule.get("IpProtocol", "")).lower()
    if protocol in ALL_PROTOCOLS:
        return True
    if protocol not in TCP:
        return False
    low, high = _port(rule.get("FromPort")), _port(rule.get("ToPort"))
    if low is None or high is None:
        return True
    if low == -1 and high == -1:
        return True
    return low <= POSTGRES_PORT <= high


class PostgresNotOpenToTheWorld(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure no security group allows ingress from 0.0.0.0/0 or ::/0 to PostgreSQL"
            " (port 5432)",
            id="CKV_LMNH_1",
            categories=[CheckCategories.NETWORKING],
            supported_resources=["AWS::EC2::SecurityGroup", "AWS::EC2::SecurityGroupIngress"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        properties = conf.get("Properties") or {}
        if conf.get("Type") == "AWS::EC2::SecurityGroupIngress":
            self.evaluated_keys = ["Properties"]
            rules = [properties]
        else:
            self.evaluated_keys = ["Properties/SecurityGroupIngress"]
            rules = properties.get("SecurityGroupIngress") or []
        if not isinstance(rules, list):
            return CheckResult.UNKNOWN
        for rule in rules:
            if not isinstance(rule, dict):
                continue
            world = _is_world(rule.get("CidrIp")) or _is_world(rule.get("CidrIpv6"))
            if world and _reaches_postgres(rule):
                return CheckResult.FAILED
        return CheckResult.PASSED


check = PostgresNotOpenToTheWorld()
