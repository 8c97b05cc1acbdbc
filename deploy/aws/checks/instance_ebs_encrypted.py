"""CKV_LMNH_3: every EBS volume an EC2 instance declares is encrypted.

checkov's EBS checks cover AWS::EC2::Volume and launch configurations, not the
BlockDeviceMappings of an AWS::EC2::Instance. Fails a mapping with an Ebs block whose Encrypted
is not true (a missing Encrypted leaves it to the account's default, which this stack does not
rely on).
"""

from __future__ import annotations

from typing import Any

from checkov.cloudformation.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult


class InstanceEbsEncrypted(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure the EBS volumes of an EC2 instance's BlockDeviceMappings are encrypted",
            id="CKV_LMNH_3",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=["AWS::EC2::Instance"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        self.evaluated_keys = ["Properties/BlockDeviceMappings"]
        mappings = (conf.get("Properties") or {}).get("BlockDeviceMappings") or []
        if not isinstance(mappings, list):
            return CheckResult.UNKNOWN
        for mapping in mappings:
            ebs = mapping.get("Ebs") if isinstance(mapping, dict) else None
            if isinstance(ebs, dict) and str(ebs.get("Encrypted")).lower() != "true":
                return CheckResult.FAILED
        return CheckResult.PASSED


check = InstanceEbsEncrypted()
